"""What one task's assignment says about the work it leaves (issue 19's task score).

`task_features` reads an assignment (`gfsam.assign.Assignment`: accepted instances and the
rejected candidates) and returns plain numbers known at prediction time, without any truth:
areas as shares of the image, instance scores, and similarity margins to the thresholds the
assignment used. `gfsam.calibrate` records them per scored task so that what ranks tasks by
the work they need can be measured (`python -m gfsam eval replay --calibrate`).

`task_estimate` is what a prediction's score is made of (and `region_estimate` each region's):
the expected IoU and the expected share of pixels to correct; the project's score map
(`gfsam.calibrate.ScoreMap`) turns them into the posted score.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

# A rejected candidate whose similarity is within NEAR_MARGIN below its label's floor (or
# above it: rejected for another reason) is a near miss, and NEAR_MISS of its unpainted pixels
# count as expected missed in `task_estimate` (`task_features`' ``cand_near`` is their share of
# the image). origin: the margin reasoned (issue 19's first feature study); the weight reasoned
# (that close a call is about as likely a missed instance as a look-alike); on coco128's tune
# half every weight from 0.5 to 8 ranked the tasks alike (the image-share score of 2026-12-04,
# see `task_estimate`).
NEAR_MARGIN = 0.05
NEAR_MISS = 0.5


def _union(masks: Sequence[np.ndarray], shape: tuple[int, ...]) -> np.ndarray:
    out = np.zeros(shape, dtype=bool)
    for m in masks:
        out |= np.asarray(m, dtype=bool)
    return out


def task_features(
    accepted: Sequence[Any],
    candidates: Sequence[Any],
    thresholds: Mapping[str, float],
    shape: tuple[int, ...],
) -> dict[str, float]:
    """Numbers about one task's assignment (no truth involved).

    Args:
        accepted: the accepted instances (``label``, ``mask`` bool [H, W], ``score``,
            ``similarity``). candidates: the rejected ones (same fields).
        thresholds: label -> the presence floor used. shape: (H, W).

    Returns:
        ``painted`` / ``rejected``: shares of the image painted / covered by candidates and
        not painted; ``n_painted``, ``n_rejected``; ``score_mean``, ``score_min``,
        ``score_area`` (area-weighted mean score; 0 when nothing is painted); ``margin_min``
        (lowest similarity minus threshold among accepted instances, 0 when none or
        undefined), ``cand_margin_max`` (highest among candidates: the closest call; -1 when
        none), ``cand_near`` (share of the image covered by candidates within `NEAR_MARGIN`
        below their threshold, or above it).
    """
    size = float(max(1, int(np.prod(shape))))
    painted = _union([i.mask for i in accepted], shape)
    rejected = _union([c.mask for c in candidates], shape) & ~painted
    areas = np.array([np.count_nonzero(i.mask) for i in accepted], dtype=np.float64)
    scores = np.array([float(i.score) for i in accepted], dtype=np.float64)

    def margin(inst: Any) -> float:
        sim = float(getattr(inst, "similarity", math.nan))
        thr = thresholds.get(inst.label)
        return sim - thr if thr is not None and math.isfinite(sim) else math.nan

    acc_m = [m for m in map(margin, accepted) if math.isfinite(m)]
    cand = [(margin(c), c) for c in candidates]
    cand_m = [m for m, _ in cand if math.isfinite(m)]
    near = _union([c.mask for m, c in cand if math.isfinite(m) and m > -NEAR_MARGIN], shape)
    near &= ~painted
    return {
        "painted": float(painted.sum()) / size,
        "rejected": float(rejected.sum()) / size,
        "n_painted": float(len(accepted)),
        "n_rejected": float(len(candidates)),
        "score_mean": float(scores.mean()) if len(scores) else 0.0,
        "score_min": float(scores.min()) if len(scores) else 0.0,
        "score_area": float((scores * areas).sum() / areas.sum()) if areas.sum() else 0.0,
        "margin_min": min(acc_m) if acc_m else 0.0,
        "cand_margin_max": max(cand_m) if cand_m else -1.0,
        "cand_near": float(near.sum()) / size,
    }


def near_miss_pixels(candidates: Sequence[Any], painted: np.ndarray) -> int:
    """Unpainted pixels of the near-miss candidates (see `NEAR_MARGIN`).

    Args:
        candidates: rejected instances (``mask`` bool [H, W], ``similarity``, ``floor``; a
            candidate without a finite margin is not a near miss). painted: bool [H, W].
    """
    return _unpainted(_near_masks(candidates), painted)


def _unpainted(masks: Sequence[np.ndarray], painted: np.ndarray) -> int:
    """Pixels of the union of `masks` (bool [H, W] each) outside `painted` (bool [H, W])."""
    if not masks:
        return 0
    return int(np.count_nonzero(_union(masks, painted.shape) & ~painted))


def _near_masks(candidates: Sequence[Any]) -> list[np.ndarray]:
    return [
        c.mask
        for c in candidates
        if math.isfinite(margin := float(c.similarity) - float(getattr(c, "floor", math.nan)))
        and margin > -NEAR_MARGIN
    ]


@dataclass(frozen=True)
class TaskEstimate:
    """What a task's (or a region's) assignment says, before the project's calibration.

    Attributes:
        iou: the expected IoU of what is posted: the painted regions' area x score, over their
            area plus `NEAR_MISS` x the near-miss candidates' unpainted pixels (what may be
            missing); 1 when nothing is painted and no candidate came near (nothing
            expected), 0 when nothing is painted but a candidate came near (a likely miss).
        work: the share of the image expected to be painted wrong or missed: the regions'
            area x (1 - score) plus `NEAR_MISS` x the near misses' unpainted pixels, over the
            image's area (the pixels a person is expected to correct).
    """

    iou: float
    work: float


def region_estimate(mask: np.ndarray, score: float, shape: tuple[int, ...]) -> TaskEstimate:
    """A region's estimate: what `task_estimate` gives a task whose only region it is."""
    return task_estimate([(mask, score)], shape)


