"""Contract tests of every endpoint with request bodies as LS 1.23.2 sends them (real Redis)."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from redis import Redis

from backend.app import create_app
from backend.state.schemas import PredictJob
from backend.state.settings import Settings
from tests.service_fixtures import Service, changed, make_jobs

FIXTURES = Path(__file__).parent / "fixtures" / "ls_requests"


def body(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text())


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def queued_ids(conn: Redis, settings: Settings) -> list[str]:
    jobs = make_jobs(conn, settings)
    return [*jobs.high.job_ids, *jobs.batch.job_ids]


def test_health(svc: Service) -> None:
    reply = svc.client.get("/health")
    assert reply.status_code == 200
    data = reply.json()
    assert data["status"] == "UP" and data["redis"] is True
    assert data["random_weights"] is False and data["model_class"].startswith("GFSAM")


def test_health_flags_random_weights(service_settings: Settings, redis_conn: Redis) -> None:
    settings = changed(service_settings, **{"gfsam_preset": "tiny"})
    with TestClient(create_app(settings)) as client:
        data = client.get("/health").json()
    assert data["random_weights"] is True and "RANDOM-WEIGHTS" in data["model_class"]


def test_health_redis_down_is_503_not_traceback(service_settings: Settings) -> None:
    settings = changed(service_settings, **{"redis_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(settings)) as client:
        reply = client.get("/health")
    assert reply.status_code == 503
    assert reply.json() == {"detail": "backend store (Redis) unavailable"}


def test_setup_returns_v0_and_queues_one_sync(svc: Service) -> None:
    for _ in range(3):
        reply = svc.client.post("/setup", json=body("setup.json"))
        assert reply.status_code == 200
        assert reply.json() == {"model_version": "gfsam-p1-v0"}
    assert queued_ids(svc.conn, svc.settings) == ["sync-1"]


def test_setup_without_a_segmentation_control_is_400_with_reason(svc: Service) -> None:
    rectangles = body("setup_no_brush.json")  # a RectangleLabels project: served (issue 20)
    assert svc.client.post("/setup", json=rectangles).status_code == 200
    choices = (
        '<View><Image name="image" value="$image"/>'
        '<Choices name="c" toName="image"><Choice value="a"/></Choices></View>'
    )
    reply = svc.client.post("/setup", json={**rectangles, "schema": choices})
    assert reply.status_code == 400
    detail = reply.json()["detail"]
    assert all(tag in detail for tag in ("BrushLabels", "PolygonLabels", "RectangleLabels"))


@pytest.mark.parametrize(
    "patch",
    [
        {"project": "abc.123"},
        {"schema": ""},
        {"schema": "<View><Image name="},
        {"schema": None},
    ],
)
def test_setup_malformed(svc: Service, patch: dict[str, Any]) -> None:
    reply = svc.client.post("/setup", json={**body("setup.json"), **patch})
    assert reply.status_code in (400, 422)
    detail = reply.json()["detail"]
    assert isinstance(detail, str) and "Traceback" not in detail


def test_predict_before_any_reference_returns_items_without_result(svc: Service) -> None:
    reply = svc.client.post("/predict", json=body("predict_batch.json"))
    assert reply.status_code == 200
    results = reply.json()["results"]
    assert results == [{"model_version": "gfsam-p1-v0"}] * 3  # no "result": LS stores nothing
    setup = svc.client.post("/setup", json=body("setup.json")).json()
    assert setup["model_version"] == results[0]["model_version"]
    assert not any(j.startswith("predict") for j in queued_ids(svc.conn, svc.settings))


def test_predict_interactive_goes_to_the_interactive_lane(
    make_service: Callable[..., Service],
) -> None:
    """A click waits for the interactive worker (tests/test_interactive.py runs one); with none
    it is withdrawn at the deadline: 503 naming the missing process, nothing predicted."""
    svc = make_service(interactive_deadline_s=0.3)
    reply = svc.client.post("/predict", json=body("predict_interactive.json"))
    assert reply.status_code == 503 and "worker.main --interactive" in reply.json()["detail"]
    assert svc.jobs.interactive.count == 0 and not svc.ls.posts


@pytest.mark.parametrize(
    "payload",
    [
        {"tasks": [], "project": "1.1"},
        {"tasks": [{"data": {}}], "project": "1.1"},
        {"tasks": [{"id": 1}]},
        {"project": "1.1"},
        [1, 2],
    ],
)
def test_predict_malformed(svc: Service, payload: Any) -> None:
    reply = svc.client.post("/predict", json=payload)
    assert reply.status_code in (400, 422)
    assert isinstance(reply.json()["detail"], str)


def test_predict_not_json(svc: Service) -> None:
    reply = svc.client.post(
        "/predict", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == 422


@pytest.mark.parametrize(
    "name,status,kinds",
    [
        ("webhook_annotation_created.json", "ok", ["ann-1-1-"]),
        ("webhook_annotation_updated.json", "ok", ["ann-1-1-"]),
        ("webhook_annotations_deleted.json", "ok", ["del-1-"]),
        ("webhook_start_training.json", "ok", ["sync-1"]),
        ("webhook_project_updated.json", "ignored", []),
    ],
)
def test_webhook_events(svc: Service, name: str, status: str, kinds: list[str]) -> None:
    svc.client.post("/setup", json=body("setup.json"))  # queues sync-1 (new project)
    svc.run_worker()  # the sync reads the project from LS and registers it
    reply = svc.client.post("/webhook", json=body(name))
    assert reply.status_code == 200
    data = reply.json()
    assert data["status"] == status and "job" not in data  # "job" would make LS record a train job
    if name == "webhook_start_training.json":
        assert data["queued"] == ["sync-1"]
    else:
        assert [q[: len(k)] for q, k in zip(data["queued"], kinds, strict=True)] == kinds


def test_webhook_duplicate_event_queues_one_job(svc: Service) -> None:
    svc.client.post("/setup", json=body("setup.json"))
    svc.run_worker()  # project 1 registered once LS confirmed it
    event = body("webhook_annotation_created.json")
    first = svc.client.post("/webhook", json=event).json()["queued"]
    again = svc.client.post("/webhook", json=event).json()["queued"]
    assert len(first) == 1 and again == []
    ids = queued_ids(svc.conn, svc.settings)
    assert ids.count(first[0]) == 1
    updated = svc.client.post("/webhook", json=body("webhook_annotation_updated.json"))
    assert len(updated.json()["queued"]) == 1  # a new updated_at is a new state


def test_webhook_first_event_of_unknown_project_registers_config(svc: Service) -> None:
    reply = svc.client.post("/webhook", json=body("webhook_annotation_created.json"))
    assert reply.is_success and "sync-1" in queued_ids(svc.conn, svc.settings)  # work only
    assert svc.client.get("/projects/1").status_code == 404
    svc.run_worker()  # the sync reads the project and its config from LS
    status = svc.client.get("/projects/1").json()
    assert status["config"] == {
        "from_name": "tag",
        "to_name": "image",
        "data_key": "image",
        "labels": ["Object"],
        "controls": [{"name": "tag", "kind": "brush", "labels": ["Object"]}],
        "box_prompts": [],
    }


@pytest.mark.parametrize(
    "payload",
    [
        {"annotation": {"id": 1}},
        {"action": "ANNOTATION_CREATED", "project": {"id": 1}},
        {"action": "ANNOTATIONS_DELETED", "annotations": [], "project": {"id": 1}},
        {"action": "ANNOTATIONS_DELETED", "annotations": [{"id": 1}]},
    ],
)
def test_webhook_malformed(svc: Service, payload: dict[str, Any]) -> None:
    reply = svc.client.post("/webhook", json=payload)
    assert reply.status_code == 422
    assert isinstance(reply.json()["detail"], str)


def test_webhook_secret(service_settings: Settings, redis_conn: Redis) -> None:
    settings = changed(service_settings, **{"webhook_secret": "s3cret"})
    event = body("webhook_annotation_created.json")
    with TestClient(create_app(settings)) as client:
        assert client.post("/webhook", json=event).status_code == 401
        wrong = {"X-Webhook-Secret": "nope"}
        assert client.post("/webhook", json=event, headers=wrong).status_code == 401
        right = {"X-Webhook-Secret": "s3cret"}
        assert client.post("/webhook", json=event, headers=right).status_code == 200
        # START_TRAINING comes from LS's ML client, which cannot send webhook headers
        training = client.post("/webhook", json=body("webhook_start_training.json"))
        assert training.status_code == 200


def test_basic_auth_on_ls_calls_only(service_settings: Settings, redis_conn: Redis) -> None:
    settings = changed(service_settings, **{"basic_auth_user": "ls", "basic_auth_pass": "pw"})
    good, bad = basic("ls", "pw"), basic("ls", "wrong")
    with TestClient(create_app(settings)) as client:
        for method, path, payload in [
            ("GET", "/health", None),
            ("POST", "/setup", body("setup.json")),
            ("POST", "/predict", body("predict_single.json")),
            ("GET", "/versions", None),
        ]:
            assert client.request(method, path, json=payload).status_code == 401
            assert client.request(method, path, json=payload, headers=bad).status_code == 401
            assert client.request(method, path, json=payload, headers=good).status_code == 200
        event = body("webhook_annotation_created.json")  # LS sends webhooks without auth
        assert client.post("/webhook", json=event).status_code == 200


def test_versions_and_project_status(svc: Service) -> None:
    assert svc.client.get("/versions").json() == {"versions": []}
    assert svc.client.get("/projects/1").status_code == 404
    svc.ls.configs[2] = body("setup_multilabel.json")["schema"]
    svc.client.post("/setup", json=body("setup.json"))
    svc.client.post("/setup", json=body("setup_multilabel.json"))
    svc.run_worker()  # the syncs read both projects from LS (registered once LS confirms them)
    assert svc.client.get("/versions").json() == {"versions": ["gfsam-p1-v0", "gfsam-p2-v0"]}
    status = svc.client.get("/projects/2").json()
    assert status["model_version"] == "gfsam-p2-v0" and status["ready"] is False
    assert status["config"]["labels"] == ["Cat", "Dog"] and status["shots"] == {}
    assert status["counts"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "stale": 0}
    assert status["acceptance_mean_iou"] is None


def test_metrics_text(svc: Service) -> None:
    svc.client.post("/setup", json=body("setup.json"))
    svc.run_worker()
    svc.client.get("/health")
    reply = svc.client.get("/metrics")
    assert reply.status_code == 200 and reply.headers["content-type"].startswith("text/plain")
    text = reply.text
    for name in (
        'gfsam_jobs{project="1",state="queued"} 0.0',
        'gfsam_model_version{project="1"} 0.0',
        'gfsam_acceptance_iou_count{project="1"} 0.0',
        'gfsam_http_request_seconds_count{path="/health"} 1.0',
    ):
        assert name in text


def _redis_commands(svc: Service, method: str, path: str, payload: Any) -> int:
    """Redis commands one request costs (INFO's own command counted on both sides)."""
    before = svc.conn.info("stats")["total_commands_processed"]
    assert svc.client.request(method, path, json=payload).status_code == 200
    return int(svc.conn.info("stats")["total_commands_processed"] - before)


def test_health_and_setup_cost_does_not_grow_with_the_queue(svc: Service) -> None:
    """/health and /setup touch a constant number of keys: a deep queue cannot slow them."""
    calls = [("GET", "/health", None), ("POST", "/setup", body("setup.json"))]
    svc.client.post("/setup", json=body("setup.json"))  # first /setup registers the project
    empty = [_redis_commands(svc, *call) for call in calls]
    for t in range(500):
        image = f"/data/upload/1/{t}.png"
        job = PredictJob(project=1, task=t, version="gfsam-p1-v1", image_url=image)
        svc.jobs.enqueue_predict(job, high=False)
    assert [_redis_commands(svc, *call) for call in calls] == empty
    assert empty[0] <= 3 and empty[1] <= 10


def test_backend_imports_no_model_code() -> None:
    """The HTTP side needs no GPU stack: backend never imports gfsam, worker or torch."""
    code = (
        "import sys, backend.app, backend.run\n"
        "bad = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'gfsam', 'worker'})\n"
        "assert not bad, bad\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
