"""Discovery stages 3-5: prompts, agreement, filters, mask NMS, the composed per-image run."""

from __future__ import annotations

import numpy as np
import pytest

from gfsam.discover import (
    DiscoverParams,
    agreement,
    border_share,
    discover_candidates,
    keep_mask,
    looks_like_label,
    mask_nms,
    region_prompts,
    sam_prompt_fn,
)
from gfsam.eval.oracle import OracleDino, OracleParams, OracleSam
from gfsam.types import FRAME, GRID, TOKENS

CELL = FRAME / GRID


def cells_of(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    g = np.zeros((GRID, GRID), dtype=bool)
    g[y0:y1, x0:x1] = True
    return g.ravel()


def frame_box(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    m = np.zeros((FRAME, FRAME), dtype=bool)
    m[y0:y1, x0:x1] = True
    return m


def test_prompts_are_the_deepest_cells_and_the_widened_box() -> None:
    points, box = region_prompts(cells_of(10, 20, 15, 25), DiscoverParams())  # 5x5 cells
    assert points[0].tolist() == pytest.approx([12.5 * CELL, 22.5 * CELL])
    assert len(points) == 1  # every other cell lies in the outer half of the region
    assert box.tolist() == pytest.approx([9.5 * CELL, 19.5 * CELL, 15.5 * CELL, 25.5 * CELL])


def test_prompts_keep_points_apart() -> None:
    params = DiscoverParams(points=3, point_gap=2)
    points, _ = region_prompts(cells_of(0, 0, 12, 3), params)  # a 12x3 bar: depth 2 on row 1
    cells = points / CELL - 0.5
    assert len(points) == 3
    assert set(cells[:, 1].tolist()) == {1.0}
    xs = sorted(cells[:, 0].tolist())
    assert all(b - a >= 2 for a, b in zip(xs, xs[1:], strict=False))


def test_agreement_is_the_cell_iou_of_region_and_mask() -> None:
    cells = cells_of(0, 0, 4, 4)
    exact = frame_box(0, 0, round(4 * CELL), round(4 * CELL))
    assert agreement(cells, exact) == 1.0
    assert agreement(cells, frame_box(0, 0, round(4 * CELL), round(2 * CELL))) == 0.5


def test_border_share_and_filters() -> None:
    top = frame_box(0, 0, FRAME, 300)
    assert border_share(top) == pytest.approx((FRAME + 2 * 299) / (4 * FRAME - 4))
    p = DiscoverParams()
    obj = frame_box(400, 400, 600, 600)  # 3.8 % of the frame, away from the border
    assert keep_mask(obj, 0.9, None, p)
    assert not keep_mask(frame_box(400, 400, 420, 420), 0.9, None, p)  # too small
    assert not keep_mask(frame_box(0, 0, 800, 800), 0.9, None, p)  # too large (stuff)
    assert not keep_mask(top, 0.9, None, p)  # hugs the border (stuff)
    assert not keep_mask(obj, 0.4, None, p)  # low score
    assert not keep_mask(obj, 0.9, frame_box(400, 400, 600, 500), p)  # half covered
    assert keep_mask(obj, 0.9, frame_box(400, 400, 600, 420), p)  # 10 % covered


def test_mask_nms_drops_duplicates_and_caps() -> None:
    a, b = frame_box(0, 0, 100, 100), frame_box(0, 0, 100, 90)  # IoU 0.9
    c, d = frame_box(500, 500, 600, 600), frame_box(700, 700, 800, 800)
    assert mask_nms([a, b, c, d], 0.5, 10) == [0, 2, 3]
    assert mask_nms([a, b, c, d], 0.5, 2) == [0, 2]
    assert mask_nms([b, a], 0.95, 10) == [0, 1]


def oracle_scene() -> tuple[np.ndarray, np.ndarray, OracleSam]:
    """Label map: class 1 (covered by a label) and class 2 (unlabelled), 8x8 cells each."""
    framed = np.zeros((FRAME, FRAME), dtype=np.int32)
    side = round(8 * CELL)
    framed[100 : 100 + side, 100 : 100 + side] = 1
    framed[600 : 600 + side, 600 : 600 + side] = 2
    tokens = OracleDino(OracleParams(dim=32)).tokens(framed, "scene")
    assert tokens.shape == (TOKENS, 32)
    return framed, tokens, OracleSam()


def test_discovery_finds_the_unlabelled_object_only() -> None:
    framed, tokens, sam = oracle_scene()
    emb = sam.embed(framed)
    fn = sam_prompt_fn(sam, emb)
    cands = discover_candidates(tokens, framed == 1, fn)
    assert len(cands) == 1
    assert np.array_equal(cands[0].mask, framed == 2)
    assert cands[0].origin == "cluster" and cands[0].score > 0.8
    assert cands[0].feature.shape == (32,)
    everywhere = discover_candidates(tokens, framed == 1, fn, restrict=False)
    assert sorted(int(framed[c.mask].max()) for c in everywhere) == [1, 2]


def test_rejected_proposals_join_the_pool_and_are_deduplicated() -> None:
    framed, tokens, sam = oracle_scene()
    fn = sam_prompt_fn(sam, sam.embed(framed))
    extra = frame_box(300, 700, 400, 800)  # a rejected proposal nothing else proposes
    cands = discover_candidates(tokens, framed == 1, fn, rejected=[framed == 2, extra])
    assert [c.origin for c in cands] == ["cluster", "rejected"]
    assert np.array_equal(cands[1].mask, extra)
    capped = discover_candidates(
        tokens, framed == 1, fn, rejected=[extra], params=DiscoverParams(max_candidates=1)
    )
    assert len(capped) == 1


def test_candidates_that_look_like_an_existing_label_are_dropped() -> None:
    feats = np.array([[1, 0], [0.6, 0.8], [0, 1]], dtype=np.float32)
    labels = [(np.array([[1, 0]], dtype=np.float32), 0.7)]
    assert looks_like_label(feats, labels).tolist() == [True, False, False]
    framed, tokens, sam = oracle_scene()
    fn = sam_prompt_fn(sam, sam.embed(framed))
    found = discover_candidates(tokens, framed == 1, fn)
    protos = np.stack([found[0].feature])  # a label whose shot is exactly this object
    assert discover_candidates(tokens, framed == 1, fn, labels=[(protos, 0.9)]) == []
    assert len(discover_candidates(tokens, framed == 1, fn, labels=[(-protos, 0.9)])) == 1


def test_nms_and_filters_counting_inside_boxes_equal_the_whole_frame() -> None:
    """`mask_nms` and `keep_mask` count inside the masks' boxes: the same decisions as the
    whole-frame counts (random blobs, overlapping or not, some empty, some on the border)."""
    from scipy import ndimage

    from gfsam.discover.refine import border_share

    rng = np.random.default_rng(21)
    masks = []
    for _ in range(40):
        y, x = rng.integers(-100, FRAME, 2)
        h, w = rng.integers(1, 400, 2)
        m = np.zeros((FRAME, FRAME), dtype=bool)
        m[max(y, 0) : y + h, max(x, 0) : x + w] = True
        masks.append(ndimage.binary_erosion(m, iterations=int(rng.integers(0, 3))))
    masks.append(np.zeros((FRAME, FRAME), dtype=bool))

    def nms_whole(ms: list[np.ndarray], iou: float, limit: int) -> list[int]:
        kept: list[int] = []
        for i, m in enumerate(ms):
            if len(kept) == limit:
                break
            if m.any() and all(
                np.count_nonzero(m & ms[k]) <= iou * np.count_nonzero(m | ms[k]) for k in kept
            ):
                kept.append(i)
        return kept

    for iou, limit in [(0.5, 100), (0.1, 100), (0.0, 100), (0.5, 5)]:
        assert mask_nms(masks, iou, limit) == nms_whole(masks, iou, limit)
    p = DiscoverParams(min_area=0.0005, max_area=0.1, max_border=0.3, max_covered=0.25)
    covered = rng.random((FRAME, FRAME)) < 0.2
    for m in masks:
        area = np.count_nonzero(m)
        whole = (
            p.min_area * m.size <= area <= p.max_area * m.size
            and border_share(m) <= p.max_border
            and np.count_nonzero(m & covered) <= p.max_covered * area
        )
        assert keep_mask(m, 0.9, covered, p) == whole
