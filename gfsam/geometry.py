"""Clean geometry for what is posted to Label Studio, and the shapes LS speaks besides brushes.

Machine masks arrive with specks, slivers, holes and duplicates nested in one another; a person
then has to delete them one by one. `clean_regions` removes those defects from one label's
regions before anything is posted (and on the interactive lane), `count_defects` counts them (the
harness measures before and after). Polygons and boxes convert both ways with pixel-exact rules:
a pixel (col, row) covers [col, col + 1) x [row, row + 1) of the continuous image plane that LS's
percent coordinates describe.

Shapes: masks are bool [H, W]; polygons are float [N, 2] (x, y) in pixels of the continuous
plane; boxes are (x0, y0, x1, y1) in pixels, x1/y1 exclusive.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity: diagonal neighbours belong together


@dataclass(frozen=True)
class GeometryParams:
    """What counts as a defect (settings `GEOMETRY_*`, `POLYGON_*`; the README has the table).

    Sizes are shares of the image area (so they mean the same on a thumbnail and on a 24 Mpx
    photo) with a floor in pixels. The defaults were set by hand, not tuned on any dataset: a
    speck is under 0.02 % of the image (about 60 px at 640 x 480), a hole to fill under 0.1 %.

    Attributes:
        min_area_frac, min_area_px: a connected piece smaller than the larger of the two is a
            speck and is dropped.
        fill_holes_frac, fill_holes_px: a hole (background enclosed by a region) smaller than
            the larger of the two is filled.
        sliver_px: a piece whose thickest point is at most this wide (twice its largest
            inscribed radius) is a sliver and is dropped; 0 keeps slivers.
        nested_share: a region of the same label lying at least this share inside another
            is a duplicate and joins it.
        smooth_px: radius of an opening then closing of each region (0: none).
        polygon_tolerance_px: how far a simplified polygon may stray from the mask's contour.
        polygon_max_points: vertices per polygon at most (the tolerance grows until it fits).
    """

    min_area_frac: float = 0.0002
    min_area_px: int = 16
    fill_holes_frac: float = 0.001
    fill_holes_px: int = 16
    sliver_px: float = 2.0
    nested_share: float = 0.9
    smooth_px: int = 0
    polygon_tolerance_px: float = 1.0
    polygon_max_points: int = 256

    def min_area(self, image_area: int) -> int:
        return max(self.min_area_px, int(self.min_area_frac * image_area))

    def max_hole(self, image_area: int) -> int:
        return max(self.fill_holes_px, int(self.fill_holes_frac * image_area))


@dataclass(frozen=True)
class Defects:
    """Defects of one label's regions (`count_defects`)."""

    regions: int
    specks: int  # connected pieces below the minimum area
    slivers: int  # pieces no thicker than `sliver_px`
    holes: int  # enclosed holes below the fill size
    duplicates: int  # regions nested in (or duplicating) another of the same label

    def __add__(self, other: Defects) -> Defects:
        return Defects(
            self.regions + other.regions,
            self.specks + other.specks,
            self.slivers + other.slivers,
            self.holes + other.holes,
            self.duplicates + other.duplicates,
        )


NO_DEFECTS = Defects(0, 0, 0, 0, 0)


