"""Any segmentation control (issue 20), pure parts: which controls a config serves, result
regions both ways in each control, the merge rule of clicks, and the gesture suffixes."""

from __future__ import annotations

import numpy as np
import pytest

from backend.state.labelconfig import LabelConfigError, parse_label_config
from backend.state.prompts import PromptError, Prompts, parse_context
from backend.state.schemas import LabelConfigSummary
from gfsam.geometry import GeometryParams
from tests.fakes import FakeSam
from worker.clicks.edit_rules import instances, join, refine
from worker.labelstudio.shapes import annotation_shapes, shapes_to_result

CAPS = {"max_points": 64, "max_boxes": 16}  # the settings' defaults
MIXED = (
    '<View><Image name="img" value="$image"/>'
    '<PolygonLabels name="poly" toName="img"><Label value="Cat"/><Label value="Dog"/>'
    "</PolygonLabels>"
    '<BrushLabels name="brush" toName="img"><Label value="Dog"/><Label value="Sky"/></BrushLabels>'
    '<RectangleLabels name="box" toName="img"><Label value="Car"/></RectangleLabels>'
    '<RectangleLabels name="smart" toName="img" smart="true"><Label value="Sky"/></RectangleLabels>'
    '<KeyPointLabels name="kp" toName="img" smart="true"><Label value="Cat (all)"/>'
    "</KeyPointLabels></View>"
)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum()) / max(1, int((a | b).sum()))


def test_a_config_serves_every_segmentation_control_each_label_once() -> None:
    cfg = parse_label_config(MIXED)
    assert [(c.name, c.kind, c.labels) for c in cfg.controls] == [
        ("poly", "polygon", ["Cat", "Dog"]),
        ("brush", "brush", ["Sky"]),  # Dog belongs to the first control listing it
        ("box", "rectangle", ["Car"]),
    ]
    assert cfg.labels == ["Cat", "Dog", "Sky", "Car"]
    assert [c.name for c in cfg.box_prompts] == ["smart"]  # smart rectangles: prompt tools
    assert cfg.control_of("Car").result_type == "rectanglelabels"
    only_smart = (
        '<View><Image name="i" value="$x"/><RectangleLabels name="r" toName="i" smart="true">'
        '<Label value="A"/></RectangleLabels></View>'
    )
    assert parse_label_config(only_smart).controls[0].kind == "rectangle"  # then it is the output
    with pytest.raises(LabelConfigError, match="PolygonLabels"):
        parse_label_config(
            '<View><Image name="i" value="$x"/><Choices name="c" toName="i">'
            '<Choice value="a"/></Choices></View>'
        )


def test_a_summary_stored_before_controls_reads_as_one_brush_control() -> None:
    old = LabelConfigSummary.model_validate(
        {"from_name": "tag", "to_name": "image", "data_key": "image", "labels": ["A", "B"]}
    )
    assert [(c.name, c.kind, c.labels) for c in old.controls] == [("tag", "brush", ["A", "B"])]


def _scene(h: int = 90, w: int = 120) -> dict[str, np.ndarray]:
    yy, xx = np.mgrid[0:h, 0:w]
    cat = (yy - 30) ** 2 + (xx - 30) ** 2 <= 15**2
    car = np.zeros((h, w), dtype=bool)
    car[50:80, 60:110] = True
    sky = np.zeros((h, w), dtype=bool)
    sky[:10, :] = True
    return {"Cat": cat, "Car": car, "Sky": sky}


def test_each_label_goes_out_in_its_control_and_reads_back() -> None:
    cfg, masks = parse_label_config(MIXED), _scene()
    result = shapes_to_result([(lb, m, 0.7) for lb, m in masks.items()], cfg, GeometryParams())
    types = {r["value"][r["type"]][0]: (r["type"], r["from_name"]) for r in result}
    assert types == {
        "Cat": ("polygonlabels", "poly"),
        "Car": ("rectanglelabels", "box"),
        "Sky": ("brushlabels", "brush"),
    }
    for region in result:
        assert (region["original_width"], region["original_height"]) == (120, 90)
        if region["type"] == "polygonlabels":
            assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in region["value"]["points"])
    shapes = annotation_shapes(result, cfg)
    assert iou(shapes["Cat"].mask, masks["Cat"]) >= 0.95
    assert np.array_equal(shapes["Car"].mask, masks["Car"]) and len(shapes["Car"].boxes) == 1
    assert np.array_equal(shapes["Sky"].mask, masks["Sky"])
    assert (
        shapes_to_result([(lb, m, 0.7) for lb, m in masks.items()], cfg, GeometryParams()) == result
    )


