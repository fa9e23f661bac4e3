"""`eval project`: a multi-label project as our users have it.

The ``seen`` classes are the project's labels; each gets K reference images (seeded draw among
the images holding it); reference images never appear as targets. Every other class present in
the targets is unseen (not in the project). Each target is encoded once, every label predicted,
then each requested assignment (`gfsam.assign`) turns the label predictions into regions.

Numbers per assignment: ``seen_miou`` (per seen class IoU accumulated over all targets, at the
original size, then averaged, %; ``miou`` repeats it), ``fbiou`` (any seen label vs the rest),
``contamination`` (share of unseen-class pixels painted as any seen label), and for ``split``
the reject rates: ``reject_seen`` (share of a label's proposals whose main ground-truth class is
that label's class that went to the candidates: the price of the reject) and
``reject_unseen`` (same for unseen-class proposals: what the reject is for). With
``discover``, discovery (`gfsam.discover`, Split Matching part 2) runs after the first
assignment and fills ``candidate_recall``, ``candidate_precision``, ``candidates_per_image`` and
``group_nmi`` (`gfsam.eval.discovery`); ``discover_baseline`` adds the same run without the
"unannotated only" restriction under ``discovery_baseline``. Without ``discover`` they are null.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gfsam.assign import (
    Assignment,
    SplitParams,
    assign_argmax,
    assign_split,
    calibrate_threshold,
    shot_prototypes,
)
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.eval.data import IGNORE, Dataset, Item, load_labels
from gfsam.eval.discovery import DiscoveryRun
from gfsam.eval.models import EvalModel
from gfsam.eval.oracle import frame_labels
from gfsam.eval.report import IoUMeter, Output, progress
from gfsam.types import GFSAMConfig

ASSIGNS = ("argmax", "split")
DISCOVERY_KEYS = ("candidate_recall", "candidate_precision", "candidates_per_image", "group_nmi")


def choose_references(
    ds: Dataset, seen: Sequence[int], shots: int, seed: int, out: Output
) -> dict[int, list[Item]]:
    """K seeded reference images per seen class; a class with fewer than K + 1 images is left
    out of the project (said on `out`), so its pixels count as unseen."""
    rng = np.random.RandomState(seed)
    pool = ds.by_class(seen)
    refs: dict[int, list[Item]] = {}
    for c in seen:
        items = pool.get(c, [])
        if len(items) <= shots:
            out.line(f"class {ds.names.get(c, c)} ({c}): {len(items)} images <= K; left out")
            continue
        refs[c] = [items[i] for i in sorted(rng.choice(len(items), shots, replace=False))]
    return refs


class ProjectScore:
    """Accumulates one assignment's numbers over targets."""

    def __init__(self, seen: Sequence[int]) -> None:
        self.seen = list(seen)
        self.meter, self.fb = IoUMeter(), IoUMeter()
        self.unseen_px = self.contaminated_px = 0
        self.props = {"seen": [0, 0], "unseen": [0, 0]}  # kind -> [proposals, rejected]

    def add(self, asg: Assignment, names: dict[int, str], labels: np.ndarray) -> None:
        valid = labels != IGNORE
        masks = asg.label_masks()
        painted = np.zeros(labels.shape, dtype=bool)
        for c in self.seen:
            pred = masks.get(names[c], np.zeros(labels.shape, dtype=bool))
            painted |= pred
            self.meter.add(c, pred, labels == c, valid)
        self.fb.add(0, painted, np.isin(labels, self.seen), valid)
        unseen = valid & (labels != 0) & ~np.isin(labels, self.seen)
        self.unseen_px += int(unseen.sum())
        self.contaminated_px += int((unseen & painted).sum())
        insts = [(i, False) for v in asg.accepted.values() for i in v]
        for inst, rejected in insts + [(i, True) for i in asg.candidates]:
            values = labels[inst.mask & valid]
            if values.size == 0:
                continue
            main = int(np.bincount(values).argmax())
            if main != 0 and (main not in self.seen or names.get(main) == inst.source):
                kind = self.props["seen" if main in self.seen else "unseen"]
                kind[0] += 1
                kind[1] += int(rejected)

    def numbers(self) -> dict[str, Any]:
        miou = round(self.meter.miou(), 2)
        out: dict[str, Any] = {"seen_miou": miou, "miou": miou, "fbiou": round(self.fb.miou(), 2)}
        out["contamination"] = round(self.contaminated_px / max(self.unseen_px, 1), 4)
        for kind, (n, rej) in self.props.items():
            out[f"reject_{kind}"] = round(rej / n, 4) if n else None
            out[f"proposals_{kind}"] = n
        return out


def _assign(
    mode: str,
    target: TargetEncoding,
    preds: dict[str, Prediction],
    refs: dict[str, list[Reference]],
    thresholds: dict[str, float],
    cfg: GFSAMConfig,
) -> Assignment:
    if mode == "argmax":
        return assign_argmax(preds, list(preds))
    return assign_split(target, preds, refs, cfg=cfg, thresholds=thresholds)


