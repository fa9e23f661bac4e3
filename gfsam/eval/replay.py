"""`eval replay`: the correction loop of a project, replayed on a labelled folder.

Images are "annotated" in folder order; before image i is annotated the annotator sees our
prediction for it (labels with shots only); the ground truth then replaces it, and each class's
mask on it becomes a shot under the backend's own shot policy (`gfsam.shots`: seed, correction
unless accepted at ``unchanged_iou``, at most ``max_shots`` with the seed kept), so the first
image holding a class seeds it. The labels shown are assigned as the backend assigns them
(``assign``: ``split``, the worker's default, or ``argmax``). After each step: the mean IoU,
over the classes that have shots by then, of the predictions still shown on the unannotated
images (``curve``, %). At the end: ``effort``, the share of pixels the annotator
had to change (shown label != true label) versus labelling from scratch (every true pixel).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from gfsam.assign import SplitParams, assign_argmax, assign_split, calibrate_threshold
from gfsam.calibrate import loo_references
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.eval.calibration import MIN_HELD_OUT, checkpoint, summarise
from gfsam.eval.data import IGNORE, Dataset, Item, load_labels
from gfsam.eval.models import EvalModel
from gfsam.eval.report import IoUMeter, Output, progress
from gfsam.shots import ShotPolicy, becomes_shot, trim_shots
from gfsam.types import GFSAMConfig


class Replay:
    """State of the loop: shots per class and predictions cached per shot-set version."""

    def __init__(
        self, model: EvalModel, classes: Sequence[int], policy: ShotPolicy, assign: str = "split"
    ) -> None:
        self.model, self.classes, self.policy, self.assign = model, list(classes), policy, assign
        self.cfg = GFSAMConfig()
        self.shots: dict[int, list[Reference]] = {}
        self.owners: dict[int, list[str]] = {}  # the item each shot came from, same order
        self.version: dict[int, int] = {}
        self.thresholds: dict[int, float] = {}  # per class, recomputed when its shots change
        self._cache: dict[tuple[str, int], tuple[int, Prediction]] = {}
        self._loo: dict[tuple[str, int], tuple[tuple[str, ...], Prediction]] = {}
        self._loo_thr: dict[tuple[int, tuple[str, ...]], float] = {}  # (class, shot owners)

    def predict(self, item: Item, target: TargetEncoding | None, c: int) -> Prediction:
        """Class `c` on `item` with its current shots (cached per shot-set version)."""
        hit = self._cache.get((item.key, c))
        if hit is None or hit[0] != self.version[c]:
            target = target or self.model.encode_target(item)
            hit = (self.version[c], self.model.predict(target, self.shots[c]))
            self._cache[(item.key, c)] = hit
        return hit[1]

    def left_out(self, item: Item) -> dict[int, tuple[list[Reference], float, Prediction]]:
        """Class -> (shots without those taken from `item`, their default threshold, the
        prediction on `item` with them): `item` is never predicted with itself as a reference
        (`gfsam.calibrate.loo_references`). A class whose only shot came from `item` is absent.
        """
        out: dict[int, tuple[list[Reference], float, Prediction]] = {}
        pairs = {str(c): list(zip(self.owners[c], self.shots[c], strict=True)) for c in self.shots}
        target: TargetEncoding | None = None
        for label, refs in loo_references(pairs, item.key).items():
            c = int(label)
            if len(refs) == len(self.shots[c]):  # nothing of item's: the shown prediction
                out[c] = (refs, self.thresholds[c], self.predict(item, target, c))
                continue
            owners = tuple(o for o in self.owners[c] if o != item.key)
            hit = self._loo.get((item.key, c))
            if hit is None or hit[0] != owners:
                target = target or self.model.encode_target(item)
                hit = (owners, self.model.predict(target, refs))
                self._loo[(item.key, c)] = hit
            if (c, owners) not in self._loo_thr:
                self._loo_thr[(c, owners)] = calibrate_threshold(refs, self.cfg, SplitParams())
            out[c] = (refs, self._loo_thr[(c, owners)], hit[1])
        return out

    def shown(self, item: Item) -> dict[int, np.ndarray] | None:
        """class -> bool [H, W] shown on `item` (argmax overlaps); None when no class has shots."""
        if not self.shots:
            return None
        target = None
        preds: dict[str, Prediction] = {}
        for c in self.shots:
            preds[str(c)] = self.predict(item, target, c)
        if self.assign == "argmax":
            masks = assign_argmax(preds, list(preds)).label_masks()
        else:
            target = target or self.model.encode_target(item)
            by_label = {str(c): r for c, r in self.shots.items()}
            thresholds = {str(c): t for c, t in self.thresholds.items()}
            asg = assign_split(target, preds, by_label, cfg=self.cfg, thresholds=thresholds)
            masks = asg.label_masks()
        return {int(k): v for k, v in masks.items()}

    def annotate(self, item: Item, labels: np.ndarray, shown: dict[int, np.ndarray] | None) -> None:
        """Ground truth replaces the prediction; each class's mask may become a shot."""
        for c in self.classes:
            mask = labels == c
            predicted = None if shown is None else shown.get(c, np.zeros_like(mask))
            if becomes_shot(
                mask, has_shots=c in self.shots, predicted=predicted, policy=self.policy
            ):
                ref = self.model.encode_reference(item, mask)
                pairs = [*zip(self.owners.get(c, []), self.shots.get(c, []), strict=True)]
                kept = trim_shots([*pairs, (item.key, ref)], self.policy.max_shots)
                self.owners[c], self.shots[c] = [o for o, _ in kept], [r for _, r in kept]
                self.version[c] = self.version.get(c, 0) + 1
                self.thresholds[c] = calibrate_threshold(self.shots[c], self.cfg, SplitParams())