def test_one_polygon_and_one_box_per_piece() -> None:
    cfg, masks = parse_label_config(MIXED), _scene()
    two = masks["Car"].copy()
    two[5:20, 5:20] = True
    result = shapes_to_result([("Car", two, 0.5), ("Cat", two, 0.5)], cfg, GeometryParams())
    assert [r["type"] for r in result] == ["rectanglelabels"] * 2 + ["polygonlabels"] * 2


def test_a_smart_rectangle_seeds_only_a_label_drawn_no_other_way() -> None:
    cfg = parse_label_config(MIXED)
    box = {
        "from_name": "smart",
        "to_name": "img",
        "type": "rectanglelabels",
        "original_width": 100,
        "original_height": 50,
        "value": {
            "x": 10,
            "y": 20,
            "width": 30,
            "height": 40,
            "rotation": 0,
            "rectanglelabels": ["Sky"],
        },
    }
    shape = annotation_shapes([box], cfg)["Sky"]
    assert shape.boxes == [(10.0, 10.0, 40.0, 30.0)] and shape.mask.sum() == 30 * 20
    brush = shapes_to_result([("Sky", shape.mask, 1.0)], cfg, GeometryParams())
    assert annotation_shapes([box, *brush], cfg)["Sky"].boxes == []  # the brush wins
    with pytest.raises(ValueError, match="rotated"):
        annotation_shapes([{**box, "value": {**box["value"], "rotation": 30}}], cfg)


def test_gesture_suffixes_name_the_output_label() -> None:
    cfg = parse_label_config(MIXED)
    point = {
        "type": "keypointlabels",
        "original_width": 100,
        "original_height": 50,
        "value": {"x": 50, "y": 50, "keypointlabels": ["Cat (all)"]},
    }
    prompts = parse_context({"result": [point]}, cfg, **CAPS)
    assert (prompts.label, prompts.gesture) == ("Cat", "find_all")
    teach = {**point, "value": {**point["value"], "keypointlabels": ["Cat (teach)"]}}
    assert parse_context({"result": [teach]}, cfg, **CAPS).gesture == "teach"
    with pytest.raises(PromptError, match="not an output label"):  # the gesture turned off
        parse_context({"result": [point]}, cfg, **CAPS, find_all_suffix="")
    negative = {**point, "is_positive": False}
    with pytest.raises(PromptError, match="find all needs"):
        parse_context({"result": [negative]}, cfg, **CAPS)


def test_positive_clicks_on_two_fragments_join_them() -> None:
    prior = np.zeros((60, 100), dtype=bool)
    prior[20:40, 10:30] = True
    prior[20:40, 50:70] = True
    prior[50:55, 90:95] = True  # a third instance nobody clicks
    prompts = Prompts(
        label="Cat",
        points=[(20.0, 30.0), (60.0, 30.0)],
        positive=[True, True],
        width=100,
        height=60,
    )
    sam = FakeSam()
    out = refine(sam, np.zeros(1), prompts, (60, 100), prior, 0.6)
    assert out.rule == "merge" and out.decoded == 0 and not sam.calls
    comps = instances(out.mask)
    assert comps.max() == 2  # the two fragments are one, the third is kept apart
    assert comps[30, 20] == comps[30, 60] and out.mask[50:55, 90:95].all()
    assert out.mask[30, 40]  # the gap between them is bridged
    assert not out.mask[5, 40]  # within their hull only


def test_join_leaves_one_piece_however_far_apart() -> None:
    far = np.zeros((100, 100), dtype=bool)
    far[0:5, 0:5] = True
    far[95:100, 95:100] = True
    assert instances(join(far)).max() == 1
