"""Helpers of the service tests (and the benchmark scripts) that drive one project through the
API with the fake Label Studio: the setup and webhook bodies LS sends, a project with n tasks,
an annotation saved in LS and announced by its webhook, the version and the progress."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np

from tests.fakes import FakeLabelStudio, box_mask, brush_region, png_bytes
from tests.service_fixtures import Service

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"
H, W = 48, 64
SEED = box_mask(H, W, 10, 30, 20, 50)


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def event(action: str, ann: dict[str, Any], ls: FakeLabelStudio) -> dict[str, Any]:
    """An ANNOTATION_* webhook body like LS's, for an annotation of the fake LS."""
    body = copy.deepcopy(fixture("webhook_annotation_created.json"))
    body["action"] = action
    body["annotation"].update({k: ann[k] for k in ("id", "task", "result", "updated_at")})
    body["task"].update(id=ann["task"], data=ls.tasks[ann["task"]]["data"])
    return body


def setup_project(svc: Service, n: int = 4) -> list[int]:
    assert svc.client.post("/setup", json=fixture("setup.json")).status_code == 200
    svc.run_worker()  # the sync reads the project from LS and registers it (issue 7)
    return [svc.ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(n)]


def annotate(
    svc: Service,
    task: int,
    mask: np.ndarray | None,
    annotation: int | None = None,
    label: str = "Object",
) -> dict[str, Any]:
    result = [] if mask is None else [brush_region(mask, label)]
    ann = svc.ls.annotate(task, result, annotation)
    action = "ANNOTATION_UPDATED" if annotation else "ANNOTATION_CREATED"
    assert svc.client.post("/webhook", json=event(action, ann, svc.ls)).status_code == 200
    return ann


def version(svc: Service) -> str:
    return svc.client.post("/setup", json=fixture("setup.json")).json()["model_version"]


def status(svc: Service, project: int = 1) -> dict[str, Any]:
    return svc.client.get(f"/projects/{project}").json()


def seeded(svc: Service, n: int = 4) -> list[int]:
    """Project 1 with n tasks, the first annotated (seed), pre-annotations delivered."""
    tasks = setup_project(svc, n)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    return tasks
