"""gfsam.assign on hand-checkable inputs (tiny tokens, blobs in the 1024 frame)."""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.assign import (
    SplitParams,
    assign_argmax,
    assign_label_gate,
    assign_mixed,
    assign_split,
    calibrate_label,
    calibrate_threshold,
    class_similarity,
    instance_proposals,
    mask_consistency,
    paint_exclusive,
    shot_prototypes,
    split_match,
)
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig, Segmentation

CFG = GFSAMConfig(token_axis_norm=False)  # plain tokens: cosines checkable by hand
E = np.eye(4, dtype=np.float32)


def _pred(
    mask: np.ndarray, score: float = 0.5, prompts: tuple[tuple[int, int], ...] = ()
) -> Prediction:
    xy = np.array(prompts, dtype=np.int64).reshape(-1, 2)
    cells = xy * GRID // FRAME
    seg = Segmentation(
        mask=mask,
        points_xy=cells,
        prompt_xy=xy,
        cluster=np.zeros(len(xy), dtype=np.int64),
        positive=np.ones(len(xy), dtype=bool),
        consistent=np.ones(len(xy), dtype=bool),
        state=np.ones(len(xy), dtype=np.int64),
        cls_score=np.zeros(len(xy), dtype=np.float32),
        fallback=False,
        abstained=not mask.any(),
        maps={"filtered": np.full((GRID, GRID), 0.8, dtype=np.float32)},
        score=score,
    )
    return Prediction(mask.copy(), score, not mask.any(), False, seg)


