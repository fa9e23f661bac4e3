"""gfsam.geometry: clean regions (specks, slivers, holes, duplicates) and the shapes LS speaks
besides brushes (polygons with holes as keyholes, boxes), checked on hand-made shapes and on the
object shapes of the shipped COCO label maps."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from gfsam.geometry import (
    GeometryParams,
    box_to_mask,
    clean_regions,
    count_defects,
    mask_to_box,
    mask_to_polygons,
    polygons_to_mask,
)
from tests.conftest import ASSETS

P = GeometryParams()


def iou(a: np.ndarray, b: np.ndarray) -> float:
    union = int((a | b).sum())
    return float((a & b).sum()) / union if union else 1.0


def disk(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2


def coco_instances(limit: int = 80) -> list[np.ndarray]:
    """Connected objects (8-connected pieces of one class, at least 64 px) of the shipped maps."""
    out: list[np.ndarray] = []
    for path in sorted((ASSETS / "coco128_seg" / "masks").glob("*.png")):
        labels = np.asarray(Image.open(path))
        for cls in np.unique(labels):
            if cls in (0, 255):
                continue
            pieces, n = ndimage.label(labels == cls, structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                piece = pieces == k
                if piece.sum() >= 64:
                    out.append(piece)
        if len(out) >= limit:
            return out[:limit]
    return out


def test_polygon_round_trip_keeps_the_shapes_of_the_shipped_data() -> None:
    shapes = coco_instances()
    assert len(shapes) >= 20, "shipped COCO label maps missing"
    ious = []
    for mask in shapes:
        rings = mask_to_polygons(mask, P)
        assert rings and all(len(r) <= P.polygon_max_points for r in rings)
        ious.append(iou(polygons_to_mask(rings, *mask.shape), mask))
    assert min(ious) >= 0.95, sorted(ious)[:5]


def test_a_hole_survives_as_a_keyhole_and_the_cap_on_vertices_holds() -> None:
    ring = disk(120, 160, 60, 80, 50) & ~disk(120, 160, 60, 80, 20)
    (polygon,) = mask_to_polygons(ring, P)
    back = polygons_to_mask([polygon], 120, 160)
    assert not back[60, 80]  # the hole stays empty
    assert iou(back, ring) >= 0.95
    few = mask_to_polygons(ring, GeometryParams(polygon_max_points=12))
    coarse = polygons_to_mask(few, 120, 160)
    assert len(few[0]) <= 12 and not coarse[60, 80] and iou(coarse, ring) > 0.5


def test_one_polygon_per_piece_largest_first() -> None:
    two = disk(100, 200, 50, 50, 10) | disk(100, 200, 50, 140, 30)
    rings = mask_to_polygons(two, P)
    assert len(rings) == 2
    assert rings[0][:, 0].mean() > 100  # the big disk on the right first
    assert mask_to_polygons(np.zeros((10, 10), dtype=bool), P) == []


def test_box_round_trip_is_exact() -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[5:17, 8:31] = True
    box = mask_to_box(mask)
    assert box == (8, 5, 31, 17)
    assert np.array_equal(box_to_mask(box, 40, 60), mask)
    assert mask_to_box(np.zeros((4, 4), dtype=bool)) is None


def test_clean_regions_removes_each_kind_of_defect() -> None:
    h, w = 200, 300
    body = disk(h, w, 100, 100, 60)
    body[100, 100] = False  # a one-pixel hole
    body[150:153, 200:202] = True  # a speck (6 px) of the same region
    body[20, 150:290] = True  # a sliver one pixel thick
    nested = disk(h, w, 100, 100, 20)  # a duplicate lying inside the body
    other = disk(h, w, 100, 240, 40)  # a real second instance
    regions = [body, nested, other]
    before = count_defects(regions, P)
    assert (before.specks, before.slivers, before.holes, before.duplicates) == (1, 1, 1, 1)
    kept = clean_regions(regions, P)
    assert kept == [0, 2]
    after = count_defects([regions[i] for i in kept], P)
    assert (after.specks, after.slivers, after.holes, after.duplicates) == (0, 0, 0, 0)
    assert regions[0][100, 100] and not regions[0][151, 200] and not regions[0][20, 200]
    assert iou(regions[2], other) == 1.0  # a clean region is left as it was


def test_large_holes_and_large_pieces_are_kept() -> None:
    ring = disk(200, 200, 100, 100, 80) & ~disk(200, 200, 100, 100, 40)  # hole: 12% of image
    regions = [ring.copy()]
    assert clean_regions(regions, P) == [0]
    assert np.array_equal(regions[0], ring)


@pytest.mark.parametrize("radius", [1, 2])
def test_smoothing_is_optional_and_bounded(radius: int) -> None:
    square = np.zeros((100, 100), dtype=bool)
    square[20:80, 20:80] = True
    jagged = square.copy()
    jagged[20, 20:80:2] = False  # a comb along one edge
    regions = [jagged]
    clean_regions(regions, GeometryParams(smooth_px=radius))
    assert iou(regions[0], square) > 0.97


def test_param_sizes_scale_with_the_image() -> None:
    assert P.min_area(640 * 480) == int(0.0002 * 640 * 480)
    assert P.min_area(10 * 10) == P.min_area_px
    assert P.max_hole(4000 * 3000) == int(0.001 * 4000 * 3000)


def test_the_harness_counts_defects_before_and_after_cleaning() -> None:
    from gfsam.assign import Assignment, Instance
    from gfsam.eval.geometry import GeometryScore

    body = disk(100, 100, 50, 50, 30)
    body[50, 50] = False  # a small hole
    body[2, 2:4] = True  # a speck
    nested = disk(100, 100, 50, 50, 10)
    asg = Assignment(
        accepted={
            "A": [
                Instance("A", body, 0.9, 0.8, 1.0, "A"),
                Instance("A", nested, 0.5, 0.8, 1.0, "A"),
            ]
        }
    )
    score = GeometryScore(P)
    cleaned = score.clean(asg)
    (kept,) = cleaned.accepted["A"]
    assert kept.score == 0.9 and kept.mask[50, 50] and not kept.mask[2, 2]
    numbers = score.numbers()
    assert numbers["before"] == {
        "regions": 2,
        "specks": 50.0,
        "slivers": 0.0,
        "holes": 50.0,
        "duplicates": 50.0,
    }
    assert numbers["after"] == {
        "regions": 1,
        "specks": 0.0,
        "slivers": 0.0,
        "holes": 0.0,
        "duplicates": 0.0,
    }


def test_sliver_test_matches_scipys_exact_distance_transform() -> None:
    """`_thin` (OpenCV's precise L2 transform, compared squared) decides as the definition
    does: twice the largest Euclidean distance to the background (scipy's EDT) <= sliver_px."""
    from scipy import ndimage

    from gfsam.geometry import _thin

    rng = np.random.default_rng(11)
    thin_seen = thick_seen = 0
    for _ in range(200):
        h, w = (int(v) for v in rng.integers(3, 120, 2))
        piece = ndimage.binary_opening(rng.random((h, w)) < rng.uniform(0.3, 0.95))
        if not piece.any():
            continue
        depth = float(ndimage.distance_transform_edt(np.pad(piece, 1)).max())
        boundaries = [2.0 * float(np.sqrt(k)) for k in (2, 5, 13, 18, 26, 29, 37)]
        for sliver_px in (1.0, 2.0, 2.5, 4.0, 6.0, 9.0, *boundaries):
            expected = 2.0 * depth <= sliver_px
            assert _thin(piece, sliver_px) == expected, (h, w, sliver_px)
            thin_seen += expected
            thick_seen += not expected
    assert thin_seen and thick_seen  # both answers were exercised
