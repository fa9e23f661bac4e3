"""Which label gets each region of one task: the worker's side of `gfsam.assign` (issue 10).

`ASSIGN=split` (default): each instance a label's GF-SAM run found is kept only when it looks
like that label's shots and lies in that label's evidence (`gfsam.assign.assign_split`); the rest
become candidates (not painted, returned for discovery). `ASSIGN=argmax`: every label keeps its
whole mask, a pixel claimed by several labels goes to the higher score (`assign_argmax`).

Thresholds depend only on a label's shots, so they are computed once per (model, shot blob shas)
and kept in this process (`ThresholdCache`); a re-fit that changes a label's shots changes its
key, a task never recomputes them.

Split reads token-level data (target tokens, each prediction's `segmentation`, each reference's
`tokens`/`fg`) and the model's `GFSAMConfig`; the model contract (`worker.contract`) guarantees
them, so the mode a user set is the mode that runs.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from gfsam.assign import Assignment, SplitParams, assign_argmax, assign_split, calibrate_threshold
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.types import GFSAMConfig

logger = logging.getLogger(__name__)


class ThresholdCache:
    """Per-label split thresholds by (model key, the label's shot blob shas), LRU-bounded."""

    def __init__(self, max_items: int = 256) -> None:
        self.max_items = max_items
        self.computed = 0  # calibrations run by this process (tests check "once per shot set")
        self._items: OrderedDict[tuple[str, ...], float] = OrderedDict()

    def get(self, key: tuple[str, ...], compute: Callable[[], float]) -> float:
        """The threshold under `key`, computed by `compute` on a miss."""
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = self._items[key] = float(compute())
        self.computed += 1
        while len(self._items) > self.max_items:
            self._items.popitem(last=False)
        return value

    def clear(self) -> None:
        self._items.clear()
        self.computed = 0


THRESHOLDS = ThresholdCache()  # one per worker process, like the model holder


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
    offsets: Mapping[str, float] | None = None,
) -> Assignment:
    """Turn per-label predictions of one target into accepted instances and candidates.

    Args:
        mode: ``"split"`` or ``"argmax"`` (`Settings.assign`).
        config: the model's `GFSAMConfig` (split pools features and prompts as it does).
        target: the target encoding the predictions were made on.
        predictions: label -> prediction, in config order (labels with shots only).
        references: label -> the decoded shots the prediction used.
        shas: label -> the blob shas of those shots (the threshold cache key).
        order: every label of the config, in config order (argmax tie-break).
        model_key: identifies the weights (`Model.key`).
        cache: where thresholds are kept.
        offsets: issue 19's hook (`worker.quality`): label -> added to its default threshold
            (higher = stricter); absent labels keep the default.

    Returns:
        `Assignment`: label -> accepted instances (bool [H, W] original size, pairwise
        disjoint, each with its score), and the rejected candidates (split only).
    """
    if mode == "split":
        params = SplitParams()
        thresholds = {
            label: cache.get(
                (model_key, *shas[label]),
                partial(calibrate_threshold, references[label], config, params),
            )
            for label in predictions
        }
        thresholds = with_offsets(thresholds, offsets)
        return assign_split(
            target, predictions, references, cfg=config, params=params, thresholds=thresholds
        )
    return assign_argmax(predictions, order)


# --- issue 19 hook (per-project tuning, `worker.quality`): kept apart from the rules above ------


def default_thresholds(
    config: GFSAMConfig,
    references: Mapping[str, Sequence[Reference]],
    shas: Mapping[str, Sequence[str]],
    *,
    model_key: str,
    cache: ThresholdCache = THRESHOLDS,
) -> dict[str, float]:
    """label -> the threshold `assign` uses for it before any offset (same cache, same key)."""
    params = SplitParams()
    return {
        label: cache.get(
            (model_key, *shas[label]), partial(calibrate_threshold, refs, config, params)
        )
        for label, refs in references.items()
    }


def with_offsets(
    thresholds: Mapping[str, float], offsets: Mapping[str, float] | None
) -> dict[str, float]:
    """label -> threshold + its offset (0 for a label without one)."""
    extra = offsets or {}
    return {label: t + float(extra.get(label, 0.0)) for label, t in thresholds.items()}
