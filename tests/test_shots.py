"""gfsam.shots: the shot policy shared by the worker and the evaluation harness's replay."""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.shots import ShotPolicy, becomes_shot, mask_iou, trim_shots

POLICY = ShotPolicy(max_shots=3, unchanged_iou=0.9)


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((10, 10), dtype=bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_mask_iou() -> None:
    a = np.zeros((4, 4), bool)
    assert mask_iou(a, a) == 1.0  # both empty
    assert mask_iou(box(0, 2, 0, 2), box(5, 7, 5, 7)) == 0.0
    assert mask_iou(box(0, 2, 0, 3), box(0, 2, 1, 4)) == pytest.approx(4 / 8)
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(a, np.zeros((4, 5), bool))


def test_the_first_mask_of_a_label_is_its_seed() -> None:
    assert becomes_shot(box(0, 5, 0, 5), has_shots=False, predicted=None, policy=POLICY)
    # even when our (empty-label) prediction matched it: a label needs a reference
    same = box(0, 5, 0, 5)
    assert becomes_shot(same, has_shots=False, predicted=same, policy=POLICY)


def test_an_empty_mask_is_never_a_shot() -> None:
    empty = np.zeros((10, 10), bool)
    assert not becomes_shot(empty, has_shots=False, predicted=None, policy=POLICY)


def test_accepted_prediction_is_no_shot_and_a_correction_is() -> None:
    mask = box(0, 10, 0, 10)  # 100 px
    near = box(0, 10, 0, 9)  # IoU 0.9 = the threshold: accepted
    far = box(0, 10, 0, 8)  # IoU 0.8: corrected
    assert not becomes_shot(mask, has_shots=True, predicted=near, policy=POLICY)
    assert becomes_shot(mask, has_shots=True, predicted=far, policy=POLICY)
    # we predicted nothing for the image, or a mask of another size: a correction
    assert becomes_shot(mask, has_shots=True, predicted=None, policy=POLICY)
    assert becomes_shot(mask, has_shots=True, predicted=np.ones((4, 4), bool), policy=POLICY)


def test_trim_keeps_the_seed_and_drops_the_oldest_corrections() -> None:
    assert trim_shots(["seed", "c1", "c2", "c3", "c4"], 3) == ["seed", "c3", "c4"]
    assert trim_shots(["seed", "c1"], 3) == ["seed", "c1"]
    assert trim_shots(["seed", "c1"], 1) == ["seed"]
    with pytest.raises(ValueError):
        trim_shots(["seed"], 0)


def test_policy_validates_its_values() -> None:
    with pytest.raises(ValueError):
        ShotPolicy(max_shots=0)
    with pytest.raises(ValueError):
        ShotPolicy(unchanged_iou=1.5)
