"""`eval project`: a multi-label project as our users have it.

The ``seen`` classes are the project's labels; each gets K reference images (seeded draw among
the images holding it); reference images never appear as targets. Every other class present in
the targets is unseen (not in the project). Each target is encoded once, every label predicted,
then each requested assignment turns the label predictions into regions:

- ``argmax`` (`gfsam.assign.assign_argmax`): every label everywhere, overlaps to the higher score;
- ``label-gate`` (`assign_label_gate`): argmax over the labels whose whole mask passes split's
  similarity threshold (the strongest simple alternative to split);
- ``split`` (`assign_split`, the worker's default);
- ``present``: argmax over the labels whose class truly is in the image. Only ground truth can
  give it: the UPPER BOUND of any label-level absence decision (false_paint 0), printed as
  such; it still paints whatever wrong regions a present label's mask holds, so an
  instance-level rejection (split) can score above it on mIoU under SAM errors;
- ``none`` (always scored, first row): paint nothing, what doing nothing scores.

Numbers per assignment (`ProjectScore.numbers`; pixels at the original size, ignore excluded):

- ``seen_miou``: mean over a FIXED class set, the seen classes present in the targets (the same
  set for every mode; a class absent from every target is left out whatever is painted), of the
  IoU accumulated over all targets, %; ``miou`` repeats it; ``classes_scored`` is the set's size;
- ``seen_recall``: share of seen-class pixels painted with their own label;
- ``false_paint``: share of (target, seen label whose class is absent from it) pairs where the
  label painted at least one pixel (GF-SAM has no notion of absence: argmax scores ~1);
- ``background_paint``: share of background (class 0) pixels painted as any label;
- ``unseen_paint``: share of unseen-class pixels painted as any label;
- ``contamination``: share of all pixels outside the seen classes (unseen and background)
  painted as any label;
- ``fbiou``: any seen label vs the rest;
- ``reject_seen`` / ``reject_unseen``: by PIXELS, of the seen-class (the price of the reject) /
  unseen-class (what the reject is for) pixels inside some proposal (an accepted instance or a
  candidate), the share left unpainted; null when no proposal covers any. ``proposals_seen`` /
  ``proposals_unseen`` count the proposals whose main ground-truth class is seen / unseen.

With ``discover``, discovery (`gfsam.discover`) runs after the assignment named by
``discover_after`` (default ``split``) and fills the discovery keys (`gfsam.eval.discovery`:
``candidate_recall``, ``candidate_precision``, ``candidates_per_image``,
``candidate_iou_median``, ``group_ari`` beside ``singleton_ari``, ``group_nmi`` beside
``singleton_nmi``, ``classes_multi_hit``); ``discover_baseline`` adds the same run without the
"unannotated only" restriction under ``discovery_baseline``. Without ``discover`` they are null.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gfsam.assign import (
    Assignment,
    LabelCalibration,
    PointMasks,
    SplitParams,
    assign_argmax,
    assign_label_gate,
    assign_split,
    calibrate_label,
    shot_prototypes,
)
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.eval.data import IGNORE, Dataset, Item, load_labels
from gfsam.eval.discovery import DISCOVERY_KEYS, DiscoveryRun
from gfsam.eval.geometry import GeometryScore
from gfsam.eval.models import EvalModel
from gfsam.eval.oracle import frame_labels
from gfsam.eval.report import Output, progress
from gfsam.geometry import GeometryParams
from gfsam.types import GFSAMConfig

ASSIGNS = ("argmax", "label-gate", "split", "present")
NOTHING = "none"
UPPER_BOUND = "present"


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
    """Accumulates one assignment's numbers over targets (module docstring: the definitions)."""

    def __init__(self, seen: Sequence[int]) -> None:
        self.seen = list(seen)
        n = len(self.seen)
        self.inter, self.union, self.gt = np.zeros(n), np.zeros(n), np.zeros(n)
        self.fb = np.zeros(2)  # [intersection, union] of "any seen label"
        self.bg_fb = np.zeros(2)  # the same for the rest (FB-IoU's background part)
        self.absent_pairs = self.false_paints = 0
        self.px = {"background": [0, 0], "unseen": [0, 0], "other": [0, 0]}  # [total, painted]
        # [proposals, pixels inside some proposal, of those left unpainted]
        self.props = {"seen": [0, 0, 0], "unseen": [0, 0, 0]}

    def add(self, asg: Assignment, names: dict[int, str], labels: np.ndarray) -> None:
        """One target's assignment against its label map int [H, W]."""
        valid = labels != IGNORE
        masks = asg.label_masks()
        painted = np.zeros(labels.shape, dtype=bool)
        for k, c in enumerate(self.seen):
            pred = masks.get(names[c], np.zeros(labels.shape, dtype=bool)) & valid
            gt = (labels == c) & valid
            painted |= pred
            self.inter[k] += np.count_nonzero(pred & gt)
            self.union[k] += np.count_nonzero(pred | gt)
            self.gt[k] += np.count_nonzero(gt)
            if not gt.any():
                self.absent_pairs += 1
                self.false_paints += int(pred.any())
        seen_px = np.isin(labels, self.seen) & valid
        self.fb += (np.count_nonzero(painted & seen_px), np.count_nonzero(painted | seen_px))
        rest, unpainted = valid & ~seen_px, valid & ~painted
        self.bg_fb += (np.count_nonzero(rest & unpainted), np.count_nonzero(rest | unpainted))
        for kind, where in (
            ("background", valid & (labels == 0)),
            ("unseen", rest & (labels != 0)),
            ("other", rest),
        ):
            self.px[kind][0] += int(np.count_nonzero(where))
            self.px[kind][1] += int(np.count_nonzero(where & painted))
        proposed = np.zeros(labels.shape, dtype=bool)
        for inst in [i for v in asg.accepted.values() for i in v] + list(asg.candidates):
            proposed |= inst.mask
            values = labels[inst.mask & valid]
            main = int(np.bincount(values).argmax()) if values.size else 0
            if main != 0:
                self.props["seen" if main in self.seen else "unseen"][0] += 1
        for kind, where in (("seen", seen_px), ("unseen", rest & (labels != 0))):
            inside = where & proposed
            self.props[kind][1] += int(np.count_nonzero(inside))
            self.props[kind][2] += int(np.count_nonzero(inside & ~painted))

    def numbers(self) -> dict[str, Any]:
        """The named numbers (module docstring)."""

        def ratio(a: float, b: float, nd: int = 4) -> float | None:
            return round(float(a) / float(b), nd) if b else None

        scored = self.gt > 0  # the fixed class set: seen classes present in the targets
        iou = 100.0 * self.inter[scored] / np.maximum(self.union[scored], 1)
        miou = round(float(iou.mean()), 2) if scored.any() else None
        fb = [i / u if u else 0.0 for i, u in (self.bg_fb, self.fb)]
        out: dict[str, Any] = {
            "seen_miou": miou,
            "miou": miou,
            "classes_scored": int(scored.sum()),
            "seen_recall": ratio(self.inter.sum(), self.gt.sum()),
            "false_paint": ratio(self.false_paints, self.absent_pairs),
            "background_paint": ratio(self.px["background"][1], self.px["background"][0]),
            "unseen_paint": ratio(self.px["unseen"][1], self.px["unseen"][0]),
            "contamination": ratio(self.px["other"][1], self.px["other"][0]),
            "fbiou": round(50.0 * sum(fb), 2),
        }
        for kind, (n, px, rej) in self.props.items():
            out[f"reject_{kind}"] = ratio(rej, px)
            out[f"proposals_{kind}"] = n
        return out


