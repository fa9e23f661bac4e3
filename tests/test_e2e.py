"""Product-level test: a real Label Studio 1.23.2 driving the whole backend (`backend.run`).

The backend runs the way the README starts it (embedded redis-server, worker processes, API),
with tiny random-weight models: the masks are noise, so only the wiring is checked. Everything
the test does goes through Label Studio's REST API, as a browser would; the backend is only
asked for `/projects/{id}` (its progress endpoint) to read the reference set.

Phases (one project, shared state, so they run in file order):

1. connect the backend: webhook registered;
2. one brush annotation -> every other task gets a prediction of the current `/setup` version
   through the API, without any `/predict` call;
3. opening tasks without a prediction (`GET /api/tasks/{id}`) goes through `/predict`;
4. a task imported later and opened at once gets exactly one prediction;
5. a corrected annotation bumps the version and re-predicts the unlabeled tasks;
6. a second annotation, then "Retrieve Predictions" on all tasks: answers in time, no duplicate;
7. deleting an annotation shrinks the reference set and bumps the version again;
8. the task whose only annotation was deleted is pre-annotated again.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from tests.e2e_helpers import (
    COCO,
    CONFIG,
    DATA,
    ELEPHANTS,
    PHASE_S,
    Backend,
    annotation_result,
    by_task,
    check_prediction,
    natural_size,
    version_n,
    wait_for,
)
from tests.lsserver import LabelStudio

pytestmark = pytest.mark.e2e

# ---------------------------------------------------------------------------- the scenario


@pytest.fixture(scope="module")
def state() -> dict[str, Any]:
    """What the phases hand to each other; `passed` counts the phases that completed."""
    return {"passed": 0}


@pytest.fixture(autouse=True)
def _in_order(request: pytest.FixtureRequest, state: dict[str, Any]) -> None:
    """Phase n needs phases 1..n-1 to have passed (they build its state); skip otherwise."""
    n = int(request.node.name.split("_")[1])
    if state["passed"] != n - 1:
        pytest.skip(f"phase {n} needs phases 1-{n - 1}; only {state['passed']} passed")


def _images() -> list[Path]:
    elephants = sorted(ELEPHANTS.glob("*.jpg"))
    coco = sorted((COCO / "images").glob("*.jpg"))[:3]
    assert len(elephants) == 4 and len(coco) == 3, f"assets missing under {DATA}"
    return elephants + coco


def _unlabeled(state: dict[str, Any]) -> list[int]:
    return [t for t in state["tasks"] if t not in state["labeled"]]


def _all_have(
    ls: LabelStudio, state: dict[str, Any], version: str, tasks: list[int]
) -> dict[int, list[dict[str, Any]]] | None:
    """Predictions by task, once every task in `tasks` has one of `version`.

    The per-version counts are cheap; the full predictions (noise masks: ~1 MB each) are only
    fetched once the counts say they can be complete.
    """
    counts = ls.json("GET", f"/api/projects/{state['project']}/model-versions/")
    if counts.get(version, 0) < len(tasks):
        return None
    grouped = by_task(ls, state["project"])
    ok = all(any(p["model_version"] == version for p in grouped.get(t, [])) for t in tasks)
    return grouped if ok else None


def _assert_no_duplicates(grouped: dict[int, list[dict[str, Any]]]) -> None:
    for task, preds in grouped.items():
        versions = [p["model_version"] for p in preds]
        assert len(versions) == len(set(versions)), f"task {task}: duplicate versions {versions}"


def test_1_connect_registers_webhook(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    project = ls.create_project(CONFIG, title="gfsam-e2e")
    images = _images()
    ls.import_images(project["id"], images)
    tasks = ls.list_tasks(project["id"])
    files = {p.name: p for p in images}
    state.update(
        project=project["id"],
        tasks={t["id"]: files[t["data"]["image"].rsplit("-", 1)[-1]] for t in tasks},
        labeled={},
    )
    ml = ls.connect_ml_backend(project["id"], backend.url)
    assert ml["state"] == "CO", ml
    state["ml"] = ml["id"]
    hooks = ls.webhooks(project["id"])
    assert [h["url"] for h in hooks] == [f"{backend.url}/webhook"], hooks
    assert hooks[0]["send_for_all_actions"] and hooks[0]["is_active"]
    assert ls.get_project(project["id"])["model_version"] == "gfsam"  # the backend's title
    known = wait_for(
        "the worker's sync to register the project (read from Label Studio)",
        lambda: backend.known_project(project["id"]),
        ls,
        backend,
        180,
    )
    assert known["ready"] is False
    state["passed"] += 1


def test_2_annotation_preannotates_every_other_task(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    p = state["project"]
    ref_task = next(t for t, path in state["tasks"].items() if path.name == "000000286874.jpg")
    gt = np.array(Image.open(ELEPHANTS / "000000286874_mask.png")) > 0
    ground = np.zeros_like(gt)
    ground[int(gt.shape[0] * 0.8) :, :] = True
    masks = {"Elephant": gt, "Background-thing": ground & ~gt}
    predict_calls = backend.predict_calls()
    annotation = ls.create_annotation(ref_task, annotation_result(masks))
    state["labeled"][ref_task] = annotation["id"]
    state["masks"] = masks

    status = wait_for(
        "the first reference set",
        lambda: (s := backend.project(p))["ready"] and s,
        ls,
        backend,
        PHASE_S,
    )
    version = status["model_version"]
    assert annotation["id"] in status["shots"]["Elephant"]
    grouped = wait_for(
        f"{version} predictions on every unlabeled task",
        lambda: _all_have(ls, state, version, _unlabeled(state)),
        ls,
        backend,
        PHASE_S,
    )
    assert ls.get_ml_backend(state["ml"])["model_version"] == version  # what /setup returns
    for task in _unlabeled(state):
        (pred,) = [x for x in grouped[task] if x["model_version"] == version]
        check_prediction(pred, natural_size(state["tasks"][task]), version)
    _assert_no_duplicates(grouped)
    assert backend.predict_calls() == predict_calls, "pre-annotation must not need /predict"
    state["version"] = version
    state["passed"] += 1


def test_3_opening_tasks_goes_through_predict(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    p, version = state["project"], state["version"]
    calls = backend.predict_calls()
    # The annotated task was skipped by pre-annotation: opening it is a synchronous /predict.
    ref_task = next(iter(state["labeled"]))
    opened = ls.get_task(ref_task)
    inline = [x for x in opened["predictions"] if x["model_version"] == version]
    assert len(inline) == 1, opened["predictions"]
    check_prediction(inline[0], natural_size(state["tasks"][ref_task]), version)
    assert backend.predict_calls() == calls + 1

    # A task whose prediction was deleted: LS asks /predict again; the backend has delivered this
    # (task, version) before, so it re-posts it through the API instead of answering twice.
    task = _unlabeled(state)[0]
    ls.delete_predictions(p, [task])
    assert ls.predictions(task=task) == []
    ls.get_task(task)
    assert backend.predict_calls() == calls + 2
    grouped = wait_for(
        f"task {task} to get its {version} prediction back",
        lambda: _all_have(ls, state, version, [task]),
        ls,
        backend,
        PHASE_S,
    )
    _assert_no_duplicates(grouped)
    state["passed"] += 1


def test_4_opening_a_new_task_while_it_is_queued(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    """Import after pre-annotation: TASKS_CREATED queues it, and the annotator opens it at once."""
    p, version = state["project"], state["version"]
    new_image = sorted((COCO / "images").glob("*.jpg"))[3]
    ls.import_images(p, [new_image])
    new_task = max(t["id"] for t in ls.list_tasks(p))
    state["tasks"][new_task] = new_image
    ls.get_task(new_task)
    grouped = wait_for(
        f"new task {new_task} to get a {version} prediction",
        lambda: _all_have(ls, state, version, [new_task]),
        ls,
        backend,
        PHASE_S,
    )
    check_prediction(grouped[new_task][0], natural_size(new_image), version)
    _assert_no_duplicates(grouped)
    state["passed"] += 1


def test_5_correction_bumps_version_and_repredicts(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    p, old = state["project"], state["version"]
    ref_task, annotation = next(iter(state["labeled"].items()))
    masks = dict(state["masks"])
    masks["Elephant"] = np.roll(masks["Elephant"], 40, axis=1)  # a clearly different brush
    ls.update_annotation(annotation, annotation_result(masks))
    status = wait_for(
        "a version bump after the correction",
        lambda: (s := backend.project(p))["model_version"] != old and s,
        ls,
        backend,
        PHASE_S,
    )
    version = status["model_version"]
    assert version_n(version) > version_n(old)
    assert status["shots"]["Elephant"] == [annotation]
    grouped = wait_for(
        f"{version} predictions on every unlabeled task",
        lambda: _all_have(ls, state, version, _unlabeled(state)),
        ls,
        backend,
        PHASE_S,
    )
    assert ls.get_ml_backend(state["ml"])["model_version"] == version
    for task in _unlabeled(state):
        (pred,) = [x for x in grouped[task] if x["model_version"] == version]
        check_prediction(pred, natural_size(state["tasks"][task]), version)
    _assert_no_duplicates(grouped)
    state["version"] = version
    state["passed"] += 1


def test_6_second_annotation_and_retrieve_predictions(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    p, old = state["project"], state["version"]
    task = next(t for t in _unlabeled(state) if state["tasks"][t].parent.name == "images")
    classes = np.array(Image.open(COCO / "masks" / f"{state['tasks'][task].stem}.png"))
    mask = classes == np.unique(classes)[-1]
    annotation = ls.create_annotation(task, annotation_result({"Background-thing": mask}))
    state["labeled"][task] = annotation["id"]
    status = wait_for(
        "a version bump after the second annotation",
        lambda: (s := backend.project(p))["model_version"] != old and s,
        ls,
        backend,
        PHASE_S,
    )
    assert annotation["id"] in status["shots"]["Background-thing"]
    version = state["version"] = status["model_version"]

    start = time.monotonic()
    reply = ls.retrieve_predictions(p)  # one synchronous /predict for every task lacking v
    elapsed = time.monotonic() - start
    assert elapsed < 100.0, f"Retrieve Predictions took {elapsed:.0f}s (LS times out at 100 s)"
    assert reply["processed_items"] == len(state["tasks"]), reply
    grouped = wait_for(
        f"{version} predictions on every task",
        lambda: _all_have(ls, state, version, list(state["tasks"])),
        ls,
        backend,
        PHASE_S,
    )
    _assert_no_duplicates(grouped)
    print(f"Retrieve Predictions on {len(state['tasks'])} tasks: {elapsed:.1f}s")
    state["passed"] += 1


def test_7_deleting_an_annotation_shrinks_the_references(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    p, old = state["project"], state["version"]
    task = list(state["labeled"])[-1]
    annotation = state["labeled"].pop(task)
    state["unlabeled_again"] = task
    ls.delete_annotation(annotation)
    status = wait_for(
        "the deleted annotation to leave the reference set",
        lambda: (s := backend.project(p))["model_version"] != old and s,
        ls,
        backend,
        PHASE_S,
    )
    shots = [a for ids in status["shots"].values() for a in ids]
    assert annotation not in shots and set(shots) == set(state["labeled"].values())
    version = state["version"] = status["model_version"]
    assert version_n(version) > version_n(old)
    assert ls.get_ml_backend(state["ml"])["model_version"] == version
    others = [t for t in _unlabeled(state) if t != task]
    grouped = wait_for(
        f"{version} predictions on every task that was never labeled",
        lambda: _all_have(ls, state, version, others),
        ls,
        backend,
        PHASE_S,
    )
    _assert_no_duplicates(grouped)
    assert not status["failures"], status["failures"]
    state["passed"] += 1


def test_8_task_unlabeled_by_a_delete_is_preannotated_again(
    ls: LabelStudio, backend: Backend, state: dict[str, Any]
) -> None:
    """Deleting a task's only annotation makes it an unlabeled task like any other: it gets
    pre-annotated at the new version without anyone opening it."""
    task, version = state["unlabeled_again"], state["version"]
    grouped = wait_for(
        f"task {task} (its annotation deleted) to get a {version} prediction",
        lambda: _all_have(ls, state, version, [task]),
        ls,
        backend,
        60.0,
    )
    _assert_no_duplicates(grouped)
    state["passed"] += 1