def task_estimate(
    regions: Sequence[tuple[np.ndarray, float]],
    shape: tuple[int, ...],
    candidates: Sequence[Any] = (),
) -> TaskEstimate:
    """The expected IoU and the expected share of pixels to correct of one task (issue 19).

    A region's matching score (`gfsam.assign.Instance.score`, in [0, 1]) says how sure the
    assignment was, so area x score of it is expected right and area x (1 - score) wrong;
    misses (objects nobody painted) are invisible except through the rejected candidates just
    below their floor (`near_miss_pixels`), of which `NEAR_MISS` count as missed. The project's
    score map (`gfsam.calibrate.ScoreMap`) turns the pair into the posted score.

    Why both (issue 19): a person reviewing the least confident tasks first wants the lowest
    expected IoU first, and also the tasks with the most to correct; the two part on small
    objects (a small object painted loosely is a low IoU but little work). The project's score
    map fits the IoU on ``iou x (1 - work)`` (`gfsam.calibrate.ScoreMap.raw`). History, on the
    oracle replay (`python -m gfsam eval replay --calibrate`), Spearman with the task IoU /
    share of the correction pixels in the lowest-scored fifth of the tasks: the first score,
    the mean region score (no area), -0.18 / 0.65 on coco128's tune half (raw values); then
    1 - `work` (2026-12-03/04), posted: tune easy 0.47 / 0.74 and harsh 0.41 / 0.60, but
    Spearman -0.09 to 0.39 on the report half and FSS-1000 (small objects above large ones);
    the raw value ``iou x (1 - work)^g`` was chosen on tune (2026-12-05, per-task dumps; the g
    with the largest min(Spearman / 0.5, share / 0.4) over tune's easy and harsh runs): g = 0
    (the expected IoU alone) 1.027, 0.5 1.022, 1 1.030 (easy 0.77 / 0.68, harsh 0.51 / 0.71),
    2 0.994, 4 0.952; a two-tier form (the heaviest fifth by `work` first, then by `iou`)
    reached at most 1.028.

    Args:
        regions: (bool [H, W] mask, score in [0, 1]) per painted region. shape: (H, W).
        candidates: the assignment's rejected candidates (`near_miss_pixels`); none: the
            regions alone (a region's estimate, `region_estimate`).
    """
    size = float(max(1, int(np.prod(shape))))
    right = wrong = shown = 0.0
    for m, s in regions:
        area, p = float(np.count_nonzero(m)), float(np.clip(s, 0.0, 1.0))
        shown += area  # summed, not the union: overlapping regions (cleaned geometry) cannot
        right += area * p  # lift the expected IoU above their scores
        wrong += area * (1.0 - p)
    near = _near_masks(candidates)
    missed = 0.0
    if near:  # the painted union only when some candidate came near (`near_miss_pixels`)
        missed = NEAR_MISS * _unpainted(near, _union([m for m, _ in regions], shape))
    work = float(np.clip((wrong + missed) / size, 0.0, 1.0))
    if shown == 0.0:
        return TaskEstimate(0.0 if missed else 1.0, work)
    return TaskEstimate(float(np.clip(right / (shown + missed), 0.0, 1.0)), work)