def _assign(
    mode: str,
    target: TargetEncoding,
    preds: dict[str, Prediction],
    refs: dict[str, list[Reference]],
    cals: dict[str, LabelCalibration],
    cfg: GFSAMConfig,
    present: set[str],
    point_masks: PointMasks,
) -> Assignment:
    if mode == NOTHING:
        return Assignment(accepted={label: [] for label in preds})
    if mode == "argmax":
        return assign_argmax(preds, list(preds))
    if mode == UPPER_BOUND:
        out = assign_argmax({lb: p for lb, p in preds.items() if lb in present}, list(preds))
        return Assignment(accepted={lb: out.accepted.get(lb, []) for lb in preds})
    if mode == "label-gate":
        return assign_label_gate(target, preds, refs, cfg=cfg, calibrations=cals)
    if mode == "split":
        return assign_split(
            target, preds, refs, cfg=cfg, calibrations=cals, point_masks=point_masks
        )
    raise ValueError(f"unknown assignment {mode!r}; one of {', '.join(ASSIGNS)}")


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
    discover_after: str = "split",
    limit: int | None = None,
    cfg: GFSAMConfig | None = None,
    geometry: GeometryParams | None = None,
) -> dict[str, Any]:
    """Run the protocol; the first of `assigns` also fills the top-level keys. With `geometry`
    the first assignment is also scored cleaned (``<mode>+clean`` in ``by_assign``) and
    ``geometry`` holds its defects per 100 regions before and after cleaning.

    Returns:
        ``protocol``, ``seen``, ``shots``, ``seed``, ``targets``, ``assign``, the numbers of
        `ProjectScore.numbers` for the first assignment, the discovery keys (null without
        `discover`), ``discover_after``, ``discovery`` / ``discovery_baseline``, ``by_assign``
        (assignment -> numbers, ``none`` first: doing nothing) and ``wall_s``.
    """
    bad = [m for m in (*assigns, discover_after) if m not in ASSIGNS]
    if bad:
        raise ValueError(f"unknown assignment {bad[0]!r}; one of {', '.join(ASSIGNS)}")
    start, cfg = time.perf_counter(), cfg or GFSAMConfig()
    ref_items = choose_references(ds, seen, shots, seed, out)
    names = {c: ds.names.get(c, str(c)) for c in ref_items}
    refs = {
        names[c]: [model.encode_reference(i, load_labels(i) == c) for i in items]
        for c, items in ref_items.items()
    }
    cals = {label: calibrate_label(r, cfg, SplitParams()) for label, r in refs.items()}
    used = {i.key for items in ref_items.values() for i in items}
    targets = [i for i in ds.items if i.key not in used][:limit]
    modes = [NOTHING, *dict.fromkeys(assigns)]
    scored = [*modes, *([discover_after] if discover and discover_after not in modes else [])]
    scores = {mode: ProjectScore(list(ref_items)) for mode in modes}
    clean_mode = f"{assigns[0]}+clean"
    shapes = GeometryScore(geometry) if geometry is not None else None
    if shapes is not None:
        scores[clean_mode] = ProjectScore(list(ref_items))
    protos = [(shot_prototypes(r, cfg, SplitParams()), cals[lb].match) for lb, r in refs.items()]
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
        present = {names[c] for c in ds.classes_of(item) if c in names}
        for mode in scored:
            asg = _assign(mode, target, preds, refs, cals, cfg, present, model.point_masks(target))
            if mode in scores:
                scores[mode].add(asg, names, labels)
            if shapes is not None and mode == assigns[0]:
                scores[clean_mode].add(shapes.clean(asg), names, labels)
            for run in runs.values() if mode == discover_after else ():
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
        "discover_after": discover_after if discover else None,
        "discovery": found.get("restricted"),
        "discovery_baseline": found.get("baseline"),
        "by_assign": by_assign,
        "geometry": shapes.numbers() if shapes is not None else None,
        "wall_s": round(time.perf_counter() - start, 1),
    }
    _print(out, result)
    return result


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _print(out: Output, result: dict[str, Any]) -> None:
    out.line(
        f"project: {len(result['seen'])} labels, {result['shots']}-shot, "
        f"{result['targets']} targets, seed {result['seed']} ({result['wall_s']} s)"
    )
    cols = ("seen_mIoU", "recall", "false_pt", "bg_paint", "unseen_pt", "contam.", "rej.seen")
    out.line(f"{'assign':14s} " + " ".join(f"{c:>9s}" for c in (*cols, "rej.unseen")))
    for mode, n in result["by_assign"].items():
        miou = "-" if n["seen_miou"] is None else f"{n['seen_miou']:.2f}"
        cells = [miou] + [
            _pct(n[k])
            for k in (
                "seen_recall",
                "false_paint",
                "background_paint",
                "unseen_paint",
                "contamination",
                "reject_seen",
                "reject_unseen",
            )
        ]
        name = {NOTHING: "none (nothing)", UPPER_BOUND: "present (UB)"}.get(mode, mode)
        out.line(f"{name:14s} " + " ".join(f"{c:>9s}" for c in cells))
    if UPPER_BOUND in result["by_assign"]:
        out.line(
            "present (UB) = argmax over the labels truly in the image: an oracle-only bound of "
            "label-level absence decisions (not of per-region rejection)"
        )
    if result.get("geometry"):
        out.line(
            f"geometry of {result['assign']} per 100 regions: regions specks slivers holes dup."
        )
        for when, n in result["geometry"].items():
            out.line(
                f"  {when:6s} {n['regions']:>7d} {n['specks']:>6.2f} {n['slivers']:>7.2f} "
                f"{n['holes']:>5.2f} {n['duplicates']:>4.2f}"
            )
    variants = [
        (k, result[f"discovery{s}"]) for k, s in (("unannotated", ""), ("baseline", "_baseline"))
    ]
    if any(n for _, n in variants):
        out.line(
            f"discover after {result['discover_after']}: {'recall':>7s} {'precision':>9s} "
            f"{'cand/img':>8s} {'IoU med':>7s} {'ARI':>6s} {'ARI 1/1':>7s} {'NMI':>6s} "
            f"{'NMI 1/1':>7s} {'multi':>5s} {'groups':>6s} {'objects':>7s}"
        )
    for name, n in variants:
        if n:
            out.line(
                f"{name:21s} {_fmt(n['candidate_recall']):>7s} "
                f"{_fmt(n['candidate_precision']):>9s} {_fmt(n['candidates_per_image']):>8s} "
                f"{_fmt(n['candidate_iou_median']):>7s} {_fmt(n['group_ari']):>6s} "
                f"{_fmt(n['singleton_ari']):>7s} {_fmt(n['group_nmi']):>6s} "
                f"{_fmt(n['singleton_nmi']):>7s} {n['classes_multi_hit']:5d} "
                f"{n['groups']:6d} {n['unseen_objects']:7d}"
            )


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
