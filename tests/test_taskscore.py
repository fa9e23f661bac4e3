"""gfsam.taskscore on hand-checkable assignments."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from gfsam.taskscore import (
    NEAR_MISS,
    TaskEstimate,
    near_miss_pixels,
    region_estimate,
    task_estimate,
    task_features,
)


@dataclass
class Inst:
    label: str
    mask: np.ndarray
    score: float
    similarity: float


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((10, 10), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_features_by_hand() -> None:
    acc = [Inst("a", _box(0, 2, 0, 5), 0.8, 0.7), Inst("b", _box(5, 10, 0, 2), 0.4, 0.52)]
    cand = [Inst("a", _box(0, 4, 0, 5), 0.3, 0.48), Inst("b", _box(8, 10, 8, 10), 0.1, 0.1)]
    f = task_features(acc, cand, {"a": 0.5, "b": 0.5}, (10, 10))
    assert f["painted"] == pytest.approx(0.2) and f["n_painted"] == 2
    assert f["rejected"] == pytest.approx(0.14)  # 10 + 4 pixels outside what is painted
    assert f["score_mean"] == pytest.approx(0.6) and f["score_min"] == pytest.approx(0.4)
    assert f["score_area"] == pytest.approx(0.6)  # two instances of 10 pixels each
    assert f["margin_min"] == pytest.approx(0.02) and f["cand_margin_max"] == pytest.approx(-0.02)
    assert f["cand_near"] == pytest.approx(0.10)  # only the -0.02 candidate is a close call


def test_features_of_an_empty_assignment() -> None:
    f = task_features([], [], {}, (4, 4))
    assert f["painted"] == 0 and f["score_mean"] == 0 and f["cand_margin_max"] == -1.0
    nan = [Inst("a", _box(0, 2, 0, 2), 0.5, float("nan"))]  # argmax: no similarity
    assert task_features(nan, [], {"a": 0.5}, (10, 10))["margin_min"] == 0.0


@dataclass
class Cand:
    mask: np.ndarray
    similarity: float
    floor: float


def test_near_misses_and_the_estimate_by_hand() -> None:
    painted = _box(0, 2, 0, 5)  # 10 pixels, one region scored 0.8
    cands = [
        Cand(_box(0, 4, 0, 5), 0.48, 0.5),  # 0.02 below its floor: 10 unpainted pixels count
        Cand(_box(8, 10, 8, 10), 0.40, 0.5),  # 0.10 below: no
        Cand(_box(5, 6, 0, 10), 0.70, 0.5),  # above its floor (rejected for another reason)
        Cand(_box(9, 10, 0, 10), float("nan"), 0.5),  # no similarity (argmax): no
        Cand(_box(7, 8, 0, 10), 0.7, float("nan")),  # no floor: no
    ]
    assert near_miss_pixels(cands, painted) == 20
    assert near_miss_pixels(cands[1:2], painted) == 0
    assert near_miss_pixels([], painted) == 0
    regions = [(painted, 0.8)]
    alone = task_estimate(regions, (10, 10))
    assert alone.iou == pytest.approx(0.8)  # 8 of 10 painted pixels expected right
    assert alone.work == pytest.approx(10 * 0.2 / 100)
    near = task_estimate(regions, (10, 10), cands)
    assert near.iou == pytest.approx(8 / (10 + NEAR_MISS * 20))  # the near misses may be missing
    assert near.work == pytest.approx((10 * 0.2 + NEAR_MISS * 20) / 100)
    assert task_estimate([], (10, 10), cands[1:2]) == TaskEstimate(1.0, 0.0)  # nothing expected
    only_near = task_estimate([], (10, 10), cands[:1])  # nothing painted, a likely miss
    assert only_near.iou == 0.0 and only_near.work == pytest.approx(NEAR_MISS * 20 / 100)
    assert region_estimate(painted, 0.8, (10, 10)) == alone


def test_estimate_ranks_by_iou_and_by_work_apart() -> None:
    """A small region painted loosely has the lower expected IoU, a large one painted fairly
    well the larger expected work: the two numbers a score map combines (`gfsam.calibrate`)."""
    small = task_estimate([(_box(0, 1, 0, 2), 0.5)], (10, 10))  # 2 pixels at 0.5
    large = task_estimate([(_box(0, 6, 0, 10), 0.8)], (10, 10))  # 60 pixels at 0.8
    assert small.iou < large.iou and small.work < large.work
    # overlapping regions (cleaned geometry can make two labels meet): counted by area, so the
    # expected IoU stays their score instead of doubling over the union
    twice = task_estimate([(painted := _box(0, 2, 0, 5), 0.6), (painted, 0.6)], (10, 10))
    assert twice.iou == pytest.approx(0.6) and twice.work == pytest.approx(2 * 10 * 0.4 / 100)
