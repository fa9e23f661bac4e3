"""Self-measurement against a real Label Studio 1.23.2 and `python -m backend.run` (issue 19),
tiny random-weight models: the masks are noise, so the figures mean nothing; what is checked is
the wiring. After three annotated tasks (each holding both labels), the background calibrate
job of the newest version has scored them held out, `/projects/{id}/quality` lists each label
with n and IoU, and the status page shows the table.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import requests

from tests.e2e_helpers import (
    CONFIG,
    ELEPHANTS,
    LABELS,
    PHASE_S,
    Backend,
    annotation_result,
    backend_env,
    natural_size,
    running_backend,
    wait_for,
)
from tests.lsserver import LabelStudio, free_port

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def measuring_backend(
    ls: LabelStudio, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Backend]:
    """The backend as the README runs it (calibrate on by default), tiny models, argmax (the
    random-weight similarities mean nothing to split's reject)."""
    base = tmp_path_factory.mktemp("backend-quality")
    port = free_port()
    env = backend_env(ls, port, base / "data") | {"ASSIGN": "argmax", "DISCOVER": "false"}
    with running_backend(env, port, base) as server:
        yield server


def _masks(size: tuple[int, int], k: int) -> dict[str, np.ndarray]:
    """Both labels as boxes that move with k (no two tasks annotated alike)."""
    w, h = size
    a = np.zeros((h, w), dtype=bool)
    b = np.zeros((h, w), dtype=bool)
    a[h // 4 : h // 2 + 5 * k, w // 5 : w // 2 + 5 * k] = True
    b[h * 2 // 3 :, :] = True
    b &= ~a
    return {LABELS[0]: a, LABELS[1]: b}


def test_quality_after_three_annotations(ls: LabelStudio, measuring_backend: Backend) -> None:
    images = sorted(ELEPHANTS.glob("*.jpg"))
    project = ls.create_project(CONFIG, title="gfsam-quality")["id"]
    ls.import_images(project, images)
    tasks = sorted(t["id"] for t in ls.list_tasks(project))
    ls.connect_ml_backend(project, measuring_backend.url)
    url = measuring_backend.url
    for k, (task, image) in enumerate(zip(tasks[:3], images[:3], strict=True)):
        ls.create_annotation(task, annotation_result(_masks(natural_size(image), k)))

    def measured() -> dict[str, Any] | None:
        status = requests.get(f"{url}/projects/{project}", timeout=10).json()
        if sum(len(v) for v in status.get("shots", {}).values()) < 6:
            return None  # not every annotation applied yet
        body = requests.get(f"{url}/projects/{project}/quality", timeout=10).json()
        last = body["versions"][-1] if body.get("versions") else None
        if last is None or last["version"] != status["model_version"]:
            return None
        return last if len(last["tasks"]) == 3 else None

    report = wait_for("the newest version measured", measured, ls, measuring_backend, PHASE_S)
    assert sorted(report["tasks"]) == tasks[:3]
    for label in LABELS:
        figures = report["default"][label]
        assert figures["n"] == 3 and figures["tasks"] == 3
        assert isinstance(figures["iou"], float) and 0.0 <= figures["iou"] <= 1.0
        assert report["choices"][label]["how"] in (
            "default",
            "tuned",
            "too-few",
            "unconfirmed",
            "unchecked",
        )
    page = requests.get(f"{url}/status/projects/{project}", timeout=10).text
    assert 'id="quality"' in page
    for label in LABELS:
        assert f'<tr class="quality-row" data-label="{label}" data-n="3"' in page
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert f'gfsam_quality{{figure="n",label="{LABELS[0]}",project="{project}"}} 3.0' in metrics
    print(f"quality after three annotations (RANDOM WEIGHTS, wiring only): {report['default']}")
