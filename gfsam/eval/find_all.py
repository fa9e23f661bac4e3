"""``eval find-all``: "find all like this" from one click, against the ground truth (issue 20).

A click case is (image, class) with at least two instances (8-connected components of the class
in the 1024 frame) of at least ``MIN_OBJECT`` of the image; the click is on the deepest pixel of
the largest one, decoded like a smart-tool click (one point, SAM's three-mask output). Then:

- ``regions`` (the worker's find all, `gfsam.find_all.find_similar`): one box prompt per region
  of similar cells, batched;
- ``gfsam`` (the first version, the baseline): GF-SAM with the clicked object as a one-shot
  reference of its own image, its mask cut into pieces, pieces touching the click dropped;
- ``none``: finds nothing (what doing nothing scores).

Per method: ``instance_recall`` (other instances of the class, at least ``MIN_OBJECT``, that a
found region covers with IoU >= 0.5), ``precision`` (found regions covering some instance of
the class, any size, with IoU >= 0.5; null when nothing was found), ``wrong_per_click`` (found
regions matching no instance of the class), ``decodes_mean`` / ``decodes_max`` (mask-engine
decodes per click besides the click itself: the latency, about 125 ms each for SAM's decoder
on 2 CPU threads). With oracle encoders this measures the logic, never model quality.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from gfsam.assign import SplitParams
from gfsam.eval.data import IGNORE, Dataset, load_labels
from gfsam.eval.discovery import MATCH_IOU, MIN_OBJECT
from gfsam.eval.models import EvalModel
from gfsam.eval.oracle import EIGHT, frame_labels
from gfsam.eval.report import Output
from gfsam.find_all import FindAllParams, find_similar
from gfsam.image import mask_from_frame, mask_to_frame
from gfsam.pipeline import reference_from_target
from gfsam.types import FRAME, GFSAMConfig

METHODS = ("none", "gfsam", "regions")
KEYS = ("instance_recall", "precision", "wrong_per_click", "decodes_mean", "decodes_max")


def click_cases(labels: np.ndarray) -> list[tuple[int, list[np.ndarray]]]:
    """(class, its instances bool [S, S], largest first) per class of a framed label map with
    at least two instances of at least ``MIN_OBJECT`` of the frame."""
    cases = []
    for cls in np.unique(labels):
        if cls == 0 or cls == IGNORE:
            continue
        comp, n = ndimage.label(labels == cls, structure=EIGHT)
        inst = [comp == k for k in range(1, n + 1)]
        inst.sort(key=lambda m: -int(m.sum()))
        if sum(int(m.sum()) >= MIN_OBJECT * labels.size for m in inst) >= 2:
            cases.append((int(cls), inst))
    return cases


def deepest_pixel(mask: np.ndarray) -> np.ndarray:
    """float32 [1, 2] (x, y) of the pixel farthest from the mask's edge."""
    depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(depth)), mask.shape)
    return np.array([[x, y]], dtype=np.float32)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return int((a & b).sum()) / union if union else 0.0


def _gfsam_found(
    model: EvalModel, target: Any, clicked: np.ndarray
) -> tuple[list[np.ndarray], int]:
    """The first version's find all: GF-SAM with the clicked object as its own shot."""
    shot = reference_from_target(target, mask_from_frame(clicked, target.image_size))
    pred = model.predict(target, [shot])
    found = mask_to_frame(pred.mask).numpy() & ~clicked  # (S, S)
    pieces, n = ndimage.label(found, structure=EIGHT)
    touching = set(np.unique(pieces[ndimage.binary_dilation(clicked)]).tolist())
    floor = SplitParams().min_area  # frame pixels: the speck size
    masks = [pieces == k for k in range(1, n + 1) if k not in touching]
    seg = pred.segmentation
    return [m for m in masks if int(m.sum()) >= floor], 0 if seg is None else int(seg.n_points)


def score_click(found: list[np.ndarray], instances: list[np.ndarray]) -> tuple[int, int, int, int]:
    """(other instances asked for, found, found regions that match an instance, regions)."""
    asked = [m for m in instances[1:] if int(m.sum()) >= MIN_OBJECT * m.size]
    hit = sum(any(_iou(m, f) >= MATCH_IOU for f in found) for m in asked)
    good = sum(any(_iou(m, f) >= MATCH_IOU for m in instances) for f in found)
    return len(asked), hit, good, len(found)


@dataclass
class _Tally:
    asked: int = 0
    hit: int = 0
    good: int = 0
    regions: int = 0
    decodes: list[int] = field(default_factory=list)

    def add(self, asked: int, hit: int, good: int, regions: int, decodes: int) -> None:
        self.asked += asked
        self.hit += hit
        self.good += good
        self.regions += regions
        self.decodes.append(decodes)


def run_find_all(
    ds: Dataset,
    model: EvalModel,
    out: Output,
    *,
    limit: int | None = None,
    params: FindAllParams | None = None,
    config: GFSAMConfig | None = None,
) -> dict[str, Any]:
    """Score every click case of the dataset's images (the first `limit` images)."""
    params, config = params or FindAllParams(), config or GFSAMConfig()
    tallies = {m: _Tally() for m in METHODS}
    clicks = 0
    for item in ds.items[:limit]:
        labels = frame_labels(load_labels(item))  # (S, S)
        cases = click_cases(labels)
        if not cases:
            continue
        target = model.encode_target(item)
        sam = model.decoder
        for _, instances in cases:
            point = deepest_pixel(instances[0])
            clicked, _, _ = sam.decode_prompts(target.embedding, point, None, multimask=True)
            clicked = np.asarray(clicked, dtype=bool)
            if not clicked.any() or clicked.all():
                continue
            clicks += 1

            def boxes(points: np.ndarray, box: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                return sam.decode_boxes(target.embedding, points, box)  # noqa: B023

            similar = find_similar(target.tokens, clicked, boxes, config, params)
            runs = {
                "none": ([], 0),
                "gfsam": _gfsam_found(model, target, clicked),
                "regions": ([f.mask for f in similar.found], similar.decodes),
            }
            for method, (found, decodes) in runs.items():
                tallies[method].add(*score_click(found, instances), decodes)
    result: dict[str, Any] = {"clicks": clicks, "frame": FRAME, "params": vars(params).copy()}
    for method, t in tallies.items():
        dec = t.decodes or [0]
        result[method] = {
            "instance_recall": t.hit / t.asked if t.asked else None,
            "precision": t.good / t.regions if t.regions else None,
            "wrong_per_click": (t.regions - t.good) / clicks if clicks else None,
            "decodes_mean": float(np.mean(dec)),
            "decodes_max": int(np.max(dec)),
        }
    out.line(f"find all: {clicks} clicks (images with >= 2 instances of a class)")
    out.line(f"{'method':<9}" + "".join(f"{k:>17}" for k in KEYS))
    for method in METHODS:
        row = result[method]
        cells = "".join(f"{'-' if row[k] is None else format(row[k], '.3f'):>17}" for k in KEYS)
        out.line(f"{method:<9}{cells}")
    return result
