"""backend/state/prompts.py: smart-tool regions -> prompts in original pixels, bad input named."""

from __future__ import annotations

from typing import Any

import pytest

from backend.state.prompts import PromptError, check_usable, is_prompt_context, parse_context
from backend.state.schemas import LabelConfigSummary

LIMITS = {"max_points": 64, "max_boxes": 16}
CFG = LabelConfigSummary(from_name="tag", to_name="image", data_key="image", labels=["Cat", "Dog"])


def point(x: float, y: float, label: str = "Cat", **extra: Any) -> dict[str, Any]:
    region = {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": 200,
        "original_height": 100,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }
    return region | extra


def box(x: float, y: float, w: float, h: float, label: str = "Cat") -> dict[str, Any]:
    return {
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": 200,
        "original_height": 100,
        "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": [label]},
    }


def test_points_become_original_pixels_with_their_sign() -> None:
    ctx = {"result": [point(50, 40, is_positive=True), point(10, 90, is_positive=False)]}
    prompts = parse_context(ctx, CFG, **LIMITS)
    assert prompts.label == "Cat" and (prompts.width, prompts.height) == (200, 100)
    assert prompts.points == [(100.0, 40.0), (20.0, 90.0)]
    assert prompts.positive == [True, False] and prompts.box is None
    assert not prompts.single_click


def test_newer_frontends_value_positive_and_default_positive() -> None:
    ctx = {
        "result": [
            point(50, 40, value={"x": 50, "y": 40, "positive": False, "keypointlabels": ["Dog"]}),
            point(1, 1),
        ]
    }
    prompts = parse_context(ctx, CFG, **LIMITS)
    assert prompts.positive == [False, True]


def test_the_last_rectangle_is_the_box() -> None:
    ctx = {"result": [box(0, 0, 10, 10), box(25, 50, 50, 25, "Dog")]}
    prompts = parse_context(ctx, CFG, **LIMITS)
    assert prompts.label == "Dog" and prompts.points == []
    assert prompts.box == (50.0, 50.0, 150.0, 75.0)


def test_single_click() -> None:
    assert parse_context({"result": [point(5, 5)]}, CFG, **LIMITS).single_click


@pytest.mark.parametrize(
    ("regions", "reason"),
    [
        ([point(50, 50, "Bird")], "not an output label"),
        ([point(101, 50)], "not a percentage"),
        ([point(-1, 50)], "not a percentage"),
        ([box(10, 10, 0, 20)], "zero area"),
        ([point(5, 5, original_width=None)], "original_width"),
        (
            [{"type": "keypointlabels", "value": {"x": 1, "y": 1, "keypointlabels": ["Cat"]}}],
            "original_width",
        ),
        ([point(5, 5), point(5, 5, original_width=300)], "disagree"),
        ([{"type": "brushlabels"}], "no keypointlabels or rectanglelabels"),
    ],
)
def test_bad_input_is_named(regions: list[dict[str, Any]], reason: str) -> None:
    with pytest.raises(PromptError, match=reason):
        parse_context({"result": regions}, CFG, **LIMITS)


def test_only_negative_points_need_something_to_refine() -> None:
    prompts = parse_context({"result": [point(5, 5, is_positive=False)]}, CFG, **LIMITS)
    with pytest.raises(PromptError, match="only negative"):
        check_usable(prompts, refining=False)
    check_usable(prompts, refining=True)


def test_prompt_context_detection() -> None:
    assert is_prompt_context({"result": [point(1, 1)]})
    assert not is_prompt_context(None)
    assert not is_prompt_context({"result": [{"type": "brushlabels"}]})


@pytest.mark.parametrize(
    ("regions", "reason"),
    [  # issue 22, item 7: every field checked, each a PromptError (422), never a crash (500)
        (
            [box(10, 10, 20, 20) | {"value": {**box(10, 10, 20, 20)["value"], "rotation": "x"}}],
            "rotation='x' is not a number",
        ),
        (
            [box(10, 10, 20, 20) | {"value": {**box(10, 10, 20, 20)["value"], "rotation": {}}}],
            "rotation",
        ),
        ([point(5, 5, value=["x"])], r"result\[0\].value is not an object"),
        ([point(5, 5, value="x")], "value is not an object"),
        ([point(5, 5, original_width=0.5)], "original_width=0.5 is not a whole number"),
        ([point(5, 5, original_width=200.5)], "original_width=200.5"),
        ([point(5, 5, original_height="100")], "original_height='100'"),
        ([point(5, 5, original_width=True)], "original_width=True"),
        ([point(5, 5, original_width=10**400)], "original_width="),
        ([point(5, 5, original_width=10**6)], "1-100000"),
        ([point(5, 5, is_positive="no")], "is_positive='no' is not true or false"),
        (
            [point(5, 5, value={"x": 5, "y": 5, "positive": 1, "keypointlabels": ["Cat"]})],
            "value.positive=1",
        ),
        ([point(5, 5, value={"x": 5, "y": 5, "keypointlabels": [1]})], "names no label"),
        ([point(5, 5, value={"x": "5", "y": 5, "keypointlabels": ["Cat"]})], "x='5'"),
        ([point(5, 5), "not a region"], r"result\[1\] is not an object"),
        ([box(10, 10, 20, 20), box(0, 0, 0, 0)], "zero area"),  # an unused box is checked too
    ],
)
def test_every_field_is_validated(regions: list[Any], reason: str) -> None:
    with pytest.raises(PromptError, match=reason):
        parse_context({"result": regions}, CFG, **LIMITS)


def test_result_that_is_not_a_list_is_named() -> None:
    with pytest.raises(PromptError, match="not a list"):
        parse_context({"result": {"type": "keypointlabels"}}, CFG, **LIMITS)


def test_points_and_boxes_per_click_are_capped() -> None:
    """Issue 22, item 5: more points or rectangles than the caps are refused, named."""
    points = [point(1 + i % 90, 1 + i % 90) for i in range(65)]
    with pytest.raises(PromptError, match="65 points in one click: at most 64"):
        parse_context({"result": points}, CFG, **LIMITS)
    assert len(parse_context({"result": points[:64]}, CFG, **LIMITS).points) == 64
    boxes = [box(10, 10, 20, 20)] * 17
    with pytest.raises(PromptError, match="17 rectangles in one click: at most 16"):
        parse_context({"result": boxes}, CFG, **LIMITS)
    assert parse_context({"result": boxes[:16]}, CFG, **LIMITS).box is not None
