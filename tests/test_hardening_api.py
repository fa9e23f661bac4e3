"""Issue 7: trust Label Studio, not the caller; bounded waits, bodies, ids and failure state;
auth before the body and on the documentation; secure defaults (findings 1, 4-7, 10, 11, 13-15).
"""

from __future__ import annotations

import base64
import copy
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from backend.state.settings import Settings
from tests.fakes import MediaServer, brush_region, png_bytes
from tests.project_helpers import SEED, H, W, annotate, event, fixture, setup_project, status
from tests.service_fixtures import Service, wait_until


def basic(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


@pytest.fixture
def evil() -> Iterator[MediaServer]:
    server = MediaServer()
    server.routes["/x.png"] = (200, {}, png_bytes(W * 2, H * 3, seed=9))
    yield server
    server.stop()


def predict_body(task: int, image: str, project: str = "1.1") -> dict[str, Any]:
    return {"project": project, "tasks": [{"id": task, "data": {"image": image}}]}


def test_predict_uses_ls_task_data_never_the_callers(
    make_service: Callable[..., Service], evil: MediaServer
) -> None:
    """Finding 1: the caller's image URL is never fetched; LS's image is predicted and posted."""
    svc = make_service(predict_max_waiters=0, media_allow_hosts=["*"], media_allow_private=True)
    tasks = setup_project(svc, 2)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    posted = len(svc.ls.posts)
    svc.ls.predictions.clear()
    svc.client.post("/predict", json=predict_body(tasks[1], evil.url("/x.png")))
    svc.run_worker()
    assert evil.hits == {}
    new = svc.ls.posts[posted:]
    assert all(r["original_width"] == W for p in new for r in p["result"])


def test_task_of_another_project_is_never_posted(svc: Service) -> None:
    """Finding 1: /predict for project 1 naming a task of project 2 posts nothing for it."""
    tasks = setup_project(svc, 2)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    foreign = svc.ls.add_task(2, png_bytes(W, H, seed=5))["id"]
    svc.client.post("/predict", json=predict_body(foreign, "/data/upload/2/x.png"))
    svc.run_worker()
    assert not [p for p in svc.ls.posts if p["task"] == foreign]
    assert "not in project 1" in status(svc)["failures"][f"task:{foreign}"]


def test_waiters_beyond_the_cap_answer_at_once(make_service: Callable[..., Service]) -> None:
    """Finding 4: with one waiter allowed, a second /predict answers while the first waits."""
    svc = make_service(predict_max_waiters=1, predict_deadline_s=60.0)
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    svc.run_worker(max_jobs=1)  # the re-fit; the pre-annotations stay queued
    first: dict[str, Any] = {}
    waiting = threading.Thread(
        target=lambda: first.update(r=svc.client.post("/predict", json=predict_body(tasks[1], "")))
    )
    waiting.start()
    wait_until(lambda: svc.conn.keys("gfsam:waiters:*"), 10, "the first /predict to wait")
    second = svc.client.post("/predict", json=predict_body(tasks[2], ""))
    assert second.status_code == 200 and "result" not in second.json()["results"][0]
    assert waiting.is_alive()  # the first is still waiting: the second did not queue behind it
    svc.run_worker()
    waiting.join(30)
    assert first["r"].status_code == 200


def test_body_over_the_cap_is_413(make_service: Callable[..., Service]) -> None:
    """Finding 5: bodies are capped; without credentials it is 401, whatever the size."""
    svc = make_service(max_body_bytes=4096, basic_auth_user="ls", basic_auth_pass="pw")
    big = {"project": "1.1", "tasks": [{"id": 1, "data": {"x": "y" * 10_000}}]}
    assert svc.client.post("/predict", json=big).status_code == 401
    assert svc.client.post("/predict", json=big, headers=basic("ls", "pw")).status_code == 413
    assert svc.client.post("/webhook", json=big).status_code == 413


def test_webhook_config_is_never_applied(make_service: Callable[..., Service]) -> None:
    """Finding 6: START_TRAINING without the secret is accepted but only queues a sync; the
    config comes from LS."""
    svc = make_service(webhook_secret="s3cret")
    forged = fixture("webhook_start_training.json")
    forged["project"]["label_config"] = forged["project"]["label_config"].replace(
        'value="Object"', 'value="Forged"'
    )
    assert svc.client.post("/webhook", json=forged).status_code == 200
    svc.run_worker()
    assert status(svc)["config"]["labels"] == ["Object"]


def test_forged_annotation_event_cannot_pick_the_image(
    make_service: Callable[..., Service], evil: MediaServer
) -> None:
    """Finding 7: the reference image is LS's task image, not the event's."""
    svc = make_service(media_allow_hosts=["*"], media_allow_private=True)
    tasks = setup_project(svc, 2)
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    body = copy.deepcopy(event("ANNOTATION_CREATED", ann, svc.ls))
    body["task"]["data"]["image"] = evil.url("/x.png")
    svc.client.post("/webhook", json=body)
    svc.run_worker()
    assert evil.hits == {} and status(svc)["shots"] == {"Object": [ann["id"]]}


@pytest.mark.parametrize("path", ["/metrics", "/docs", "/redoc", "/openapi.json"])
def test_docs_and_metrics_need_auth_unless_public(
    make_service: Callable[..., Service], path: str
) -> None:
    """Finding 10."""
    svc = make_service(basic_auth_user="ls", basic_auth_pass="pw")
    assert svc.client.get(path).status_code == 401
    assert svc.client.get(path, headers=basic("ls", "pw")).status_code == 200
    opened = make_service(basic_auth_user="ls", basic_auth_pass="pw", public_docs=True)
    assert opened.client.get(path).status_code == 200


@pytest.mark.parametrize("project", ["１.1", "9" * 4000, "0.1", "-1.1", str(2**64)])
def test_unbounded_project_ids_are_refused(svc: Service, project: str) -> None:
    """Finding 11: ids are ASCII, positive and bounded; nothing is registered."""
    reply = svc.client.post("/predict", json=predict_body(1, "", project))
    assert reply.status_code in (400, 422)
    assert svc.client.get(f"/projects/{2**64}").status_code == 422
    assert svc.conn.keys("gfsam:p:*") == []


def test_project_registered_only_when_ls_confirms(svc: Service) -> None:
    """Finding 11: a /setup for a project LS does not have registers nothing."""
    svc.ls.projects_known = {1}
    setup = fixture("setup.json")
    assert svc.client.post("/setup", json={**setup, "project": "77.1"}).status_code == 200
    svc.run_worker()
    assert svc.client.get("/versions").json() == {"versions": []}
    assert svc.client.get("/projects/77").status_code == 404


def test_non_ascii_password_authenticates(make_service: Callable[..., Service]) -> None:
    """Finding 13: BASIC_AUTH_PASS is compared as UTF-8."""
    svc = make_service(basic_auth_user="ls", basic_auth_pass="pässwörd-密码")
    assert svc.client.get("/health", headers=basic("ls", "pässwörd-密码")).status_code == 200
    assert svc.client.get("/health", headers=basic("ls", "passwort")).status_code == 401


def test_failure_state_is_capped(make_service: Callable[..., Service]) -> None:
    """Finding 14: past MAX_FAILURES reasons only a count grows."""
    svc = make_service(max_failures=5)
    for t in range(50):
        svc.store.progress.record_failure(1, f"task:{t}", "x" * 400)
    failures = svc.store.progress.failures(1)
    assert len(failures) == 6 and failures["more"] == "45"


def test_openapi_documents_the_error_replies(svc: Service) -> None:
    """Finding 15: 400, 401 and 422 are documented with a string `detail`, as replied."""
    spec = svc.client.get("/openapi.json").json()
    responses = spec["paths"]["/predict"]["post"]["responses"]
    assert {"400", "401", "413", "422"} <= set(responses)
    ref = responses["422"]["content"]["application/json"]["schema"]["$ref"]
    assert spec["components"]["schemas"][ref.rsplit("/", 1)[1]]["properties"]["detail"] == {
        "type": "string",
        "title": "Detail",
    }
    reply = svc.client.post("/predict", json={"tasks": []})
    assert reply.status_code == 422 and isinstance(reply.json()["detail"], str)


def test_secure_default_binds_loopback_without_auth() -> None:
    """Secure defaults: no basic auth and no HOST -> 127.0.0.1; an explicit HOST is kept."""
    plain = Settings(_env_file=None)  # type: ignore[call-arg]
    assert plain.bind_host == "127.0.0.1"
    authed = Settings(basic_auth_user="u", basic_auth_pass="p", _env_file=None)  # type: ignore[call-arg]
    assert authed.bind_host == "0.0.0.0"
    assert Settings(host="0.0.0.0", _env_file=None).bind_host == "0.0.0.0"  # type: ignore[call-arg]


def test_no_object_repr_in_decode_errors() -> None:
    """Finding 15: no `<_io.BytesIO object at 0x...>` in a failure message."""
    from gfsam.image import load_image

    with pytest.raises(ValueError) as info:
        load_image(b"\x89PNG\r\n\x1a\n" + b"\0" * 64)
    assert "object at 0x" not in str(info.value)
