"""Helpers of the real-Label-Studio end-to-end tests: the backend started the way the README
starts it (`backend.run`, embedded Redis, worker processes, tiny random-weight models), its
`backend` fixture, waiting with diagnostics, and checks of what LS stores."""

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


def backend_env(ls: LabelStudio, port: int, data_dir: Path) -> dict[str, str]:
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
    with running_backend(backend_env(ls, port, base / "data"), port, base) as server:
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