def _label_map(masks: dict[int, np.ndarray] | None, shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int32)
    for c, m in (masks or {}).items():
        out[m] = c
    return out


def run_replay(
    ds: Dataset,
    model: EvalModel,
    out: Output,
    *,
    classes: Sequence[int] | None,
    limit: int,
    policy: ShotPolicy | None = None,
    assign: str = "split",
    calibrate: bool = False,
    calibrate_every: int = 5,
    calibrate_tasks: int = 20,
    calibrate_modes: bool = True,
) -> dict[str, Any]:
    """Replay the loop on the first `limit` images.

    With `calibrate` (split only), every `calibrate_every` annotated images the backend's
    self-tuning is replayed and measured on the images not annotated yet
    (`gfsam.eval.calibration`): the result gains its summary keys (``default_miou``,
    ``calibrated_miou``, ``best_fixed_miou``, ``score_iou_spearman``,
    ``low20_correction_share``) and ``calibration`` (every checkpoint).

    Returns:
        ``protocol``, ``classes``, ``images``, ``curve`` (mean IoU % after each step, on the
        images not annotated yet), ``shots`` (class -> final count), ``effort`` (changed /
        scratch pixels), ``wall_s``.
    """
    start = time.perf_counter()
    items = ds.items[:limit]
    wanted = sorted(classes) if classes else sorted({c for i in items for c in ds.classes_of(i)})
    loop = Replay(model, wanted, policy or ShotPolicy(), assign)
    if calibrate and assign != "split":
        raise ValueError("--calibrate tunes split's thresholds: use --assign split")
    curve: list[float] = []
    steps: list[dict[str, Any]] = []
    changed = scratch = 0
    for step, item in enumerate(progress(items, "replay")):
        labels = load_labels(item)
        valid = labels != IGNORE
        truth = np.where(np.isin(labels, wanted), labels, 0)
        shown = loop.shown(item)
        changed += int(((_label_map(shown, labels.shape) != truth) & valid).sum())
        scratch += int(((truth != 0) & valid).sum())
        loop.annotate(item, labels, shown)
        if step + 1 == len(items):
            continue  # nothing left unannotated
        left = len(items) - step - 1
        due = calibrate and (step + 1) % calibrate_every == 0 and left >= MIN_HELD_OUT
        if due and loop.shots:  # nothing to measure before the first shot
            cp = checkpoint(
                loop,
                items[: step + 1],
                items[step + 1 :],
                tasks=calibrate_tasks,
                modes=("label-gate", "argmax") if calibrate_modes else (),
            )
            steps.append(cp)
            out.line(_checkpoint_line(cp))
        meter = IoUMeter()
        for rest in items[step + 1 :]:
            rest_labels = load_labels(rest)
            rest_shown = loop.shown(rest) or {}
            for c in (c for c in wanted if c in loop.shots):  # what the project can predict
                pred = rest_shown.get(c, np.zeros(rest_labels.shape, dtype=bool))
                meter.add(c, pred, rest_labels == c, rest_labels != IGNORE)
        curve.append(round(meter.miou(), 2))
    result: dict[str, Any] = {
        "protocol": "replay",
        "assign": assign,
        "classes": wanted,
        "images": len(items),
        "curve": curve,
        "shots": {str(c): len(v) for c, v in loop.shots.items()},
        "effort": round(changed / max(scratch, 1), 4),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    if calibrate:
        result |= summarise(steps) | {"calibration": steps}
    out.line(
        f"replay: {len(items)} images, {len(wanted)} classes, assign {assign} "
        f"({result['wall_s']} s)"
    )
    out.line("mean IoU on unannotated images after each step: " + " ".join(map(str, curve)))
    out.line(f"pixels changed vs labelling from scratch: {100 * result['effort']:.1f}%")
    if calibrate:
        out.line(
            "calibration (mean over {checkpoints} checkpoints): default_miou {default_miou} "
            "calibrated_miou {calibrated_miou} best_fixed_miou {best_fixed_miou} "
            "best_fixed_modes_miou {best_fixed_modes_miou} "
            "best_fixed_evidenced_miou {best_fixed_evidenced_miou} "
            "score_iou_spearman {score_iou_spearman} "
            "(ceiling, images with nothing painted or near tied: {score_iou_spearman_ceiling}) "
            "low20_correction_share {low20_correction_share}".format(**result)
        )
    return result


def _checkpoint_line(cp: dict[str, Any]) -> str:
    tuned = {
        lb: ch["mode"] or ch["offset"] for lb, ch in cp["choices"].items() if ch["how"] == "tuned"
    }
    return (
        f"after {cp['annotated']} images (tuned on {cp['tuned_on']}, held out {cp['held_out']}): "
        f"default {cp['default_miou']} calibrated {cp['calibrated_miou']} "
        f"best fixed {cp['best_fixed_miou']} (with modes {cp['best_fixed_modes_miou']}, "
        f"evidenced classes only {cp['best_fixed_evidenced_miou']}) "
        f"spearman {cp['score_iou_spearman']} (ceiling {cp['score_iou_spearman_ceiling']}) "
        f"low20 {cp['low20_correction_share']} offsets {tuned or 'none moved'}"
    )
