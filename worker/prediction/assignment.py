"""Which label gets each region of one task: the worker's side of `gfsam.assign` (issue 10).

`ASSIGN=split` (default): each instance a label's GF-SAM run found is kept only when it looks
like that label's shots and lies in that label's evidence (`gfsam.assign.assign_split`); the rest
become candidates (not painted, returned for discovery). `ASSIGN=label-gate`: each label's whole
mask is kept or dropped with the same presence floor. `ASSIGN=argmax`: every label keeps its
whole mask, a pixel claimed by several labels goes to the higher score (`assign_argmax`).

Calibrations (`gfsam.assign.LabelCalibration`) depend only on a label's shots, so they are
computed once per (model, shot blob shas) and kept in this process (`ThresholdCache`); a re-fit
that changes a label's shots changes its key, a task never recomputes them. `reject_counts`
gives what the reject removed per label (issue 18).

Split reads token-level data (target tokens, each prediction's `segmentation`, each reference's
`tokens`/`fg`) and the model's `GFSAMConfig`; the model contract (`worker.contract`) guarantees
them, so the mode a user set is the mode that runs.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial

import numpy as np

from backend.state.schemas import LabelRejects
from gfsam.assign import (
    Assignment,
    LabelCalibration,
    PointMasks,
    SplitParams,
    assign_argmax,
    assign_mixed,
    calibrate_label,
)
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.types import GFSAMConfig

logger = logging.getLogger(__name__)


class ThresholdCache:
    """Per-label calibrations (`gfsam.assign.LabelCalibration`) by (model key, the label's shot
    blob shas), LRU-bounded. The assignment reads their ``floor``, discovery their ``match``."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        self.computed = 0  # calibrations run by this process (tests check "once per shot set")
        self._items: OrderedDict[tuple[str, ...], LabelCalibration] = OrderedDict()

    def get(
        self, key: tuple[str, ...], compute: Callable[[], LabelCalibration]
    ) -> LabelCalibration:
        """The calibration under `key`, computed by `compute` on a miss."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = compute()
        self.computed += 1
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()
        self.computed = 0


THRESHOLDS = ThresholdCache()  # one per worker process, like the model holder


def calibration(
    label_refs: Sequence[Reference],
    config: GFSAMConfig,
    shas: Sequence[str],
    *,
    model_key: str,
    cache: ThresholdCache = THRESHOLDS,
) -> LabelCalibration:
    """One label's calibration, computed once per (model, shot set)."""
    return cache.get(
        (model_key, *shas), partial(calibrate_label, label_refs, config, SplitParams())
    )


def assign(
    mode: str,
    config: GFSAMConfig,
    target: TargetEncoding,
    predictions: Mapping[str, Prediction],
    references: Mapping[str, Sequence[Reference]],
    shas: Mapping[str, Sequence[str]],
    order: Sequence[str],
    *,
    model_key: str,
    cache: ThresholdCache = THRESHOLDS,
    point_masks: PointMasks | None = None,
    offsets: Mapping[str, float] | None = None,
    modes: Mapping[str, str] | None = None,
) -> Assignment:
    """Turn per-label predictions of one target into accepted instances and candidates.

    Args:
        mode: ``"split"``, ``"label-gate"`` or ``"argmax"`` (`Settings.assign`).
        config: the model's `GFSAMConfig` (split pools features and prompts as it does).
        target: the target encoding the predictions were made on.
        predictions: label -> prediction, in config order (labels with shots only).
        references: label -> the decoded shots the prediction used.
        shas: label -> the blob shas of those shots (the calibration cache key).
        order: every label of the config, in config order (argmax tie-break).
        model_key: identifies the weights (`Model.key`).
        cache: where calibrations are kept.
        point_masks: the target's prompt masks (split carves proposals along them).
        offsets: issue 19's hook (`worker.quality`): label -> added to its presence floor
            (higher = stricter); absent labels keep the calibrated floor.
        modes: issue 19's per-label modes: label -> the mode it uses instead of `mode`
            (`gfsam.assign.assign_mixed`); absent labels use `mode`.

    Returns:
        `Assignment`: label -> accepted instances (bool [H, W] original size, pairwise
        disjoint, each with its score), and the rejected candidates (split, label-gate).
    """
    per_label = {label: (modes or {}).get(label, mode) for label in predictions}
    if all(m == "argmax" for m in per_label.values()):
        return assign_argmax(predictions, order)  # no floor needed: no calibration computed
    cals = {
        label: calibration(references[label], config, shas[label], model_key=model_key, cache=cache)
        for label in predictions
    }
    # one mode for every label is exactly that rule (`assign_split`, `assign_label_gate`)
    return assign_mixed(
        per_label,
        target,
        predictions,
        references,
        order,
        cfg=config,
        thresholds=with_offsets({label: cal.floor for label, cal in cals.items()}, offsets),
        calibrations=cals,
        point_masks=point_masks,
    )


def reject_counts(asg: Assignment) -> dict[str, LabelRejects]:
    """Per label whose GF-SAM run proposed something: what it found and what the reject
    removed (instances and original-size pixels; an instance counts for its ``source``)."""
    out: dict[str, LabelRejects] = {}
    kept = [i for insts in asg.accepted.values() for i in insts]
    for inst, rejected in [(i, False) for i in kept] + [(c, True) for c in asg.candidates]:
        row = out.setdefault(inst.source, LabelRejects(label=inst.source))
        px = int(np.count_nonzero(inst.mask))
        row.found_instances += 1
        row.found_pixels += px
        if rejected:
            row.rejected_instances += 1
            row.rejected_pixels += px
    return out


# --- issue 19 hook (per-project tuning, `worker.quality`): kept apart from the rules above ------


def default_thresholds(
    config: GFSAMConfig,
    references: Mapping[str, Sequence[Reference]],
    shas: Mapping[str, Sequence[str]],
    *,
    model_key: str,
    cache: ThresholdCache = THRESHOLDS,
) -> dict[str, float]:
    """label -> the presence floor `assign` uses for it before any offset (same cache, same
    key)."""
    return {
        label: calibration(refs, config, shas[label], model_key=model_key, cache=cache).floor
        for label, refs in references.items()
    }


def with_offsets(
    thresholds: Mapping[str, float], offsets: Mapping[str, float] | None
) -> dict[str, float]:
    """label -> threshold + its offset (0 for a label without one)."""
    extra = offsets or {}
    return {label: t + float(extra.get(label, 0.0)) for label, t in thresholds.items()}
