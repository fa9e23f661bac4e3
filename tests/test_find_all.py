"""`gfsam.find_all.find_similar` ("find all like this") and its harness, on oracle encoders.

Scenes are framed label maps: class 1 = the clicked kind, class 2 = its look-alike (oracle
confuse 0.6: cosine about 0.5 to class 1), 0 = background. The oracle SAM answers the component
under a prompt, so every miss or extra below is the find-all logic's own.
"""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.eval.find_all import click_cases, deepest_pixel, score_click
from gfsam.eval.oracle import OracleDino, OracleParams, OracleSam
from gfsam.find_all import FindAllParams, Found, _place, find_similar
from gfsam.types import FRAME


def square(labels: np.ndarray, x: int, y: int, side: int, cls: int) -> None:
    labels[y : y + side, x : x + side] = cls


def scene(*, touching: bool = False, lookalike: bool = True) -> np.ndarray:
    """int32 [S, S]: three class-1 objects (the first is clicked), maybe a look-alike."""
    labels = np.zeros((FRAME, FRAME), dtype=np.int32)
    square(labels, 100, 100, 160, 1)  # clicked
    square(labels, 600, 120, 140, 1)
    if touching:  # a third object glued to the second: one token region, two objects
        square(labels, 740, 120, 140, 1)
        labels[120:260, 739] = 0  # one pixel column apart: two components
    else:
        square(labels, 300, 650, 150, 1)
    if lookalike:
        square(labels, 700, 650, 170, 2)
    return labels


class Oracle:
    def __init__(self, labels: np.ndarray, params: OracleParams) -> None:
        self.sam = OracleSam(params)
        self.embedding = self.sam.embed(labels)
        self.tokens = OracleDino(params).tokens(labels, "scene")
        self.labels = labels
        self.calls = 0

    def click(self, x: float, y: float) -> np.ndarray:
        mask, _, _ = self.sam.decode_prompts(self.embedding, np.array([[x, y]]), None)
        return mask

    def decode(self, points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self.calls += 1
        return self.sam.decode_boxes(self.embedding, points, boxes)


def objects(labels: np.ndarray, cls: int) -> list[np.ndarray]:
    return [inst for c, inst in click_cases(labels) if c == cls][0]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


PARAMS = OracleParams(sigma=0.1, rho=0.6, class_cos=0.8, seed=3)


def test_finds_the_other_instances_and_not_the_lookalike() -> None:
    labels = scene()
    oracle = Oracle(labels, PARAMS)
    result = find_similar(oracle.tokens, oracle.click(180, 180), oracle.decode)
    ones = objects(labels, 1)
    found = [f.mask for f in result.found]
    assert len(found) == 2
    for inst in ones[1:]:  # the two unclicked instances, one region each
        assert max(iou(inst, f) for f in found) > 0.95
    lookalike = labels == 2
    assert not any((f & lookalike).any() for f in found)
    assert result.decodes <= 6 and oracle.calls <= 2  # a few per object, not 128: batched


def test_touching_objects_are_found_in_a_second_round() -> None:
    labels = scene(touching=True, lookalike=False)
    oracle = Oracle(labels, PARAMS)
    result = find_similar(oracle.tokens, oracle.click(180, 180), oracle.decode)
    found = [f.mask for f in result.found]
    ones = objects(labels, 1)
    assert len(ones) == 3
    for inst in ones[1:]:
        assert max(iou(inst, f) for f in found) > 0.95
    assert result.rounds >= 2  # the glued pair is one token region; its leftover seeds round 2


def test_the_decode_budget_is_kept() -> None:
    labels = np.zeros((FRAME, FRAME), dtype=np.int32)
    for k in range(16):  # 16 separate objects of one class
        square(labels, 40 + 240 * (k % 4), 40 + 240 * (k // 4), 120, 1)
    oracle = Oracle(labels, PARAMS)
    params = FindAllParams(max_decodes=5)
    result = find_similar(oracle.tokens, oracle.click(100, 100), oracle.decode, params=params)
    assert result.decodes == 5 and len(result.found) == 5
    unlimited = find_similar(oracle.tokens, oracle.click(100, 100), oracle.decode)
    assert len(unlimited.found) == 10  # the default budget: 10 decodes


def test_a_part_is_replaced_by_the_whole_and_a_part_never_added() -> None:
    whole = np.zeros((8, 8), dtype=bool)
    whole[1:7, 1:7] = True
    part = np.zeros_like(whole)
    part[1:4, 1:7] = True
    other = np.zeros_like(whole)
    other[7, :] = True
    found = _place([Found(part, 0.9, 1.0)], Found(whole, 0.8, 1.0), 0.5)
    assert [f.mask is whole for f in found] == [True]
    assert _place(found, Found(part, 0.9, 1.0), 0.5) == found  # mostly inside: dropped
    assert len(_place(found, Found(other, 0.9, 1.0), 0.5)) == 2


def test_a_click_on_nothing_is_refused() -> None:
    oracle = Oracle(scene(), PARAMS)
    with pytest.raises(ValueError, match="covers no cell"):
        find_similar(oracle.tokens, np.zeros((FRAME, FRAME), bool), oracle.decode)


def test_harness_scores_by_hand() -> None:
    labels = scene()
    ones = objects(labels, 1)
    assert [int(m.sum()) for m in ones] == [160 * 160, 150 * 150, 140 * 140]  # largest first
    x, y = deepest_pixel(ones[0])[0]
    assert 170 <= x <= 190 and 170 <= y <= 190
    wrong = labels == 2
    # asked 2 (the unclicked), found one of them, plus the look-alike: 1 hit, 1 good of 2
    assert score_click([ones[1], wrong], ones) == (2, 1, 1, 2)
    assert score_click([], ones) == (2, 0, 0, 0)  # doing nothing
