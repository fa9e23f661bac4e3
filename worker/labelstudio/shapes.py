"""Label Studio result regions of any served control, both ways (issue 20).

Reading: an annotation's (or prediction's) `brushlabels`, `polygonlabels` and `rectanglelabels`
regions become one mask per label (regions of one label OR-ed), with the rectangles kept as
boxes too (a rectangle shot becomes a SAM box prompt on its image: `worker.correction
.references`). Writing: each label's regions go out in its own control (`LabelConfigSummary
.control_of`): one brush region per region, one polygon per connected piece (holes as keyholes,
`gfsam.geometry.mask_to_polygons`), one box per connected piece. Percent coordinates are of the
region's `original_width` x `original_height`; a pixel (c, r) spans [c, c + 1) x [r, r + 1).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from backend.state.schemas import LabelConfigSummary, OutputControl
from gfsam.geometry import (
    GeometryParams,
    box_to_mask,
    mask_to_box,
    mask_to_polygons,
    polygons_to_mask,
)
from worker.labelstudio.brush_rle import BrushError, regions_to_result, rle_to_mask

Box = tuple[float, float, float, float]  # (x0, y0, x1, y1) continuous pixels


@dataclass
class LabelShape:
    """One label of one annotation: bool [H, W] mask (union of its regions) and, for a
    rectangle control, the boxes drawn."""

    mask: np.ndarray
    boxes: list[Box] = field(default_factory=list)


def _size(region: dict[str, Any], i: int) -> tuple[int, int]:
    try:
        width, height = int(region["original_width"]), int(region["original_height"])
    except (KeyError, TypeError, ValueError):
        raise BrushError(f"region {i}: missing or invalid original_width/height") from None
    if width <= 0 or height <= 0:
        raise BrushError(f"region {i}: original size {width}x{height}")
    return width, height


def _number(value: object, what: str, i: int) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise BrushError(f"region {i}: {what}={value!r} is not a number")
    return float(value)


def _region_mask(
    region: dict[str, Any], control: OutputControl, i: int
) -> tuple[np.ndarray, Box | None]:
    width, height = _size(region, i)
    value = region.get("value") or {}
    if control.kind == "brush":
        if value.get("format") != "rle":
            raise BrushError(f"region {i}: brush format {value.get('format')!r}, expected 'rle'")
        return rle_to_mask(value.get("rle") or [], width, height), None
    if control.kind == "polygon":
        points = value.get("points")
        if not isinstance(points, list) or len(points) < 3:
            raise BrushError(f"region {i}: a polygon needs at least 3 points")
        ring = np.array(
            [
                (_number(p[0], "x", i) * width / 100, _number(p[1], "y", i) * height / 100)
                for p in points
                if isinstance(p, list | tuple) and len(p) >= 2
            ]
        )
        if len(ring) < 3:
            raise BrushError(f"region {i}: a polygon needs at least 3 [x, y] points")
        return polygons_to_mask([ring], height, width), None
    x, y = _number(value.get("x"), "x", i), _number(value.get("y"), "y", i)
    w, h = _number(value.get("width"), "width", i), _number(value.get("height"), "height", i)
    if _number(value.get("rotation") or 0, "rotation", i) % 360 != 0:
        raise BrushError(f"region {i}: a rotated rectangle cannot be a shot")
    box = (x * width / 100, y * height / 100, (x + w) * width / 100, (y + h) * height / 100)
    return box_to_mask(box, height, width), box


def annotation_shapes(
    result: list[dict[str, Any]], cfg: LabelConfigSummary
) -> dict[str, LabelShape]:
    """Union of the regions of each served label, read from its own control.

    Args:
        result: an annotation's or prediction's ``result`` list.
        cfg: the project's controls; regions of other controls, and labels a region's control
            does not own, are ignored.

    Returns:
        label -> `LabelShape` (H, W from the regions' ``original_height``/``original_width``).

    Raises:
        BrushError: a region of a served control is malformed, or its size differs from another
            region of the same label.
    """
    shapes: dict[str, LabelShape] = {}
    prompted: dict[str, LabelShape] = {}  # rectangles of smart prompt controls, per label
    box_prompts = {c.name: c for c in cfg.box_prompts}
    for i, region in enumerate(result):
        name = str(region.get("from_name"))
        control = cfg.control_named(name)
        into = shapes
        if control is None and name in box_prompts:
            control, into = box_prompts[name], prompted
        if control is None or str(region.get("type", "")).lower() != control.result_type:
            continue
        value = region.get("value") or {}
        labels = [lb for lb in value.get(control.result_type) or [] if lb in control.labels]
        if not labels:
            continue
        if into is prompted:
            labels = [lb for lb in labels if lb in cfg.labels]
        mask, box = _region_mask(region, control, i)
        for label in labels:
            prev = into.get(label)
            if prev is not None and prev.mask.shape != mask.shape:
                raise BrushError(
                    f"region {i}: label {label!r} is {mask.shape[1]}x{mask.shape[0]}, "
                    f"earlier region was {prev.mask.shape[1]}x{prev.mask.shape[0]}"
                )
            if prev is None:
                prev = into[label] = LabelShape(np.zeros_like(mask))
            prev.mask |= mask
            if box is not None:
                prev.boxes.append(box)
    for label, shape in prompted.items():  # a box seeds only a label drawn no other way
        shapes.setdefault(label, shape)
    return shapes


def annotation_masks(
    result: list[dict[str, Any]], cfg: LabelConfigSummary
) -> dict[str, np.ndarray]:
    """`annotation_shapes` as label -> bool [H, W] mask."""
    return {label: shape.mask for label, shape in annotation_shapes(result, cfg).items()}


def _pieces(mask: np.ndarray) -> list[np.ndarray]:
    labels, count = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return [labels == k for k in range(1, count + 1)]


def _region_id(control: str, label: str, shape: object) -> str:
    digest = hashlib.blake2b(digest_size=5)
    digest.update(json.dumps([control, label, shape], sort_keys=True).encode())
    return digest.hexdigest()


def _pct(values: np.ndarray, full: int) -> list[float]:
    return [round(float(v) * 100.0 / full, 4) for v in values]


def shapes_to_result(
    regions: Sequence[tuple[str, np.ndarray, float]],
    cfg: LabelConfigSummary,
    params: GeometryParams,
    *,
    to_name: str | None = None,
) -> list[dict[str, Any]]:
    """Result regions for (label, bool [H, W] mask, score), each in its label's control.

    Brush: one region per mask (`brush_rle.regions_to_result`). Polygon: one region per
    connected piece (simplified to `params.polygon_tolerance_px`, at most
    `params.polygon_max_points` vertices, holes as keyholes). Rectangle: one box per connected
    piece. Ids are deterministic (control, label, shape).

    Raises:
        BrushError: a mask is not 2-D. KeyError: a label in no control.
    """
    target = to_name or cfg.to_name
    out: list[dict[str, Any]] = []
    for label, mask, score in regions:
        control = cfg.control_of(label)
        mask = np.asarray(mask)
        if control.kind == "brush":
            out += regions_to_result([(label, mask, score)], from_name=control.name, to_name=target)
            continue
        if mask.ndim != 2:
            raise BrushError(f"mask for {label!r} must be 2-D, got shape {mask.shape}")
        height, width = mask.shape
        base = {
            "from_name": control.name,
            "to_name": target,
            "type": control.result_type,
            "original_width": int(width),
            "original_height": int(height),
            "image_rotation": 0,
            "score": float(score),
        }
        for piece in _pieces(mask):
            if control.kind == "polygon":
                for ring in mask_to_polygons(piece, params):
                    points = [
                        [x, y]
                        for x, y in zip(
                            _pct(ring[:, 0], width), _pct(ring[:, 1], height), strict=True
                        )
                    ]
                    value = {"points": points, "closed": True, "polygonlabels": [label]}
                    out.append(
                        {"id": _region_id(control.name, label, points), **base, "value": value}
                    )
            else:
                box = mask_to_box(piece)
                if box is None:
                    continue
                x0, y0, x1, y1 = box
                value = {
                    "x": round(x0 * 100.0 / width, 4),
                    "y": round(y0 * 100.0 / height, 4),
                    "width": round((x1 - x0) * 100.0 / width, 4),
                    "height": round((y1 - y0) * 100.0 / height, 4),
                    "rotation": 0,
                    "rectanglelabels": [label],
                }
                out.append({"id": _region_id(control.name, label, box), **base, "value": value})
    return out