def _pieces(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected components: labels int32 [H, W] (0 outside), count."""
    labels, count = ndimage.label(mask, structure=EIGHT)
    return labels, int(count)


def _holes(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Enclosed background components (4-connected, not touching the border): labels, count."""
    background, count = ndimage.label(~mask)
    border = np.unique(
        np.concatenate([background[0], background[-1], background[:, 0], background[:, -1]])
    )
    inside = np.isin(background, border, invert=True) & (background > 0)
    labels, count = ndimage.label(inside)
    return labels, int(count)


def _thin(piece: np.ndarray, sliver_px: float) -> bool:
    """True when the piece is nowhere thicker than `sliver_px` (twice its inscribed radius)."""
    if sliver_px <= 0:
        return False
    # OpenCV's precise L2 transform is the exact Euclidean one, in float32 (scipy's
    # `distance_transform_edt` gives the same distances ~8x slower, tests/test_geometry.py): the
    # largest squared distance is an integer, and its float64 root is scipy's to the bit
    padded = np.pad(piece, 1).astype(np.uint8)
    depth = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    squared = round(float(depth.max()) ** 2)
    return 2.0 * math.sqrt(squared) <= sliver_px


def _fill_small_holes(mask: np.ndarray, max_hole: int) -> np.ndarray:
    holes, count = _holes(mask)
    if count == 0:
        return mask
    sizes = ndimage.sum_labels(np.ones_like(mask), holes, index=np.arange(1, count + 1))
    small = np.flatnonzero(sizes < max_hole) + 1
    return mask | np.isin(holes, small)


def _drop_specks_and_slivers(mask: np.ndarray, params: GeometryParams) -> np.ndarray:
    pieces, count = _pieces(mask)
    if count == 0:
        return mask
    sizes = np.bincount(pieces.ravel(), minlength=count + 1)  # [n + 1], 0 = background
    big = np.flatnonzero(sizes >= params.min_area(mask.size))
    big = big[big > 0]
    keep = np.isin(pieces, big)  # specks dropped at once; slivers checked piece by piece
    if params.sliver_px > 0:
        windows = ndimage.find_objects(pieces)
        for index in big:
            window = windows[index - 1]
            if window is not None and _thin(pieces[window] == index, params.sliver_px):
                keep[window] &= pieces[window] != index
    return keep


def _smooth(mask: np.ndarray, radius: int) -> np.ndarray:
    if radius <= 0:
        return mask
    disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
    opened = cv2.morphologyEx(mask.astype(np.uint8), cv2.MORPH_OPEN, disk)
    return cv2.morphologyEx(opened, cv2.MORPH_CLOSE, disk).astype(bool)


def _inside_share(small: np.ndarray, big: np.ndarray) -> float:
    area = int(small.sum())
    return float((small & big).sum()) / area if area else 1.0


def clean_regions(regions: list[np.ndarray], params: GeometryParams) -> list[int]:
    """Clean one label's regions in place; returns the indices of the regions that remain.

    Per region: smoothing (optional), small holes filled, specks and slivers dropped. Then, largest
    first, a region lying `nested_share` inside a kept one joins it (duplicates and nested
    fragments of one object become one region); regions left empty are dropped.

    Args:
        regions: bool [H, W] masks of one label (modified in place; the caller keeps the list).
        params: what counts as a defect.

    Returns:
        Indices into `regions` of the regions to post, in their original order.
    """
    for i, mask in enumerate(regions):
        mask = _smooth(mask, params.smooth_px)
        mask = _fill_small_holes(mask, params.max_hole(mask.size))
        regions[i] = _drop_specks_and_slivers(mask, params)
    order = sorted(range(len(regions)), key=lambda i: -int(regions[i].sum()))
    kept: list[int] = []
    for i in order:
        if not regions[i].any():
            continue
        host = next(
            (k for k in kept if _inside_share(regions[i], regions[k]) >= params.nested_share),
            None,
        )
        if host is None:
            kept.append(i)
        else:
            regions[host] |= regions[i]
    return sorted(kept)


def count_defects(regions: list[np.ndarray], params: GeometryParams) -> Defects:
    """The defects `clean_regions` removes, counted on one label's regions (nothing changed)."""
    specks = slivers = holes = duplicates = 0
    for i, mask in enumerate(regions):
        if not mask.any():
            continue
        pieces, count = _pieces(mask)
        floor = params.min_area(mask.size)
        for index, window in enumerate(ndimage.find_objects(pieces), start=1):
            if window is None:
                continue
            piece = pieces[window] == index
            if int(piece.sum()) < floor:
                specks += 1
            elif _thin(piece, params.sliver_px):
                slivers += 1
        hole_labels, n_holes = _holes(mask)
        if n_holes:
            sizes = ndimage.sum_labels(
                np.ones_like(mask), hole_labels, index=np.arange(1, n_holes + 1)
            )
            holes += int((sizes < params.max_hole(mask.size)).sum())
        duplicates += any(
            j != i
            and regions[j].sum() >= mask.sum()
            and _inside_share(mask, regions[j]) >= params.nested_share
            for j in range(len(regions))
        )
    return Defects(sum(bool(m.any()) for m in regions), specks, slivers, holes, duplicates)


# --------------------------------------------------------------------------- polygons and boxes


def _bridge(outer: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """One ring from an outer ring and a hole ring, joined by a zero-width cut at their closest
    vertices (a "keyhole"): filling it leaves the hole empty under either fill rule."""
    d = ((outer[:, None, :] - hole[None, :, :]) ** 2).sum(-1)
    i, j = np.unravel_index(int(np.argmin(d)), d.shape)
    ring = np.concatenate([hole[j:], hole[: j + 1]])
    return np.concatenate([outer[: i + 1], ring, outer[i:]])


def _approx(ring: np.ndarray, eps: float) -> np.ndarray:
    out = cv2.approxPolyDP(ring.reshape(-1, 1, 2).astype(np.float32), eps, True)
    return out.reshape(-1, 2).astype(np.float64)


def _piece_ring(outer: np.ndarray, holes: list[np.ndarray], params: GeometryParams) -> np.ndarray:
    """The outer ring and its holes simplified with one tolerance (Douglas-Peucker, each ring on
    its own), then joined into one keyhole ring; the tolerance doubles until the ring has at most
    `polygon_max_points` vertices (a hole that collapses below 3 vertices is dropped). The
    tolerance is capped by the piece's size (3 % of the square root of its area), so that
    a small object keeps its shape."""
    area = float(cv2.contourArea(outer.astype(np.float32)))
    eps = min(params.polygon_tolerance_px, max(0.1, 0.03 * float(np.sqrt(area))))
    while True:
        ring = _approx(outer, eps)
        for hole in holes:
            simple = _approx(hole, eps)
            if len(simple) >= 3:
                ring = _bridge(ring, simple)
        if len(ring) <= params.polygon_max_points:
            return ring
        eps *= 2


def mask_to_polygons(mask: np.ndarray, params: GeometryParams) -> list[np.ndarray]:
    """One polygon per connected piece of `mask` (8-connected), holes kept as keyholes.

    Holes: LS polygons have no holes; a hole (larger than the fill size: smaller ones are gone
    after `clean_regions`) is joined to its outer contour by a zero-width cut, so the polygon's
    area is the piece without its hole. The simplification tolerance applies to the whole ring.

    Returns:
        float [N, 2] (x, y) rings on pixel boundaries (N >= 3), largest piece first.
    """
    contours, hierarchy = cv2.findContours(
        mask.astype(np.uint8), cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE
    )
    if hierarchy is None:
        return []
    tree = hierarchy[0]  # [next, previous, first child, parent] per contour
    rings: list[tuple[float, np.ndarray]] = []
    for index, contour in enumerate(contours):
        if tree[index][3] != -1:
            continue  # a hole: joined to its parent below
        holes = []
        child = tree[index][2]
        while child != -1:
            holes.append(_pixel_ring(contours[child].reshape(-1, 2)))
            child = tree[child][0]
        ring = _piece_ring(_pixel_ring(contour.reshape(-1, 2)), holes, params)
        if len(ring) >= 3:
            rings.append((float(cv2.contourArea(contour)), ring))
    return [ring for _, ring in sorted(rings, key=lambda r: -r[0])]


def _pixel_ring(points: np.ndarray) -> np.ndarray:
    """Contour points (pixel indices of boundary pixels) -> the ring through those pixels'
    centres, in continuous coordinates (pixel (c, r) spans [c, c + 1) x [r, r + 1))."""
    return points.astype(np.float64) + 0.5


def polygons_to_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """Rasterise rings of continuous (x, y) pixel coordinates: bool [H, W], pixels whose centre
    lies inside (rings are OR-ed; a keyhole ring keeps its hole empty)."""
    mask = np.zeros((height, width), dtype=np.uint8)
    shift = 4  # sub-pixel vertices: 1/16 px
    for ring in polygons:
        if len(ring) < 3:
            continue
        fixed = np.round((np.asarray(ring, dtype=np.float64) - 0.5) * (1 << shift))
        cv2.fillPoly(mask, [fixed.astype(np.int32).reshape(-1, 1, 2)], 1, cv2.LINE_8, shift)
    return mask.astype(bool)


def mask_to_box(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) pixel bounds of the mask, x1/y1 exclusive; None for an empty mask.

    One pass of OpenCV's boundingRect over the mask's bytes (the assignment and discovery
    count pixels inside these boxes only)."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask, dtype=bool).view(np.uint8))
    return (x, y, x + w, y + h) if w else None


def box_to_mask(box: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixels whose centre lies in the box (x0, y0, x1, y1) of continuous pixels."""
    x0, y0, x1, y1 = box
    cols = (np.arange(width) + 0.5 >= x0) & (np.arange(width) + 0.5 < x1)
    rows = (np.arange(height) + 0.5 >= y0) & (np.arange(height) + 0.5 < y1)
    return rows[:, None] & cols[None, :]
