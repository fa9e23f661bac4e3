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

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pytest
import requests
from PIL import Image, ImageOps

from tests.lsserver import REPO, LabelStudio, free_port
from worker.labelstudio.brush_rle import mask_to_rle, masks_to_result, rle_to_mask

pytestmark = pytest.mark.e2e

DATA = REPO.parent / "shared" / "assets" / "data"
ELEPHANTS = DATA / "coco_elephant_example"
COCO = DATA / "coco128_seg"
LABELS = ("Elephant", "Background-thing")
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image">'
    + "".join(f'<Label value="{label}"/>' for label in LABELS)
    + "</BrushLabels></View>"
)
BACKEND_START_S = 120.0
PHASE_S = 300.0  # one re-fit plus pre-annotation of ~8 tasks with tiny CPU models
T = TypeVar("T")


# ---------------------------------------------------------------------------- the backend


@dataclass
class Backend:
    """`python -m backend.run` as a child process, its URL and its captured output."""

    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, lines: int = 80) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def predict_calls(self) -> int:
        """`/predict` requests served so far (uvicorn access log)."""
        return self.log_path.read_text(errors="replace").count('"POST /predict HTTP')

    def project(self, project_id: int) -> dict[str, Any]:
        """GET /projects/{id}: version, shots per label, job counts, failures."""
        reply = requests.get(f"{self.url}/projects/{project_id}", timeout=10)
        reply.raise_for_status()
        return reply.json()

    def known_project(self, project_id: int) -> dict[str, Any] | None:
        """GET /projects/{id}, or None while the backend does not know the project yet (it
        registers a project once its worker has read it from Label Studio)."""
        reply = requests.get(f"{self.url}/projects/{project_id}", timeout=10)
        if reply.status_code == 404:
            return None
        reply.raise_for_status()
        return reply.json()


