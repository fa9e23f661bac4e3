"""Smart-tool prompts of an interactive /predict call: parsed and checked once, plain JSON.

Label Studio forwards the regions an annotator drew with smart controls as `params.context`
(docs/labelstudio-protocol.md §2 "Interactive flow", §4.5): `keypointlabels` regions are point
prompts (`is_positive` on the region, or `value.positive` in newer frontends; absent: positive)
and `rectanglelabels` regions are box prompts (newer frontends send every rectangle of the
control: the last one is the box, SAM takes one). Coordinates are percentages (0-100) of the
region's own `original_width` x `original_height`; here they become original pixels, which the
worker maps to the 1024 frame. Pure Python (no numpy): the API validates before queueing.

Every field a smart region carries is checked (issue 22): regions and their `value` are
objects, sizes whole numbers of pixels (1 to `MAX_SIDE`), coordinates numbers in 0-100,
`rotation` a number, `is_positive` / `positive` booleans, labels strings; a click holds at most
`max_points` points and `max_boxes` rectangles (`CLICK_MAX_POINTS`, `CLICK_MAX_BOXES`).
"""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.state.schemas import LabelConfigSummary

PROMPT_TYPES = ("keypointlabels", "rectanglelabels")
MAX_SIDE = 100_000  # pixels: no image side is larger (MAX_IMAGE_PIXELS caps the area anyway)
MAX_ROTATION = 360.0  # degrees either way
# Gestures (issue 20), chosen by the smart control's label value: "Cat" edits or adds one object;
# "Cat (all)" finds every object like the clicked one in the image; "Cat (teach)" does the same
# and adds the clicked object to the project's references (Settings.find_all_suffix,
# teach_suffix: the README's "Interactive smart tools").
Gesture = Literal["click", "find_all", "teach"]


class PromptError(ValueError):
    """The context cannot be used; the message says why (shown to the LS user as a 422)."""


class Prompts(BaseModel):
    """The prompts of one click, in original pixels of the task image.

    Attributes:
        label: the clicked region's label (an output label of the config), its gesture suffix
            removed.
        points: [N] (x, y) in original pixels (continuous: 0..W, 0..H).
        positive: [N] True for a positive point, False for a negative one (Alt-click).
        box: (x0, y0, x1, y1) in original pixels, or None.
        width, height: the region's original_width / original_height (the image's natural size).
        gesture: ``click`` (edit or add one object), ``find_all`` (every object like it in the
            image), ``teach`` (find_all, and the object becomes a reference of the project).
    """

    label: str
    points: list[tuple[float, float]] = []
    positive: list[bool] = []
    box: tuple[float, float, float, float] | None = None
    width: int = Field(ge=1, le=MAX_SIDE)
    height: int = Field(ge=1, le=MAX_SIDE)
    gesture: Gesture = "click"

    @property
    def single_click(self) -> bool:
        """One point and no box: ambiguous, SAM's multimask output is used."""
        return len(self.points) == 1 and self.box is None


class ClickJob(BaseModel):
    """Payload of `worker.tasks.click` (the interactive lane). The task's image is read
    from Label Studio by the worker (never the caller's copy of the task data)."""

    project: int
    task: int
    version: str  # current at the call: the prediction a click may refine
    from_name: str  # BrushLabels control of the answer
    to_name: str  # its Image
    data_key: str  # task.data key of the image
    prompts: Prompts
    # Epoch seconds after which its caller has given up (a 503): never run, never requeued.
    deadline: float | None = None


class TeachJob(BaseModel):
    """Payload of `worker.tasks.teach_shot`: the object a "teach" gesture clicked becomes a
    reference of its label (the worker decodes it again from the same prompts on LS's image)."""

    project: int
    task: int
    data_key: str
    prompts: Prompts


class WarmJob(BaseModel):
    """Payload of `worker.tasks.warm_target`: encode a task image opened in the editor."""

    project: int
    task: int
    data_key: str


def is_prompt_context(context: dict[str, Any] | None) -> bool:
    """True for a context with smart-tool regions (anything else keeps the batch path)."""
    result = (context or {}).get("result")
    return isinstance(result, list) and any(
        isinstance(r, dict) and r.get("type") in PROMPT_TYPES for r in result
    )


def parse_context(
    context: dict[str, Any],
    cfg: LabelConfigSummary,
    *,
    max_points: int,
    max_boxes: int,
    find_all_suffix: str = " (all)",
    teach_suffix: str = " (teach)",
) -> Prompts:
    """Points and at most one box from `params.context.result`, and the gesture the label's
    suffix names (`find_all_suffix`, `teach_suffix`; "" turns a gesture off).

    Raises:
        PromptError: no smart regions, a field of the wrong type or out of range (named), more
            than `max_points` points or `max_boxes` rectangles, a label that is no output label
            (after its gesture suffix), a zero-area box, disagreeing original sizes, only
            negative points and no box, or a find-all gesture without a positive point or box.
    """
    result = context.get("result")
    if not isinstance(result, list):
        raise PromptError("context.result is not a list of regions")
    regions = []
    for i, region in enumerate(result):
        if not isinstance(region, dict):
            raise PromptError(f"context.result[{i}] is not an object")
        if region.get("type") in PROMPT_TYPES:
            if not isinstance(region.get("value"), dict):
                raise PromptError(f"context.result[{i}].value is not an object")
            regions.append(region)
    if not regions:
        raise PromptError("context has no keypointlabels or rectanglelabels region")
    boxes = [r for r in regions if r["type"] == "rectanglelabels"]
    n_points = len(regions) - len(boxes)
    if n_points > max_points:
        raise PromptError(f"{n_points} points in one click: at most {max_points}")
    if len(boxes) > max_boxes:
        raise PromptError(f"{len(boxes)} rectangles in one click: at most {max_boxes}")
    width, height = _size(regions)
    for region in regions:
        _label(region)  # every region names a label, not only the clicked one
    label, gesture = _gesture(_label(regions[-1]), find_all_suffix, teach_suffix)
    if label not in cfg.labels:
        raise PromptError(
            f"label {label!r} is not an output label of the config "
            f"({', '.join(cfg.labels)}): add it to the brush, polygon or rectangle control"
        )
    points = [r for r in regions if r["type"] == "keypointlabels"]
    has_box = any(r["type"] == "rectanglelabels" for r in regions)
    if gesture != "click" and not has_box and not any(_positive(r) for r in points):
        raise PromptError("find all needs a positive point or a box on one object")
    out = Prompts(label=label, width=width, height=height, gesture=gesture)
    for region in regions:
        if region["type"] == "keypointlabels":
            x, y = _pct(region, "x"), _pct(region, "y")
            out.points.append((x * width / 100, y * height / 100))
            out.positive.append(_positive(region))
    for region in boxes[:-1]:
        _box(region, width, height)  # checked like the one used
    if boxes:
        out.box = _box(boxes[-1], width, height)
    return out


