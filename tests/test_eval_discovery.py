"""Discovery metrics of `eval project --discover` and the oracle SAM's box + points prompts."""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.eval.discovery import DiscoveryScore, ari, mask_iou, nmi, unseen_components
from gfsam.eval.oracle import OracleSam

S = 100  # any square frame works for the metrics


def box(x0: int, y0: int, x1: int, y1: int, side: int = S) -> np.ndarray:
    m = np.zeros((side, side), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_nmi_known_values() -> None:
    assert nmi([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)  # same partition, other ids
    assert nmi([0, 1, 0, 1], [5, 5, 7, 7]) == pytest.approx(0.0)  # independent
    assert nmi([3, 3, 3], [1, 1, 1]) == 1.0
    assert nmi([0, 1], [1, 1]) == 0.0  # one side constant
    assert nmi([], []) is None
    # two groups for one class: I = H(class) = ln 2, H(group) = 1.5 ln 2 -> 2 / 2.5
    assert nmi([0, 0, 1, 2], [1, 1, 2, 2]) == pytest.approx(0.8)


def test_unseen_components_split_instances_and_skip_seen_background_ignore() -> None:
    lab = np.zeros((S, S), dtype=np.int32)
    lab[0:10, 0:10] = 2
    lab[50:60, 50:60] = 2
    lab[20:30, 20:30] = 1  # seen
    lab[80:90, 0:10] = 255
    masks, classes = unseen_components(lab, seen=[1])
    assert classes.tolist() == [2, 2]
    assert [int(m.sum()) for m in masks] == [100, 100]
    empty, none = unseen_components(np.zeros((S, S), dtype=np.int32), seen=[1])
    assert empty.shape == (0, S, S) and none.shape == (0,)


def test_mask_iou_pairs() -> None:
    iou = mask_iou(np.stack([box(0, 0, 10, 10)]), np.stack([box(0, 0, 10, 5), box(50, 50, 60, 60)]))
    assert iou.tolist() == [[0.5, 0.0]]


def test_recall_precision_and_per_image() -> None:
    big_a, big_b, small = box(0, 0, 20, 20), box(50, 50, 70, 70), box(90, 90, 95, 95)
    comps, classes = np.stack([big_a, big_b, small]), np.array([2, 4, 2])
    cands = np.stack([box(0, 0, 20, 14), small, box(30, 30, 40, 40)])  # IoU 0.7, 1, 0
    score = DiscoveryScore()
    score.add(cands, [0, 0, 1], comps, classes)
    score.add(np.zeros((0, S, S), dtype=bool), [], comps[:0], classes[:0])  # nothing there
    n = score.numbers()
    # small (25 px) is under 1 % of 10000 px: not an object for recall, a hit for precision
    assert n["candidate_recall"] == pytest.approx(1 / 2)
    assert n["candidate_precision"] == pytest.approx(2 / 3, abs=1e-4)
    assert n["candidates_per_image"] == pytest.approx(3 / 2)
    assert n["group_nmi"] == 1.0  # both hits: group 0, class 2 (NMI flatters: one block)
    assert n["group_ari"] is None  # both partitions one block: ARI says nothing
    assert n["singleton_ari"] == 0.0 and n["classes_multi_hit"] == 1
    assert n["candidate_iou_median"] == pytest.approx((0.7 + 1.0) / 2)
    empty = DiscoveryScore().numbers()
    assert empty["candidate_recall"] is None and empty["candidate_iou_median"] is None
    assert empty["group_ari"] is None and empty["classes_multi_hit"] == 0


def test_ari_known_values_and_the_singleton_baseline() -> None:
    assert ari([0, 0, 1, 1], [5, 5, 7, 7]) == pytest.approx(1.0)
    assert ari([0, 1, 2, 3], [5, 5, 7, 7]) == pytest.approx(0.0)  # no grouping: 0, not 0.8
    assert nmi([0, 1, 2, 3], [5, 5, 7, 7]) == pytest.approx(2 / 3)  # where NMI flatters
    # pairs: index 1 (the 1-1 pair), groups 1, classes 2, of 6: expected 1/3, max 1.5
    assert ari([0, 0, 1, 2], [1, 1, 2, 2]) == pytest.approx((1 - 1 / 3) / (1.5 - 1 / 3))
    assert ari([0, 0, 0, 1], [1, 1, 2, 2]) == pytest.approx(0.0)
    assert ari([0, 1, 2], [4, 5, 6]) is None  # every class hit once: undefined
    assert ari([0], [1]) is None


def test_grouping_scores_against_no_grouping() -> None:
    """Four hits of two classes: a perfect grouping scores ARI 1, singletons 0."""
    comps = np.stack(
        [box(0, 0, 20, 20), box(30, 30, 50, 50), box(60, 0, 80, 20), box(0, 60, 20, 80)]
    )
    classes = np.array([2, 2, 4, 4])
    score = DiscoveryScore()
    score.add(comps.copy(), [7, 7, 9, 9], comps, classes)
    n = score.numbers()
    assert (n["group_ari"], n["singleton_ari"]) == (1.0, 0.0)
    assert n["group_nmi"] == 1.0 and n["singleton_nmi"] == pytest.approx(2 / 3, abs=1e-4)
    assert n["classes_multi_hit"] == 2 and n["candidate_iou_median"] == 1.0


def test_oracle_sam_answers_points_and_box() -> None:
    sam = OracleSam()
    lab = np.zeros((1024, 1024), dtype=np.int32)
    lab[100:300, 100:300] = 1
    lab[100:300, 400:600] = 2
    emb = sam.embed(lab)
    mask, score, _ = sam.decode_prompts(emb, np.array([[150, 150], [200, 200]]), None, None)
    assert np.array_equal(mask, lab == 1) and score == 1.0
    # points straddle two objects: the majority wins, the score says half of them disagree
    pts = np.array([[150, 150], [200, 200], [450, 150], [500, 200]], dtype=np.float32)
    mask, score, _ = sam.decode_prompts(emb, pts, None, np.array([100, 100, 300, 300]))
    assert np.array_equal(mask, lab == 1) and score == pytest.approx(0.5)
    # a box cutting the object in half: score halves
    _, score, _ = sam.decode_prompts(emb, pts[:1], None, np.array([100, 100, 200, 300]))
    assert score == pytest.approx(0.5)
    mask, _, _ = sam.decode_prompts(emb, None, None, np.array([390, 90, 610, 310]))
    assert np.array_equal(mask, lab == 2)  # box only: the component filling most of it
    with pytest.raises(ValueError):
        sam.decode_prompts(emb, None, None, None)