def run_project(
    ds: Dataset,
    model: EvalModel,
    out: Output,
    *,
    seen: Sequence[int],
    shots: int,
    seed: int,
    assigns: Sequence[str] = ("argmax",),
    discover: bool = False,
    discover_baseline: bool = False,
    limit: int | None = None,
    cfg: GFSAMConfig | None = None,
) -> dict[str, Any]:
    """Run the protocol; the first of `assigns` also fills the top-level keys.

    Returns:
        ``protocol``, ``seen``, ``shots``, ``seed``, ``targets``, ``assign``, the numbers of
        `ProjectScore.numbers` for the first assignment, the discovery keys (null without
        `discover`), ``discovery_baseline`` (with `discover_baseline`), ``by_assign``
        (assignment -> numbers) and ``wall_s``.
    """
    start, cfg = time.perf_counter(), cfg or GFSAMConfig()
    ref_items = choose_references(ds, seen, shots, seed, out)
    names = {c: ds.names.get(c, str(c)) for c in ref_items}
    refs = {
        names[c]: [model.encode_reference(i, load_labels(i) == c) for i in items]
        for c, items in ref_items.items()
    }
    thresholds = {label: calibrate_threshold(r, cfg, SplitParams()) for label, r in refs.items()}
    used = {i.key for items in ref_items.values() for i in items}
    targets = [i for i in ds.items if i.key not in used][:limit]
    scores = {mode: ProjectScore(list(ref_items)) for mode in assigns}
    protos = [(shot_prototypes(r, cfg, SplitParams()), thresholds[lb]) for lb, r in refs.items()]
    runs = {
        name: DiscoveryRun(list(ref_items), cfg, restrict=restrict, labels=protos)
        for name, restrict, on in (
            ("restricted", True, discover),
            ("baseline", False, discover_baseline),
        )
        if on
    }
    for item in progress(targets, f"project {shots}-shot"):
        target = model.encode_target(item)
        preds = {label: model.predict(target, r) for label, r in refs.items()}
        labels = load_labels(item)
        for k, mode in enumerate(assigns):
            asg = _assign(mode, target, preds, refs, thresholds, cfg)
            scores[mode].add(asg, names, labels)
            for run in runs.values() if k == 0 else ():
                run.step(item.key, target, asg, model.prompt_fn(target), frame_labels(labels))
    by_assign = {mode: s.numbers() for mode, s in scores.items()}
    found = {name: run.numbers() for name, run in runs.items()}
    result: dict[str, Any] = {
        "protocol": "project",
        "seen": sorted(ref_items),
        "shots": shots,
        "seed": seed,
        "targets": len(targets),
        "assign": assigns[0],
        **by_assign[assigns[0]],
        **{k: found.get("restricted", {}).get(k) for k in DISCOVERY_KEYS},
        "discovery": found.get("restricted"),
        "discovery_baseline": found.get("baseline"),
        "by_assign": by_assign,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    _print(out, result)
    return result


def _print(out: Output, result: dict[str, Any]) -> None:
    out.line(
        f"project: {len(result['seen'])} labels, {result['shots']}-shot, "
        f"{result['targets']} targets, seed {result['seed']} ({result['wall_s']} s)"
    )
    out.line(
        f"{'assign':8s} {'seen_mIoU':>9s} {'FB-IoU':>7s} {'contam.':>8s} "
        f"{'rej.seen':>8s} {'rej.unseen':>10s}"
    )
    for mode, n in result["by_assign"].items():
        rs = "-" if n["reject_seen"] is None else f"{100 * n['reject_seen']:.1f}%"
        ru = "-" if n["reject_unseen"] is None else f"{100 * n['reject_unseen']:.1f}%"
        out.line(
            f"{mode:8s} {n['seen_miou']:9.2f} {n['fbiou']:7.2f} "
            f"{100 * n['contamination']:7.2f}% {rs:>8s} {ru:>10s}"
        )
    variants = [
        (k, result[f"discovery{s}"]) for k, s in (("unannotated", ""), ("baseline", "_baseline"))
    ]
    if any(n for _, n in variants):
        out.line(
            f"discover ({result['assign']}) {'recall':>7s} {'precision':>9s} {'cand/img':>8s} "
            f"{'NMI':>6s} {'groups':>6s} {'objects':>7s}"
        )
    for name, n in variants:
        if n:
            out.line(
                f"{name:18s} {_fmt(n['candidate_recall']):>7s} "
                f"{_fmt(n['candidate_precision']):>9s} {_fmt(n['candidates_per_image']):>8s} "
                f"{_fmt(n['group_nmi']):>6s} {n['groups']:6d} {n['unseen_objects']:7d}"
            )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
