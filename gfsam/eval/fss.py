"""`eval fss`: 1-way K-shot episodes sampled as HSNet samples them, scored as HSNet scores them.

Sampling (HSNet ``DatasetCOCO.load_frame`` with ``fix_randseed(seed)``): per episode a class
uniformly among the evaluated classes, a query uniformly among that class's images, then
supports drawn from the same class until K distinct images other than the query. Scoring in the
squashed 1024 frame (the official evaluation frame, `gfsam.image`): per-class intersection and
union accumulated over episodes; ``miou`` = their mean IoU over classes, ``fbiou`` = HSNet FB-IoU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from gfsam.eval.data import IGNORE, Dataset, Item, load_labels
from gfsam.eval.models import EvalModel
from gfsam.eval.report import IoUMeter, Output, progress
from gfsam.image import mask_to_frame


@dataclass(frozen=True)
class Episode:
    """One 1-way K-shot episode."""

    cls: int
    query: Item
    supports: tuple[Item, ...]


def sample_episodes(
    ds: Dataset, shots: int, n: int, seed: int, classes: list[int] | None = None
) -> list[Episode]:
    """Seeded HSNet-style episodes.

    Args:
        ds: the dataset. shots: K >= 1. n: number of episodes. seed: numpy RandomState seed.
        classes: evaluated class ids (default: the fold's classes, else all).

    Raises:
        ValueError: no class has K + 1 images.
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    pool = ds.by_class(classes if classes is not None else ds.fold_classes)
    eligible = [c for c in sorted(pool) if len(pool[c]) > shots]
    if not eligible:
        raise ValueError(f"no class has {shots + 1} images (K shots + a query)")
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        c = eligible[rng.choice(len(eligible))]
        items = pool[c]
        query = items[rng.choice(len(items))]
        supports: list[Item] = []
        while len(supports) < shots:
            s = items[rng.choice(len(items))]
            if s != query and s not in supports:
                supports.append(s)
        out.append(Episode(c, query, tuple(supports)))
    return out


def score_episode(model: EvalModel, ep: Episode, meter: IoUMeter) -> None:
    """Predict one episode and add it to `meter` (1024 frame, ignore pixels excluded)."""
    refs = [model.encode_reference(s, load_labels(s) == ep.cls) for s in ep.supports]
    pred = model.predict(model.encode_target(ep.query), refs)
    labels = load_labels(ep.query)
    gt = mask_to_frame(labels == ep.cls).numpy()  # (S, S)
    valid = ~mask_to_frame(labels == IGNORE).numpy() if ep.query.fixed_class is None else None
    meter.add(ep.cls, np.asarray(pred.segmentation.mask, dtype=bool), gt, valid)


def run_fss(
    ds: Dataset, model: EvalModel, out: Output, *, shots: int, episodes: int, seed: int
) -> dict[str, Any]:
    """Run the protocol and return its named numbers.

    Returns:
        ``protocol``, ``shots``, ``episodes``, ``seed``, ``classes``, ``miou``, ``fbiou`` (both
        in %), ``per_class`` (name -> IoU %), ``wall_s``.
    """
    start = time.perf_counter()
    meter = IoUMeter()
    for ep in progress(sample_episodes(ds, shots, episodes, seed), f"fss {shots}-shot"):
        score_episode(model, ep, meter)
    per = meter.per_class()
    result: dict[str, Any] = {
        "protocol": "fss",
        "shots": shots,
        "episodes": episodes,
        "seed": seed,
        "classes": len(per),
        "miou": round(meter.miou(), 2),
        "fbiou": round(meter.fbiou(), 2),
        "per_class": {ds.names.get(c, str(c)): round(v, 2) for c, v in per.items()},
        "wall_s": round(time.perf_counter() - start, 1),
    }
    out.line(
        f"fss {shots}-shot, {episodes} episodes, {len(per)} classes: "
        f"mIoU {result['miou']:.2f}  FB-IoU {result['fbiou']:.2f}  ({result['wall_s']} s)"
    )
    worst = sorted(per.items(), key=lambda kv: kv[1])[:5]
    out.line("lowest classes: " + ", ".join(f"{ds.names.get(c, c)} {v:.1f}" for c, v in worst))
    return result