def _backend_env(ls: LabelStudio, port: int, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "GFSAM_"))}
    env.update(
        PORT=str(port),
        HOST="127.0.0.1",
        DATA_DIR=str(data_dir),
        GFSAM_PRESET="tiny",
        # Fewer SAM prompts than the official 128: a tiny-model prediction then takes ~2 s
        # instead of ~40 s on a 2-core CPU. Wiring is all this test checks.
        GFSAM_MAX_POINTS="8",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=ls.create_pat(),  # the recommended token kind (refreshed JWT)
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    return env


def _stop_backend(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the supervisor (it stops API, workers, Redis); SIGKILL its group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # children die with it (PDEATHSIG)
        process.wait(timeout=15)


@contextmanager
def running_backend(env: dict[str, str], port: int, base: Path) -> Iterator[Backend]:
    """`python -m backend.run` with `env` on `port`, logging to `base`/backend.log; stopped (and
    its log tail printed) on exit."""
    log_path = base / "backend.log"
    start = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "backend.run"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    server = Backend(f"http://127.0.0.1:{port}", process, log_path)
    try:
        _wait_backend_up(server, start + BACKEND_START_S)
        print(f"backend up in {time.monotonic() - start:.1f}s")
        yield server
    finally:
        _stop_backend(process)
        print(f"\n--- backend log tail ---\n{server.log_tail(40)}")


@pytest.fixture(scope="module")
def backend(ls: LabelStudio, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backend]:
    if not (REPO / "backend" / "run.py").is_file():
        pytest.fail("backend/run.py is missing: `python -m backend.run` cannot start")
    base = tmp_path_factory.mktemp("backend")
    port = free_port()
    with running_backend(_backend_env(ls, port, base / "data"), port, base) as server:
        yield server


def _wait_backend_up(server: Backend, deadline: float) -> None:
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            pytest.fail(f"backend exited with {server.process.returncode}:\n{server.log_tail()}")
        try:
            reply = requests.get(server.url + "/health", timeout=2)
            if reply.ok and reply.json().get("status") == "UP" and reply.json().get("redis"):
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    pytest.fail(f"backend /health not UP within {BACKEND_START_S:.0f}s:\n{server.log_tail()}")


# ---------------------------------------------------------------------------- helpers


def wait_for(
    what: str, probe: Callable[[], T | None], ls: LabelStudio, backend: Backend, timeout: float
) -> T:
    """Poll `probe` until it returns something truthy; fail with both logs on timeout."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(2.0)
    pytest.fail(
        f"timed out after {timeout:.0f}s waiting for {what}; last probe: {last!r}\n"
        f"--- backend state ---\n{_diagnostics(ls, backend)}\n"
        f"--- backend log ---\n{backend.log_tail()}\n--- label studio errors ---\n{_ls_errors(ls)}"
    )


def _ls_errors(ls: LabelStudio) -> str:
    """Label Studio log lines about errors and webhooks (a lost webhook explains a stall)."""
    lines = ls.log_tail(5000).splitlines()
    keep = [x for x in lines if "ERROR" in x or "Traceback" in x or "webhook" in x.lower()]
    return "\n".join(keep[-30:]) or "(none)"


def _diagnostics(ls: LabelStudio, backend: Backend) -> str:
    """Backend project status and LS prediction counts per version, for failure messages."""
    lines = []
    try:
        projects = [x["id"] for x in ls.json("GET", "/api/projects/")["results"]]
    except (requests.RequestException, AssertionError, KeyError) as exc:
        projects, lines = [], [f"LS projects: {type(exc).__name__}"]
    for pid in projects:
        try:
            status = backend.project(pid)
            counts = ls.json("GET", f"/api/projects/{pid}/model-versions/")
        except (requests.RequestException, AssertionError) as exc:
            lines.append(f"project {pid}: {type(exc).__name__}")
            continue
        keep = ("model_version", "ready", "shots", "counts", "failures")
        lines.append(f"project {pid}: { ({k: status.get(k) for k in keep}) }; LS versions {counts}")
    errors = [x for x in backend.log_tail(2000).splitlines() if "ERROR" in x or "Traceback" in x]
    return "\n".join(lines + errors[-20:])


def natural_size(path: Path) -> tuple[int, int]:
    """(W, H) as a browser decodes the image (EXIF orientation applied)."""
    with Image.open(path) as image:
        return ImageOps.exif_transpose(image).size


def by_task(ls: LabelStudio, project_id: int) -> dict[int, list[dict[str, Any]]]:
    """All predictions of the project, grouped by task id."""
    grouped: dict[int, list[dict[str, Any]]] = {}
    for pred in ls.predictions(project=project_id):
        grouped.setdefault(pred["task"], []).append(pred)
    return grouped


def check_prediction(pred: dict[str, Any], size: tuple[int, int], version: str) -> None:
    """A stored prediction is of `version`, brush regions at the image's natural size."""
    assert pred["model_version"] == version
    assert isinstance(pred["score"], float)
    width, height = size
    for region in pred["result"]:
        assert (region["from_name"], region["to_name"], region["type"]) == (
            "tag",
            "image",
            "brushlabels",
        )
        assert (region["original_width"], region["original_height"]) == (width, height)
        assert region["value"]["format"] == "rle"
        assert set(region["value"]["brushlabels"]) <= set(LABELS)
        mask = rle_to_mask(region["value"]["rle"], width, height)  # raises unless W*H*4 values
        assert mask.shape == (height, width)


def version_n(version: str) -> int:
    """`gfsam-p3-v12` -> 12."""
    return int(version.rsplit("-v", 1)[1])


def annotation_result(masks: dict[str, np.ndarray]) -> list[dict[str, Any]]:
    """Brush regions as the LS frontend saves them (no score, origin manual)."""
    result = masks_to_result(
        masks, from_name="tag", to_name="image", scores=dict.fromkeys(masks, 1.0)
    )
    for region in result:
        region.pop("score")
        region["origin"] = "manual"
        assert region["value"]["rle"] == mask_to_rle(masks[region["value"]["brushlabels"][0]])
    return result


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