def _box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((FRAME, FRAME), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def _cells(box: np.ndarray) -> np.ndarray:
    """[T] bool: cells whose centre pixel lies in the box."""
    centre = ((np.arange(GRID) + 0.5) * FRAME / GRID).astype(int)
    return box[np.ix_(centre, centre)].ravel()


def _reference(obj: np.ndarray, bg: np.ndarray = E[1]) -> Reference:
    fg = np.zeros(TOKENS, dtype=np.float32)
    fg[:200] = 1.0
    tokens = np.tile(bg, (TOKENS, 1))
    tokens[:200] = obj
    return Reference(tokens, fg, 1 - fg, 1000, (FRAME, FRAME), "t")


def test_paint_exclusive_lowest_cost_wins_ties_to_earlier() -> None:
    a, b = np.array([[1, 1, 0]], dtype=bool), np.array([[0, 1, 1]], dtype=bool)
    out = paint_exclusive([a, b], [0.5, 0.1])
    assert out[0].tolist() == [[True, False, False]] and out[1].tolist() == [[False, True, True]]
    tie = paint_exclusive([a, b], [0.3, 0.3])
    assert tie[0].tolist() == [[True, True, False]] and tie[1].tolist() == [[False, False, True]]


def test_assign_argmax_is_the_worker_rule() -> None:
    a, b = _box(0, 100, 0, 100), _box(50, 150, 50, 150)
    preds = {"A": _pred(a, 0.4), "B": _pred(b, 0.9), "C": _pred(np.zeros_like(a), 0.0)}
    masks = assign_argmax(preds, ["A", "B", "C"]).label_masks()
    assert set(masks) == {"A", "B"}  # the abstaining label contributes nothing
    assert masks["B"].sum() == b.sum() and masks["A"].sum() == a.sum() - 50 * 50
    tie = assign_argmax({"A": _pred(a, 0.5), "B": _pred(b, 0.5)}, ["B", "A"]).label_masks()
    assert tie["B"].sum() == b.sum()  # equal scores: config order


def test_similarity_and_consistency_by_hand() -> None:
    feats = np.array([[1, 0], [0.6, 0.8]], dtype=np.float32)
    protos = np.array([[1, 0], [0, 1]], dtype=np.float32)
    assert class_similarity(feats, protos).tolist() == pytest.approx([1.0, 0.8])
    masks = np.zeros((2, 4, 4), dtype=bool)
    masks[0, :2], masks[1, :, :1] = True, True
    label = np.zeros((4, 4), dtype=bool)
    label[0] = True
    assert mask_consistency(masks, label).tolist() == pytest.approx([0.5, 0.25])


def test_split_match_rejects_below_threshold_or_inconsistent() -> None:
    sim = np.array([[0.9, 0.2], [0.4, 0.3], [0.9, 0.1]])
    cons = np.array([[1.0, 0.0], [1.0, 1.0], [0.2, 0.0]])
    acc, rej = split_match([None] * 3, sim, cons, np.array([0.5, 0.5]), SplitParams())  # type: ignore[list-item]
    assert [(n, lab) for n, lab, _ in acc] == [(0, 0)]
    assert [(n, lab) for n, lab, _ in rej] == [(1, 0), (2, 0)]
    assert acc[0][2] == pytest.approx(0.1)


def test_one_shot_floor_is_a_step_above_its_background() -> None:
    obj = np.array([1, 0, 0, 0], dtype=np.float32)
    # interior cosine 1, background cosine 0: floor = 0 + presence_mix * (1 - 0)
    cal = calibrate_label([_reference(obj)], CFG, SplitParams(presence_mix=0.3))
    assert cal.floor == pytest.approx(0.3) and cal.background == pytest.approx(0.0)
    assert cal.match == pytest.approx(0.5)  # discovery keeps the halfway level
    assert calibrate_threshold([_reference(obj)], CFG, SplitParams(presence_mix=0.3)) == cal.floor
    # a background that looks half like the object lifts the floor with it
    half = np.array([0.6, 0.8, 0, 0], dtype=np.float32)
    lifted = calibrate_label([_reference(obj, bg=half)], CFG, SplitParams(presence_mix=0.3))
    assert lifted.floor == pytest.approx(0.6 + 0.3 * (1 - 0.6), abs=1e-5)


def test_calibration_keeps_the_prototypes_it_pooled() -> None:
    """The assignment and discovery read the shots' prototypes from the cached calibration:
    the same bits as pooling the shots again, recomputed for another pool_power."""
    a = np.array([1, 0, 0, 0], dtype=np.float32)
    close = np.array([0.9, 0, np.sqrt(1 - 0.81), 0], dtype=np.float32)
    refs = [_reference(a), _reference(close, bg=np.array([0, 1, 0, 0], np.float32))]
    cal = calibrate_label(refs, CFG, SplitParams())
    fresh = shot_prototypes(refs, CFG, SplitParams())
    assert cal.prototypes is not None and np.array_equal(cal.prototypes, fresh)
    assert cal.shot_prototypes(refs, CFG, SplitParams()) is cal.prototypes
    other = SplitParams(pool_power=3.0)
    assert np.array_equal(cal.shot_prototypes(refs, CFG, other), shot_prototypes(refs, CFG, other))
    assert cal == calibrate_label(refs, CFG, SplitParams())  # compared without the arrays


def test_a_tiny_shot_gets_the_tiny_floor_not_its_inflated_background() -> None:
    """A car on 0.1 % of its image: one cell, half car half road, so its 'background' looks
    like its prototype (the rule before issue 18 gave 0.9 here)."""
    mixed = np.array([0.6, 0.8, 0, 0], dtype=np.float32)
    tokens = np.tile(E[1], (TOKENS, 1))
    tokens[0] = mixed
    fg = np.zeros(TOKENS, dtype=np.float32)
    fg[0] = 0.55  # one interior cell, below min_interior_cells
    tiny = Reference(tokens, fg, 1 - fg, 300, (FRAME, FRAME), "t")
    cal = calibrate_label([tiny], CFG, SplitParams(tiny_floor=0.35))
    assert cal.floor == pytest.approx(0.35) and cal.tiny == 1 and "tiny" in cal.how
    assert cal.background == pytest.approx(0.8, abs=1e-5)  # what the old rule was fooled by


def test_two_shots_that_agree_lift_the_floor_to_their_cross_image_level() -> None:
    a = np.array([1, 0, 0, 0], dtype=np.float32)
    close = np.array([0.9, 0, np.sqrt(1 - 0.81), 0], dtype=np.float32)  # cosine 0.9
    params = SplitParams(presence_mix=0.3, cross_ratio=0.8)
    cal = calibrate_label([_reference(a), _reference(close)], CFG, params)
    assert cal.cross == pytest.approx(0.9) and cal.floor == pytest.approx(0.72)
    assert "agree" in cal.how and cal.shots == 2
    assert cal.match == pytest.approx(0.5)  # min(halfway 0.5, 0.9 - loo_slack)


def test_two_shots_far_apart_keep_the_one_shot_floor() -> None:
    """Two looks of one class (cosine 0): their distance says nothing about either look's
    spread, so the floor stays the per-shot one (not 0.8 * 0 = 0, not their halfway)."""
    a, b = np.array([1, 0, 0, 0], dtype=np.float32), np.array([0, 0, 1, 0], dtype=np.float32)
    params = SplitParams(presence_mix=0.3, cross_ratio=0.8)
    cal = calibrate_label([_reference(a), _reference(b)], CFG, params)
    assert cal.cross == pytest.approx(0.0, abs=1e-6) and cal.floor == pytest.approx(0.3)
    assert "far apart" in cal.how
    # an instance of either look passes; a region halfway between looks passes too (0.71)
    feats = np.array([[1, 0, 0, 0], [0, 0, 1, 0], [0, 1, 0, 0]], dtype=np.float32)
    sims = class_similarity(feats, np.stack([a, b]))
    assert (sims >= cal.floor).tolist() == [True, True, False]


def test_within_image_rule_rejects_what_scores_far_below_the_best_instance() -> None:
    """Label A's best instance scores 0.9; a look-alike at 0.5 passes the floor (0.3) but not
    0.7 of the way from A's background (0.1) to its best (0.1 + 0.7 * 0.8 = 0.66); an
    instance at 0.7 is kept. The rule is relative: scaling every cosine keeps the decision."""
    cons = np.ones((3, 1))
    params = SplitParams(within_ratio=0.7)
    for scale in (1.0, 0.6):
        sim = np.array([[0.9], [0.5], [0.7]]) * scale
        acc, rej = split_match(
            [None] * 3,  # type: ignore[list-item]
            sim,
            cons,
            np.array([0.3 * scale]),
            params,
            np.array([0.1 * scale]),
        )
        assert [n for n, _, _ in acc] == [0, 2] and [n for n, _, _ in rej] == [1]


def test_instance_proposals_are_components_with_their_evidence() -> None:
    mask = _box(0, 200, 0, 200) | _box(600, 700, 600, 700) | _box(1000, 1004, 0, 4)
    props = instance_proposals(
        "A", _pred(mask, prompts=((50, 50), (60, 60))), E[[0] * TOKENS], CFG, SplitParams()
    )
    assert [int(p.mask.sum()) for p in props] == [40000, 10000]  # the 16 px speck is dropped
    assert [p.points for p in props] == [2, 0]
    assert props[0].evidence == pytest.approx(0.8) and props[1].evidence == 0.0


@pytest.mark.parametrize("cv_threads", [1, 2])
def test_largest_components_are_scipys_in_scipys_order(cv_threads: int) -> None:
    """OpenCV numbers components its own way; the largest ones, in the order the scipy
    labelling gave proposals (area, then raster order of the first pixel), are the same
    pixel sets in the same order, on one thread or several, ties at the cut included; areas
    and boxes describe OpenCV's label image."""
    import cv2
    from scipy import ndimage

    from gfsam.assign.proposals import components, largest_components

    rng = np.random.default_rng(5)
    grid = np.zeros((FRAME, FRAME), dtype=bool)
    for y in range(40, FRAME - 60, 90):  # 126 equal squares: ties everywhere; in each row,
        for i, x in enumerate(range(30, FRAME - 60, 70)):  # tops alternate between rows y and
            grid[y + i % 2 : y + i % 2 + 40, x : x + 40] = True  # y + 1 (one block row for
            # OpenCV's 2 x 2 block scan, which numbers them left to right, not row y first)
    grid |= rng.random((FRAME, FRAME)) < 0.002  # and specks
    masks = [grid]
    for density, opening in [(0.3, 0), (0.55, 2), (0.6, 1), (0.7, 2), (0.0, 0), (1.0, 0)]:
        mask = rng.random((FRAME, FRAME)) < density
        masks.append(ndimage.binary_opening(mask, iterations=opening) if opening else mask)
    before = cv2.getNumThreads()
    cv2.setNumThreads(cv_threads)
    try:
        for mask in masks:
            ref, n = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
            ref_areas = np.bincount(ref.ravel(), minlength=n + 1)[1:]
            comp, areas, boxes = components(mask)
            assert comp.max() == n
            assert np.array_equal(areas, np.bincount(comp.ravel(), minlength=n + 1)[1:])
            slices = ndimage.find_objects(comp)
            assert [tuple(b) for b in boxes.tolist()] == [
                (s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices
            ]
            for min_area, limit in [(64, 32), (1, 7), (1600, 50)]:  # ties at the cut: 1600
                want = [k + 1 for k in np.argsort(-ref_areas, kind="stable")]
                want = [k for k in want if ref_areas[k - 1] >= min_area][:limit]
                got = largest_components(comp, areas, boxes, min_area, limit)
                assert len(got) == len(want)
                for k, r in zip(got, want, strict=True):
                    assert np.array_equal(comp == k, ref == r)
    finally:
        cv2.setNumThreads(before)


def test_component_masks_equal_the_full_frame_comparison() -> None:
    from scipy import ndimage

    from gfsam.assign.proposals import component_masks, components

    rng = np.random.default_rng(3)
    mask = ndimage.binary_opening(rng.random((FRAME, FRAME)) < 0.55, iterations=2)
    comp, _, boxes = components(mask)
    n = int(comp.max())
    ids = [int(k) for k in rng.permutation(np.arange(1, n + 1))[:40]]  # any order, a subset
    assert n > 40
    assert np.array_equal(component_masks(comp, ids, boxes), np.stack([comp == k for k in ids]))
    assert component_masks(comp, [], boxes).shape == (0, FRAME, FRAME)


@pytest.mark.parametrize("shape", [(1024, 1024), (1000, 1024), (100, 333), (37, 37), (20, 20)])
def test_cell_fractions_equal_torchs_adaptive_average_pool_to_the_bit(
    shape: tuple[int, int],
) -> None:
    """The integral-image cells are torch's adaptive pooling cells (overlapping by a pixel where
    the side is not a multiple of 37; repeated pixels where it is under 37), divided as torch
    divides: equal to the bit at every density, so no proposal feature moves."""
    import torch
    import torch.nn.functional as F

    from gfsam.assign.proposals import cell_fractions

    rng = np.random.default_rng(shape[0] + shape[1])
    masks = np.stack([rng.random(shape) < p for p in (0.0, 0.01, 0.3, 0.5, 0.9, 1.0)])
    masks[1, : shape[0] // 3, : shape[1] // 2] = True  # a block: whole and partial cells
    small = np.zeros((1, *shape), dtype=bool)
    small[0, -3:, 2:5] = True  # a speck at the bottom edge: its box is all that is counted
    masks = np.concatenate([masks, small])
    ref = F.adaptive_avg_pool2d(torch.from_numpy(masks.astype(np.float32))[:, None], GRID)
    got = cell_fractions(masks)
    assert got.shape == (len(masks), GRID * GRID) and got.dtype == np.float32
    assert np.array_equal(got, ref.flatten(1).numpy())


def test_cell_fractions_and_consistency_inside_boxes_equal_the_whole_frame() -> None:
    """A mask is empty outside its box: counting inside the box (any box holding it, tight or
    not, at the frame's edge or a single pixel) gives the whole frame's fractions and
    consistency to the bit."""
    from scipy import ndimage

    from gfsam.assign.proposals import cell_fractions, components, mask_consistency

    rng = np.random.default_rng(9)
    mask = ndimage.binary_opening(rng.random((FRAME, FRAME)) < 0.6, iterations=2)
    mask[0, 0] = True  # a one-pixel component in the corner
    comp, _, boxes = components(mask)
    ids = np.arange(1, int(comp.max()) + 1)[:30]
    masks = np.stack([comp == k for k in ids])  # (N, S, S)
    tight = boxes[ids - 1]  # (N, 4)
    loose = np.clip(tight + np.array([-7, -3, 11, 5]), 0, FRAME)  # still holding each mask
    for given in (tight, loose):
        assert np.array_equal(cell_fractions(masks, given), cell_fractions(masks))
    label = rng.random((FRAME, FRAME)) < 0.5
    whole = mask_consistency(masks, label)
    assert np.array_equal(mask_consistency(masks, label, [tuple(b) for b in tight]), whole)
    mixed = [tuple(b) if i % 2 else None for i, b in enumerate(loose.tolist())]
    assert np.array_equal(mask_consistency(list(masks), label, mixed), whole)
    assert cell_fractions(masks[:1], np.array([[5, 5, 5, 9]])).sum() == 0  # an empty box


def test_a_fragmented_mask_yields_at_most_max_proposals_largest_first() -> None:
    """Hundreds of specks (random weights, a noisy mask) must not cost hundreds of proposals."""
    mask = np.zeros((FRAME, FRAME), dtype=bool)
    for i in range(20):  # 400 separate 12x12 squares, 144 px each (above min_area)
        for j in range(20):
            mask[i * 50 : i * 50 + 12, j * 50 : j * 50 + 12] = True
    mask[0:100, 1000:1020] = True  # and one larger piece
    params = SplitParams(max_proposals=5)
    props = instance_proposals("A", _pred(mask), E[[0] * TOKENS], CFG, params)
    assert len(props) == 5 and int(props[0].mask.sum()) == 2000


def test_assign_split_keeps_the_instance_and_rejects_the_look_alike() -> None:
    true_box, other_box = _box(0, 300, 0, 300), _box(600, 900, 600, 900)
    tokens = np.tile(E[1], (TOKENS, 1))
    tokens[_cells(true_box)] = E[0]
    tokens[_cells(other_box)] = np.array([0.3, 0, 0.95, 0], dtype=np.float32)  # cos 0.3
    target = TargetEncoding(np.zeros(1), tokens, (FRAME, FRAME), "s", "d")
    preds = {"A": _pred(true_box | other_box, prompts=((100, 100), (700, 700)))}
    asg = assign_split(target, preds, {"A": [_reference(E[0])]}, cfg=CFG)
    assert len(asg.accepted["A"]) == 1 and asg.accepted["A"][0].mask[100, 100]
    assert len(asg.candidates) == 1 and asg.candidates[0].mask[700, 700]
    assert asg.candidates[0].label == "A" and asg.candidates[0].similarity < 0.5


def test_argmax_overlaps_go_to_the_higher_score() -> None:
    """The worker's former `resolve_overlaps` cases, now through `assign_argmax`."""
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 1:] = True
    out = assign_argmax({"A": _pred(a, 0.4), "B": _pred(b, 0.9)}, ["A", "B"]).label_masks()
    assert out["B"].sum() == 12 and out["A"].sum() == 4 and not (out["A"] & out["B"]).any()
    tie = assign_argmax({"A": _pred(a, 0.5), "B": _pred(b, 0.5)}, ["A", "B"]).label_masks()
    assert tie["A"].sum() == 12  # tie: config order
    swallowed = assign_argmax({"A": _pred(a, 0.9), "B": _pred(a.copy(), 0.1)}, ["A", "B"])
    assert list(swallowed.label_masks()) == ["A"] and swallowed.accepted["B"] == []


def _scene() -> tuple[TargetEncoding, np.ndarray, np.ndarray]:
    """A true A object (tokens E0) and a look-alike (cosine 0.3 to E0) on an E1 background."""
    true_box, other_box = _box(0, 300, 0, 300), _box(600, 900, 600, 900)
    tokens = np.tile(E[1], (TOKENS, 1))
    tokens[_cells(true_box)] = E[0]
    tokens[_cells(other_box)] = np.array([0.3, 0, 0.95, 0], dtype=np.float32)
    return TargetEncoding(np.zeros(1), tokens, (FRAME, FRAME), "s", "d"), true_box, other_box


def test_label_gate_drops_a_label_whose_whole_mask_is_a_look_alike() -> None:
    target, true_box, other_box = _scene()
    preds = {"A": _pred(true_box, 0.2), "B": _pred(other_box | true_box, 0.9)}
    refs = {"A": [_reference(E[0])], "B": [_reference(E[3])]}  # B's class is not in the image
    asg = assign_label_gate(target, preds, refs, cfg=CFG)
    # B scores higher and would win the overlap under argmax; the gate drops it first
    assert assign_argmax(preds, ["A", "B"]).label_masks().keys() == {"B"}
    masks = asg.label_masks()
    assert masks.keys() == {"A"} and np.array_equal(masks["A"], true_box)
    assert asg.accepted["A"][0].similarity == pytest.approx(1.0, abs=1e-5)
    assert [c.label for c in asg.candidates] == ["B"] and asg.candidates[0].similarity < 0.3
    # the same thresholds as split: given ones are used as they are
    loose = assign_label_gate(target, preds, refs, cfg=CFG, thresholds={"A": 0.5, "B": -1.0})
    assert loose.label_masks().keys() == {"B"}


def test_instances_carry_the_floor_they_were_judged_by() -> None:
    """Accepted instances and candidates know their label's presence floor (how close a call
    each was: the task score's near misses), under every rule and in a mix of rules."""
    target, true_box, other_box = _scene()
    preds = {"A": _pred(true_box, 0.2), "B": _pred(other_box | true_box, 0.9)}
    refs = {"A": [_reference(E[0])], "B": [_reference(E[3])]}
    floors = {"A": 0.41, "B": 0.37}
    for asg in (
        assign_split(target, preds, refs, cfg=CFG, thresholds=floors),
        assign_label_gate(target, preds, refs, cfg=CFG, thresholds=floors),
        assign_mixed(
            {"A": "label-gate", "B": "split"},
            target,
            preds,
            refs,
            ["A", "B"],
            cfg=CFG,
            thresholds=floors,
        ),
    ):
        judged = [i for insts in asg.accepted.values() for i in insts] + asg.candidates
        assert judged and all(i.floor == pytest.approx(floors[i.label]) for i in judged)
    assert all(np.isnan(i.floor) for i in assign_argmax(preds, ["A", "B"]).accepted["B"])


def test_label_gate_cannot_cut_a_mask_split_can() -> None:
    """One mask over the true object and a smaller look-alike: the whole-mask feature passes,
    so the gate paints the look-alike too; split cuts it off as a candidate."""
    target, true_box, _ = _scene()
    small = _box(600, 700, 600, 700)
    target.tokens[_cells(small)] = np.array([0.3, 0, 0.95, 0], dtype=np.float32)
    preds = {"A": _pred(true_box | small, prompts=((100, 100), (650, 650)))}
    refs = {"A": [_reference(E[0])]}
    gate = assign_label_gate(target, preds, refs, cfg=CFG).label_masks()
    split = assign_split(target, preds, refs, cfg=CFG).label_masks()
    assert gate["A"][650, 650] and not split["A"][650, 650]
    assert gate["A"][100, 100] and split["A"][100, 100]


def test_carving_rescues_an_object_a_wrong_decode_joined_to_the_background() -> None:
    """One GF-SAM component = the object (SAM mask of its prompt) + a large background piece
    (a prompt whose decode spilled): pooled whole it fails the floor and the object would be
    lost; carved along its SAM masks, the object is painted and the piece is a candidate."""
    obj, spill = _box(0, 300, 0, 300), _box(0, 1000, 300, 1000)
    tokens = np.tile(E[1], (TOKENS, 1))
    tokens[_cells(obj)] = E[0]
    target = TargetEncoding(np.zeros(1), tokens, (FRAME, FRAME), "s", "d")
    preds = {"A": _pred(obj | spill, prompts=((100, 100), (600, 600)))}
    refs = {"A": [_reference(E[0])]}
    decodes: list[list[tuple[int, int]]] = []

    def point_masks(xy: np.ndarray) -> np.ndarray:
        decodes.append([tuple(p) for p in xy.tolist()])
        masks = np.stack([obj if x < 300 else spill for x, _ in xy.tolist()])
        return np.packbits(masks, axis=-1)  # `PointMasks` answer packed

    whole = assign_split(target, preds, refs, cfg=CFG)
    assert not whole.label_masks()  # the joined component fails as a whole
    carved = assign_split(target, preds, refs, cfg=CFG, point_masks=point_masks)
    assert np.array_equal(carved.label_masks()["A"], obj)
    assert [c.mask[600, 600] for c in carved.candidates] == [True]
    assert decodes == [[(100, 100), (600, 600)]]  # the gated prompts inside, once


def test_carving_inside_the_components_box_equals_the_whole_frame() -> None:
    """Carving works on the component's box, widened to whole bytes of the packed masks: for a
    box off the byte grid on both sides, the carved and the rest proposals (masks, features,
    points) are those of the whole-frame computation."""
    from dataclasses import replace

    from gfsam.assign.proposals import carve_proposal, instance_proposals, shot_prototypes

    obj, spill = _box(100, 300, 203, 351), _box(150, 400, 350, 517)  # columns 203 .. 516
    tokens = np.tile(E[1], (TOKENS, 1))
    tokens[_cells(obj)] = E[0]
    pred = _pred(obj | spill, prompts=((250, 200), (450, 300), (260, 210)))
    params = SplitParams()
    (prop,) = instance_proposals("A", pred, tokens, CFG, params)
    assert prop.box == (100, 203, 400, 517)
    protos = shot_prototypes([_reference(E[0])], CFG, params)

    def point_masks(xy: np.ndarray) -> np.ndarray:
        masks = np.stack([obj if x < 350 else spill | _box(600, 700, 0, 50) for x, _ in xy])
        return np.packbits(masks, axis=-1)  # a decode reaching outside the component too

    boxed = carve_proposal(prop, pred, tokens, protos, 0.9, point_masks, CFG, params)
    whole = carve_proposal(
        replace(prop, box=None), pred, tokens, protos, 0.9, point_masks, CFG, params
    )
    assert len(boxed) == len(whole) == 2
    assert np.array_equal(boxed[0].mask, obj) and np.array_equal(boxed[1].mask, spill & ~obj)
    for b, w in zip(boxed, whole, strict=True):
        assert np.array_equal(b.mask, w.mask) and np.array_equal(b.feature, w.feature)
        assert b.points == w.points and b.box == (100, 200, 400, 520)


def test_unit_tokens_are_memoised_by_content() -> None:
    """`pool_features` and discovery share one normalisation per token set: the same bits as
    computing it, read-only, and a changed token is another entry."""
    import torch
    import torch.nn.functional as F

    from gfsam.assign.proposals import unit_tokens
    from gfsam.points import normalize_tokens

    tokens = np.random.default_rng(3).standard_normal((TOKENS, 16)).astype(np.float32)
    ref = F.normalize(normalize_tokens(torch.from_numpy(tokens.copy()), CFG), dim=-1).numpy()
    unit = unit_tokens(tokens, CFG)  # numpy's norms: equal up to float32 rounding
    np.testing.assert_allclose(unit, ref, rtol=0, atol=1e-6)
    assert not unit.flags.writeable
    assert unit_tokens(tokens.copy(), CFG) is unit  # same content, same entry
    changed = tokens.copy()
    changed[5, 3] += 1.0
    assert not np.array_equal(unit_tokens(changed, CFG), unit)
    per_token = GFSAMConfig(token_axis_norm=False, per_token_norm=True)
    other = F.normalize(normalize_tokens(torch.from_numpy(tokens.copy()), per_token), dim=-1)
    np.testing.assert_allclose(unit_tokens(tokens, per_token), other.numpy(), rtol=0, atol=1e-6)
    raw = GFSAMConfig(token_axis_norm=False, per_token_norm=False)
    plain = F.normalize(torch.from_numpy(tokens.copy()), dim=-1).numpy()
    np.testing.assert_allclose(unit_tokens(tokens, raw), plain, rtol=0, atol=1e-6)


def test_frozen_tokens_are_memoised_by_identity() -> None:
    """The worker freezes its targets' tokens: `unit_tokens` then knows them by identity (no
    content hash), with the same values; a view is copied before freezing, and torch reads a
    frozen array through a copy (`read_tensor`), never writing into it."""
    from gfsam.assign.proposals import freeze, frozen, unit_tokens
    from gfsam.image import read_tensor

    tokens = np.random.default_rng(4).standard_normal((TOKENS, 16)).astype(np.float32)
    ref = unit_tokens(tokens.copy(), CFG)  # the content-hashed path
    fixed = freeze(tokens.copy())
    assert frozen(fixed) and not fixed.flags.writeable
    unit = unit_tokens(fixed, CFG)
    assert np.array_equal(unit, ref) and unit_tokens(fixed, CFG) is unit
    view = freeze(tokens[:, :8])  # a view does not own its memory: frozen as a copy
    assert frozen(view) and view.base is None and np.array_equal(view, tokens[:, :8])
    assert not frozen(tokens) and tokens.flags.writeable  # the original untouched
    shared = read_tensor(tokens)
    assert shared.data_ptr() == tokens.ctypes.data  # writable: shared
    copied = read_tensor(fixed)
    assert copied.data_ptr() != fixed.ctypes.data and np.array_equal(copied.numpy(), fixed)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def test_mixed_with_one_mode_is_exactly_that_rule() -> None:
    target, true_box, other_box = _scene()
    preds = {"A": _pred(true_box, 0.2), "B": _pred(other_box | true_box, 0.9)}
    refs = {"A": [_reference(E[0])], "B": [_reference(E[3])]}
    rules = {
        "split": assign_split(target, preds, refs, cfg=CFG),
        "label-gate": assign_label_gate(target, preds, refs, cfg=CFG),
        "argmax": assign_argmax(preds, ["A", "B"]),
    }
    for mode, expected in rules.items():
        got = assign_mixed({"A": mode, "B": mode}, target, preds, refs, ["A", "B"], cfg=CFG)
        assert _same(got.label_masks(), expected.label_masks()), mode
        assert [c.label for c in got.candidates] == [c.label for c in expected.candidates]
    with pytest.raises(ValueError):
        assign_mixed({"A": "split"}, target, preds, refs, ["A", "B"], cfg=CFG)
    with pytest.raises(ValueError):
        assign_mixed({"A": "split", "B": "vote"}, target, preds, refs, ["A", "B"], cfg=CFG)


def test_mixed_split_instances_claim_first_whole_masks_fill_the_rest() -> None:
    """A by split (cuts its look-alike off), B by argmax (its whole mask, higher score): B gets
    only what A's instance left; B by label-gate fails its gate and becomes a candidate."""
    target, true_box, other_box = _scene()
    small = _box(600, 700, 600, 700)
    preds = {
        "A": _pred(true_box | small, 0.2, prompts=((100, 100), (650, 650))),
        "B": _pred(true_box | other_box, 0.9),
    }
    refs = {"A": [_reference(E[0])], "B": [_reference(E[3])]}
    mixed = assign_mixed({"A": "split", "B": "argmax"}, target, preds, refs, ["A", "B"], cfg=CFG)
    masks = mixed.label_masks()
    assert np.array_equal(masks["A"], true_box)  # split's instance, whatever B's score
    assert np.array_equal(masks["B"], other_box)  # B's whole mask minus A's pixels
    assert all(c.label == "A" for c in mixed.candidates)  # split's own rejects only
    gated = assign_mixed(
        {"A": "split", "B": "label-gate"}, target, preds, refs, ["A", "B"], cfg=CFG
    )
    assert gated.label_masks().keys() == {"A"}
    assert "B" in [c.label for c in gated.candidates]