def _gesture(label: str, find_all_suffix: str, teach_suffix: str) -> tuple[str, Gesture]:
    """The output label and the gesture its smart label's suffix names."""
    if teach_suffix and label.endswith(teach_suffix) and len(label) > len(teach_suffix):
        return label[: -len(teach_suffix)], "teach"
    if find_all_suffix and label.endswith(find_all_suffix) and len(label) > len(find_all_suffix):
        return label[: -len(find_all_suffix)], "find_all"
    return label, "click"


def check_usable(prompts: Prompts, refining: bool) -> None:
    """Only negative points make no object, unless they edit our prediction (removal).

    Raises:
        PromptError: no positive point, no box, and nothing to refine.
    """
    if not refining and prompts.box is None and not any(prompts.positive):
        raise PromptError("only negative points: add a positive point or a box")


def _size(regions: list[dict[str, Any]]) -> tuple[int, int]:
    sizes = set()
    for region in regions:
        w, h = _side(region, "original_width"), _side(region, "original_height")
        sizes.add((w, h))
    if len(sizes) != 1:
        raise PromptError(f"smart regions disagree on the image size: {sorted(sizes)}")
    return sizes.pop()


def _side(region: dict[str, Any], name: str) -> int:
    """A whole number of pixels in 1..MAX_SIDE (640 or 640.0; not 0.5, "640" or true)."""
    raw = region.get(name)
    value = _number(raw)
    if value is None or value != int(value) or not 1 <= value <= MAX_SIDE:
        raise PromptError(
            f"{region['type']} {name}={_show(raw)} is not a whole number of pixels in 1-{MAX_SIDE}"
        )
    return int(value)


def _label(region: dict[str, Any]) -> str:
    labels = region["value"].get(region["type"])
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise PromptError(f"the {region['type']} region names no label (a list of strings)")
    return labels[0]


def _pct(region: dict[str, Any], name: str) -> float:
    raw = region["value"].get(name)
    value = _number(raw)
    if value is None or not 0 <= value <= 100:
        raise PromptError(f"{region['type']} {name}={_show(raw)} is not a percentage in 0-100")
    return value


def _positive(region: dict[str, Any]) -> bool:
    if "is_positive" in region:
        return _flag(region["is_positive"], "is_positive")
    return _flag(region["value"].get("positive", True), "value.positive")


def _flag(raw: object, name: str) -> bool:
    if not isinstance(raw, bool):
        raise PromptError(f"keypointlabels {name}={_show(raw)} is not true or false")
    return raw


def _rotation(region: dict[str, Any]) -> float:
    raw = region["value"].get("rotation")
    if raw is None:
        return 0.0
    value = _number(raw)
    if value is None or not -MAX_ROTATION <= value <= MAX_ROTATION:
        raise PromptError(f"rectanglelabels rotation={_show(raw)} is not a number of degrees")
    return value


def _box(region: dict[str, Any], width: int, height: int) -> tuple[float, float, float, float]:
    """Axis-aligned bounds of the (possibly rotated about its top-left corner) rectangle."""
    x, y = _pct(region, "x"), _pct(region, "y")
    w, h = _pct(region, "width"), _pct(region, "height")
    if w * width / 100 < 1 or h * height / 100 < 1:
        raise PromptError("the rectangle has zero area (under one pixel)")
    if x + w > 100 + 1e-6 or y + h > 100 + 1e-6:
        raise PromptError("the rectangle extends beyond the image (x + width or y + height > 100)")
    angle = math.radians(_rotation(region))
    x0, y0, bw, bh = x * width / 100, y * height / 100, w * width / 100, h * height / 100
    xs, ys = [x0], [y0]
    for dx, dy in ((bw, 0.0), (0.0, bh), (bw, bh)):
        xs.append(x0 + dx * math.cos(angle) - dy * math.sin(angle))
        ys.append(y0 + dx * math.sin(angle) + dy * math.cos(angle))
    return (
        max(0.0, min(xs)),
        max(0.0, min(ys)),
        min(float(width), max(xs)),
        min(float(height), max(ys)),
    )


def _number(value: object) -> float | None:
    """A finite JSON number as float, else None (booleans are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer beyond any float
        return None
    return number if math.isfinite(number) else None


def _show(value: object) -> str:
    """A caller's value for a message, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
