"""Smart tools against a real Label Studio 1.23.2 and `python -m backend.run` (tiny random
models: masks are noise, only the wiring and the protocol are checked).

The backend is connected with `is_interactive: true`; the test posts
`/api/ml/{id}/interactive-annotating` exactly as the browser does (protocol §8.3 step 4) with a
positive point, a box, and positive plus negative points, before any annotation and again after
pre-annotation, then checks the refinement rules against our stored pre-annotation.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import requests

from tests.e2e_helpers import (
    ELEPHANTS,
    PHASE_S,
    Backend,
    annotation_result,
    natural_size,
    wait_for,
)
from tests.lsserver import LabelStudio
from worker.labelstudio.brush_rle import rle_to_mask

pytestmark = pytest.mark.e2e

LABEL = "Elephant"
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    f'<BrushLabels name="tag" toName="image"><Label value="{LABEL}"/></BrushLabels>'
    f'<KeyPointLabels name="kp" toName="image" smart="true"><Label value="{LABEL}"/>'
    "</KeyPointLabels>"
    f'<RectangleLabels name="rect" toName="image" smart="true"><Label value="{LABEL}"/>'
    "</RectangleLabels></View>"
)


def point(x: float, y: float, size: tuple[int, int], positive: bool = True) -> dict[str, Any]:
    w, h = size
    return {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [LABEL]},
    }


def rect(x: float, y: float, bw: float, bh: float, size: tuple[int, int]) -> dict[str, Any]:
    w, h = size
    return {
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": x,
            "y": y,
            "width": bw,
            "height": bh,
            "rotation": 0,
            "rectanglelabels": [LABEL],
        },
    }


def interact(ls: LabelStudio, ml_id: int, task: int, regions: list[dict[str, Any]]) -> dict:
    """The browser's call; returns LS's reply ({"data": ...} or {"errors": [...]})."""
    reply = ls.request(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": task, "context": {"result": regions}},
        timeout=120.0,
    )
    assert reply.status_code == 200, reply.text
    return reply.json()


def answer_mask(reply: dict, size: tuple[int, int], version: str) -> np.ndarray:
    assert "errors" not in reply, reply
    data = reply["data"]
    assert data["model_version"] == version and 0.0 <= data["score"] <= 1.0
    (region,) = data["result"]
    assert (region["from_name"], region["to_name"], region["type"]) == (
        "tag",
        "image",
        "brushlabels",
    )
    assert region["value"]["brushlabels"] == [LABEL]
    assert (region["original_width"], region["original_height"]) == size
    return rle_to_mask(region["value"]["rle"], *size)  # raises unless W*H*4 values


def test_interactive_smart_tools(ls: LabelStudio, backend: Backend) -> None:
    images = sorted(ELEPHANTS.glob("*.jpg"))[:3]
    project = ls.create_project(CONFIG, title="gfsam-interactive")["id"]
    ls.import_images(project, images)
    tasks = sorted(t["id"] for t in ls.list_tasks(project))
    sizes = {t: natural_size(p) for t, p in zip(tasks, images, strict=True)}
    ml = ls.connect_ml_backend(project, backend.url, is_interactive=True)
    assert ml["is_interactive"]
    v0 = f"gfsam-p{project}-v0"
    first, size = tasks[0], sizes[tasks[0]]

    # Before any annotation: a point, a box, positive + negative points.
    started = time.monotonic()
    m = answer_mask(interact(ls, ml["id"], first, [point(50, 50, size)]), size, v0)
    print(f"first click (cold embedding) {time.monotonic() - started:.1f}s")
    assert m.shape == (size[1], size[0])
    started = time.monotonic()
    answer_mask(interact(ls, ml["id"], first, [rect(20, 20, 50, 40, size)]), size, v0)
    print(f"box click (warm) {time.monotonic() - started:.2f}s")
    both = [point(40, 40, size), point(80, 80, size, positive=False)]
    answer_mask(interact(ls, ml["id"], first, both), size, v0)
    bad = interact(ls, ml["id"], first, [point(50, 50, size, positive=False)])
    assert bad.get("errors") and "422" in bad["errors"][0]
    assert ls.predictions(project=project) == []  # suggestions only, nothing stored

    # Pre-annotation: one brush annotation; the other tasks get predictions through the API.
    w, h = size
    brush = np.zeros((h, w), dtype=bool)
    brush[h // 4 : h // 2, w // 4 : w // 2] = True
    ls.create_annotation(first, annotation_result({LABEL: brush}))
    second, size2 = tasks[1], sizes[tasks[1]]

    def predicted() -> dict | None:
        preds = [p for p in ls.predictions(task=second) if p["model_version"] != v0]
        return preds[0] if preds else None

    pred = wait_for("pre-annotation of task 2", predicted, ls, backend, PHASE_S)
    version = pred["model_version"]
    # (other tasks' pre-annotations may still arrive meanwhile: count the clicked task's only)
    before = len(ls.predictions(task=second))
    for regions in (
        [point(50, 50, size2)],
        [rect(10, 10, 60, 60, size2)],
        [point(30, 30, size2), point(70, 70, size2, positive=False)],
    ):
        answer_mask(interact(ls, ml["id"], second, regions), size2, version)
    assert len(ls.predictions(task=second)) == before  # still nothing stored by clicks

    # Refinement rules on our own prediction (when it has a region).
    regions = [r for r in pred["result"] if r["type"] == "brushlabels"]
    if regions:
        prior = np.zeros((size2[1], size2[0]), dtype=bool)
        for r in regions:
            prior |= rle_to_mask(r["value"]["rle"], *size2)
        ys, xs = np.nonzero(prior)
        y, x = int(ys[len(ys) // 2]), int(xs[len(xs) // 2])
        pct = (100 * (x + 0.5) / size2[0], 100 * (y + 0.5) / size2[1])
        removed = answer_mask(
            interact(ls, ml["id"], second, [point(*pct, size2, positive=False)]), size2, version
        )
        assert not removed[y, x] and removed.sum() < prior.sum()
        reshaped = answer_mask(interact(ls, ml["id"], second, [point(*pct, size2)]), size2, version)
        assert reshaped.any()
    stats = requests.get(f"{backend.url}/metrics", timeout=10).text
    print("\n".join(line for line in stats.splitlines() if "click" in line or "target" in line))
