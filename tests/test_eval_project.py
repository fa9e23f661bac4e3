"""`eval project`'s numbers on hand-checkable inputs, and the modes it scores."""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.assign import Assignment, Instance
from gfsam.eval.project import ASSIGNS, ProjectScore, _assign

NAMES = {1: "a", 3: "c"}


def rows(*spans: tuple[int, int]) -> np.ndarray:
    m = np.zeros((10, 10), dtype=bool)
    for a, b in spans:
        m[a:b] = True
    return m


def inst(label: str, mask: np.ndarray) -> Instance:
    return Instance(label, mask, 1.0, 1.0, 1.0, label)


def labels() -> np.ndarray:
    """Rows 0-3 seen class 1, rows 4-5 unseen class 2, rows 6-9 background; class 3 absent."""
    lab = np.zeros((10, 10), dtype=np.int32)
    lab[0:4] = 1
    lab[4:6] = 2
    return lab


def scene() -> Assignment:
    return Assignment(
        accepted={"a": [inst("a", rows((0, 2), (6, 7)))], "c": [inst("c", rows((4, 5)))]},
        candidates=[inst("a", rows((2, 4))), inst("c", rows((5, 6)))],
    )


def test_numbers_by_hand() -> None:
    score = ProjectScore([1, 3])
    score.add(scene(), NAMES, labels())
    n = score.numbers()
    # class 1: I 20, U 40 + 10 (background row painted) = 50; class 3 is absent from every
    # target: out of the fixed class set whatever is painted as it
    assert n["seen_miou"] == pytest.approx(40.0) and n["classes_scored"] == 1
    assert n["seen_recall"] == pytest.approx(0.5)
    assert n["false_paint"] == 1.0  # (image, c) absent and painted
    assert n["background_paint"] == pytest.approx(0.25)  # 10 of 40
    assert n["unseen_paint"] == pytest.approx(0.5)  # 10 of 20
    assert n["contamination"] == pytest.approx(20 / 60, abs=1e-4)  # unseen + background
    assert n["reject_seen"] == pytest.approx(0.5)  # rows 2-3 proposed, left unpainted
    assert n["reject_unseen"] == pytest.approx(0.5)  # row 5
    assert (n["proposals_seen"], n["proposals_unseen"]) == (2, 2)
    # FB-IoU: any label 20 / 60 (rows 0, 1, 4, 6 painted vs rows 0-3), the rest 40 / 80
    assert n["fbiou"] == pytest.approx(100 * (1 / 3 + 1 / 2) / 2, abs=0.01)
    # a second image without class 3 where nothing is painted: one of two pairs painted
    score.add(Assignment(accepted={"a": [], "c": []}), NAMES, labels())
    assert score.numbers()["false_paint"] == pytest.approx(0.5)


def test_ignore_pixels_do_not_count() -> None:
    lab = labels()
    lab[6:] = 255
    score = ProjectScore([1, 3])
    score.add(scene(), NAMES, lab)
    n = score.numbers()
    assert n["background_paint"] is None  # no background pixel left
    assert n["contamination"] == pytest.approx(0.5)  # unseen only: 10 of 20


def test_doing_nothing_scores_zero_and_none_where_undefined() -> None:
    score = ProjectScore([1, 3])
    score.add(_assign("none", None, {}, {}, {}, None, set(), None), NAMES, labels())  # type: ignore[arg-type]
    n = score.numbers()
    assert n["seen_miou"] == 0.0 and n["seen_recall"] == 0.0 and n["false_paint"] == 0.0
    assert n["contamination"] == 0.0 and n["reject_seen"] is None
    assert ProjectScore([1]).numbers()["seen_miou"] is None  # no target: nothing to average


def test_the_fixed_class_set_is_the_same_for_every_mode() -> None:
    """A mode that paints an absent class no longer changes which classes are averaged."""
    quiet, loud = ProjectScore([1, 3]), ProjectScore([1, 3])
    quiet.add(Assignment(accepted={"a": [inst("a", rows((0, 4)))]}), NAMES, labels())
    loud.add(
        Assignment(accepted={"a": [inst("a", rows((0, 4)))], "c": [inst("c", rows((8, 9)))]}),
        NAMES,
        labels(),
    )
    assert quiet.numbers()["seen_miou"] == loud.numbers()["seen_miou"] == 100.0
    assert (quiet.numbers()["false_paint"], loud.numbers()["false_paint"]) == (0.0, 1.0)


def test_present_is_argmax_over_the_labels_in_the_image() -> None:
    from tests.test_assign import _pred  # the hand-made Prediction of the assign tests

    whole = np.ones((8, 8), dtype=bool)
    preds = {"a": _pred(whole, 0.2), "c": _pred(whole, 0.9)}
    argmax = _assign("argmax", None, preds, {}, {}, None, {"a"}, None)  # type: ignore[arg-type]
    present = _assign("present", None, preds, {}, {}, None, {"a"}, None)  # type: ignore[arg-type]
    assert argmax.label_masks().keys() == {"c"}
    assert present.label_masks().keys() == {"a"} and present.accepted["c"] == []
    assert ASSIGNS == ("argmax", "label-gate", "split", "present")
    with pytest.raises(ValueError, match="unknown assignment"):
        _assign("max", None, preds, {}, {}, None, set(), None)  # type: ignore[arg-type]
