"""Any segmentation project against a real Label Studio 1.23.2 and `python -m backend.run` (issue
20), with tiny random-weight models: the masks are noise, so the wiring is what is checked.

1. a PolygonLabels project whose first task is annotated with a polygon: every other task gets
   a prediction LS stores and returns, whose regions are `polygonlabels` of that control;
2. a brush project whose first annotation is only a smart rectangle: the rectangle seeds the
   label (a box-derived shot) and the other tasks get brush predictions;
3. "find all like this" through LS's interactive-annotating API: one region per instance, each
   in the label's control, the clicked point inside the first.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e_helpers import (
    ELEPHANTS,
    PHASE_S,
    Backend,
    backend_env,
    natural_size,
    running_backend,
    wait_for,
)
from tests.lsserver import LabelStudio, free_port
from worker.labelstudio.brush_rle import rle_to_mask

pytestmark = pytest.mark.e2e

LABEL = "Elephant"
POLYGONS = (
    '<View><Image name="image" value="$image"/>'
    f'<PolygonLabels name="poly" toName="image"><Label value="{LABEL}"/></PolygonLabels></View>'
)
BRUSH_WITH_SMART_TOOLS = (
    '<View><Image name="image" value="$image"/>'
    f'<BrushLabels name="tag" toName="image"><Label value="{LABEL}"/></BrushLabels>'
    f'<RectangleLabels name="box" toName="image" smart="true"><Label value="{LABEL}"/>'
    "</RectangleLabels>"
    f'<KeyPointLabels name="kp" toName="image" smart="true"><Label value="{LABEL}"/>'
    f'<Label value="{LABEL} (all)"/></KeyPointLabels></View>'
)


@pytest.fixture(scope="module")
def painting_backend(
    ls: LabelStudio, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """The backend as the README runs it, tiny models, painting whatever GF-SAM keeps (argmax:
    the random-weight similarities mean nothing to the split assignment's reject)."""
    base = tmp_path_factory.mktemp("backend-any")
    port = free_port()
    env = backend_env(ls, port, base / "data") | {"ASSIGN": "argmax", "DISCOVER": "false"}
    with running_backend(env, port, base) as server:
        yield server


def _project(
    ls: LabelStudio, backend: Backend, config: str, title: str
) -> tuple[int, list[int], int]:
    """A project of three elephant images connected to the backend: (project, tasks, ML id)."""
    images = sorted(ELEPHANTS.glob("*.jpg"))[:3]
    project = ls.create_project(config, title=title)["id"]
    ls.import_images(project, images)
    tasks = sorted(t["id"] for t in ls.list_tasks(project))
    ml = ls.connect_ml_backend(project, backend.url, is_interactive=True)
    return project, tasks, int(ml["id"])


def _predictions_of_others(
    ls: LabelStudio, backend: Backend, tasks: list[int], what: str
) -> dict[int, dict[str, Any]]:
    def all_predicted() -> dict[int, dict[str, Any]] | None:
        found = {}
        for task in tasks[1:]:
            preds = [p for p in ls.predictions(task=task) if not p["model_version"].endswith("v0")]
            if not preds:
                return None
            found[task] = preds[-1]
        return found

    return wait_for(what, all_predicted, ls, backend, PHASE_S)


def test_polygon_project_gets_polygon_predictions(
    ls: LabelStudio, painting_backend: Backend
) -> None:
    project, tasks, _ = _project(ls, painting_backend, POLYGONS, "gfsam-polygons")
    size = natural_size(sorted(ELEPHANTS.glob("*.jpg"))[0])
    polygon = {
        "from_name": "poly",
        "to_name": "image",
        "type": "polygonlabels",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {"points": [[20, 20], [70, 25], [65, 80], [25, 75]], "polygonlabels": [LABEL]},
    }
    ls.create_annotation(tasks[0], [polygon])
    preds = _predictions_of_others(ls, painting_backend, tasks, "polygon pre-annotation")
    regions = [r for p in preds.values() for r in p["result"]]
    for pred in preds.values():
        assert pred["model_version"].startswith(f"gfsam-p{project}-v")
    for region in regions:
        assert (region["from_name"], region["type"]) == ("poly", "polygonlabels")
        assert region["value"]["polygonlabels"] == [LABEL]
        points = region["value"]["points"]
        assert len(points) >= 3 and all(0 <= x <= 100 and 0 <= y <= 100 for x, y in points)
    shots = requests.get(f"{painting_backend.url}/projects/{project}", timeout=10).json()
    print(f"polygon project: {len(regions)} polygon regions stored; shots {shots.get('shots')}")


def test_smart_rectangle_seeds_a_brush_project_and_find_all_answers_instances(
    ls: LabelStudio, painting_backend: Backend
) -> None:
    project, tasks, ml_id = _project(ls, painting_backend, BRUSH_WITH_SMART_TOOLS, "gfsam-boxes")
    images = sorted(ELEPHANTS.glob("*.jpg"))[:3]
    w, h = natural_size(images[0])
    box = {
        "from_name": "box",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": w,
        "original_height": h,
        "image_rotation": 0,
        "value": {
            "x": 20,
            "y": 20,
            "width": 50,
            "height": 50,
            "rotation": 0,
            "rectanglelabels": [LABEL],
        },
    }
    ls.create_annotation(tasks[0], [box])
    preds = _predictions_of_others(ls, painting_backend, tasks, "pre-annotation from a box")
    for pred in preds.values():
        for region in pred["result"]:
            assert (region["from_name"], region["type"]) == ("tag", "brushlabels")
    shots = requests.get(f"{painting_backend.url}/projects/{project}", timeout=10).json()
    print(f"box-seeded project: shots {shots.get('shots')}")

    # Find all like this: a smart keypoint of the "(all)" label on task 2.
    w2, h2 = natural_size(images[1])
    click = {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": w2,
        "original_height": h2,
        "image_rotation": 0,
        "is_positive": True,
        "value": {"x": 50, "y": 50, "width": 0.5, "keypointlabels": [f"{LABEL} (all)"]},
    }
    reply = ls.request(
        "POST",
        f"/api/ml/{ml_id}/interactive-annotating",
        json={"task": tasks[1], "context": {"result": [click]}},
        timeout=120.0,
    )
    assert reply.status_code == 200, reply.text
    data = reply.json()
    assert "errors" not in data, data
    regions = data["data"]["result"]
    assert regions, "find all answered nothing"
    assert len({r["id"] for r in regions}) == len(regions)  # one region per instance
    masks = []
    for region in regions:
        assert (region["from_name"], region["type"]) == ("tag", "brushlabels")
        assert region["value"]["brushlabels"] == [LABEL]
        masks.append(rle_to_mask(region["value"]["rle"], w2, h2))
    assert masks[0][h2 // 2, w2 // 2]  # the clicked object first
    assert not any((a & b).any() for i, a in enumerate(masks) for b in masks[i + 1 :])
    print(f"find all: {len(regions)} region(s)")
