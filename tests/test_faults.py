"""Faults at the job level: LS down, Redis down, a re-fit lock left by a killed worker.

(Killed worker processes and Redis restarts are in tests/test_worker_process.py.)
"""

from __future__ import annotations

import threading
import time
from typing import Any

from fastapi.testclient import TestClient
from redis import Redis
from rq.job import Job
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from backend import inline
from backend.app import create_app
from backend.jobs import Jobs, predict_job_id
from backend.schemas import PredictJob
from backend.settings import Settings
from backend.store import Store
from tests.fakes import FakeLabelStudio, FakePipeline, brush_region, fake_model, png_bytes
from tests.service_fixtures import changed, run_worker
from tests.test_jobs import SEED, annotate, event, fixture, setup_project, status, version
from worker import models


def tick_scheduler(conn: Redis, settings: Settings) -> None:
    """What the worker's maintenance thread does every second: move due retries to queues."""
    scheduler = RQScheduler(
        [settings.queue_high, settings.queue_batch], connection=conn, serializer=JSONSerializer
    )
    scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()


def slow_retry_app(settings: Settings, pipeline: FakePipeline) -> tuple[Settings, Any]:
    settings = changed(settings, retry_intervals_s=[1])
    models.install(settings, fake_model(pipeline))
    return settings, create_app(settings)


def test_ls_down_then_back_delivers_once(
    service_settings: Settings,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    fake_pipeline: FakePipeline,
) -> None:
    settings, app = slow_retry_app(service_settings, fake_pipeline)
    with TestClient(app) as client:
        tasks = setup_project(client, fake_ls, 2)
        annotate(client, fake_ls, tasks[0], SEED)
        run_worker(redis_conn, settings)
        assert len(fake_ls.posts) == 1
        fresh = fake_ls.add_task(1, png_bytes(64, 48, seed=5))
        fake_ls.down = True  # LS's API unreachable for the worker
        jobs = Jobs(redis_conn, settings)
        pending = inline.start(jobs, 1, "gfsam-p1-v1", [(fresh["id"], fresh["data"]["image"])])
        inline.give_up(jobs, 1, "gfsam-p1-v1", pending)  # LS's /predict gave up: API path
        run_worker(redis_conn, settings)  # download fails: retry scheduled in 1 s
        job = Job.fetch(
            predict_job_id(1, fresh["id"], "gfsam-p1-v1"),
            connection=redis_conn,
            serializer=JSONSerializer,
        )
        assert job.get_status().value == "scheduled" and job.retries_left == 2
        fake_ls.down = False
        time.sleep(1.1)
        tick_scheduler(redis_conn, settings)
        run_worker(redis_conn, settings)
        assert [p["task"] for p in fake_ls.posts] == [tasks[1], fresh["id"]]
        assert status(client)["counts"]["failed"] == 0


def test_ls_down_during_refit_is_retried(
    service_settings: Settings,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    fake_pipeline: FakePipeline,
) -> None:
    settings, app = slow_retry_app(service_settings, fake_pipeline)
    with TestClient(app) as client:
        tasks = setup_project(client, fake_ls, 2)
        run_worker(redis_conn, settings)
        fake_ls.down = True
        annotate(client, fake_ls, tasks[0], SEED)  # the webhook arrives; LS API then fails
        run_worker(redis_conn, settings)
        assert version(client) == "gfsam-p1-v0"
        fake_ls.down = False
        time.sleep(1.1)
        tick_scheduler(redis_conn, settings)
        run_worker(redis_conn, settings)
        assert version(client) == "gfsam-p1-v1" and len(fake_ls.posts) == 1
        assert fake_pipeline.calls["reference"] == 1


def test_ls_down_for_good_fails_after_retries(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    fresh = fake_ls.add_task(1, png_bytes(64, 48, seed=6))
    fake_ls.down = True
    jobs = Jobs(redis_conn, service_settings)
    pending = inline.start(jobs, 1, "gfsam-p1-v1", [(fresh["id"], fresh["data"]["image"])])
    inline.give_up(jobs, 1, "gfsam-p1-v1", pending)
    run_worker(redis_conn, service_settings)  # retry interval 0: all attempts now
    job = Job.fetch(
        predict_job_id(1, fresh["id"], "gfsam-p1-v1"),
        connection=redis_conn,
        serializer=JSONSerializer,
    )
    assert job.get_status().value == "failed" and job.retries_left == 0
    assert status(service_client)["counts"]["failed"] == 1
    assert "LabelStudioUnavailable" in status(service_client)["failures"][f"task:{fresh['id']}"]
    fake_ls.down = False  # LS asks again later: /predict re-queues the failed job
    again = PredictJob(
        project=1,
        task=fresh["id"],
        version="gfsam-p1-v1",
        image_url=fresh["data"]["image"],
        interactive=True,
    )
    assert jobs.enqueue_predict(again, high=True) == "requeued"
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts][-1] == fresh["id"]


def test_redis_down_is_503_for_every_endpoint(service_settings: Settings) -> None:
    settings = changed(service_settings, redis_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        for method, path, name in [
            ("POST", "/setup", "setup.json"),
            ("POST", "/predict", "predict_single.json"),
            ("POST", "/webhook", "webhook_annotation_created.json"),
        ]:
            reply = client.request(method, path, json=fixture(name))
            assert reply.status_code == 503
            assert reply.json() == {"detail": "backend store (Redis) unavailable"}


def test_refit_lock_of_a_killed_worker_is_broken_at_once(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)
    dead = Store(redis_conn, service_settings, owner="gfsam-host-99-dead")
    lock = dead._locked("gfsam:lock:refit:1", 600, 1, break_dead=True)
    lock.__enter__()  # a worker took the re-fit lock, then was SIGKILLed (no lease)
    ann = fake_ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    service_client.post("/webhook", json=event("ANNOTATION_CREATED", ann, fake_ls))
    started = time.monotonic()
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v1"
    assert time.monotonic() - started < 5  # not the lock's 600 s


def test_failed_sync_is_queued_again_by_the_next_setup(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)  # queues sync-1
    ann = fake_ls.annotate(tasks[0], [brush_region(SEED, "Object")])  # its webhook was lost
    fake_ls.down = True
    run_worker(redis_conn, service_settings)  # the sync fails, all retries included
    assert Jobs(redis_conn, service_settings).job_status("sync-1") == "failed"
    fake_ls.down = False
    assert version(service_client) == "gfsam-p1-v0"  # this /setup queues a new sync
    run_worker(redis_conn, service_settings)
    assert status(service_client)["shots"] == {"Object": [ann["id"]]}
    assert Jobs(redis_conn, service_settings).job_status("sync-1") is None  # done, not kept
    assert version(service_client) == "gfsam-p1-v1"
    assert Jobs(redis_conn, service_settings).batch.job_ids == []  # synced: no more syncs


def test_long_ls_outage_during_preannotation_is_repaired_by_a_sync(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    """Pre-annotation jobs that exhausted their retries (LS down) are redone by the next sync,
    including results whose POST failed after the delivery claim, and each task gets one post."""
    tasks = setup_project(service_client, fake_ls, 4)
    run_worker(redis_conn, service_settings)  # the first sync
    ann = fake_ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    assert service_client.post(
        "/webhook", json=event("ANNOTATION_CREATED", ann, fake_ls)
    ).is_success
    run_worker(redis_conn, service_settings, max_jobs=1)  # the re-fit: v1, 3 tasks queued
    fake_ls.down = True  # every download and POST now fails, beyond all retries
    run_worker(redis_conn, service_settings)
    assert fake_ls.posts == [] and status(service_client)["counts"]["failed"] == 3
    fake_ls.down = False
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert service_client.post("/webhook", json=body).is_success
    run_worker(redis_conn, service_settings)
    assert sorted(p["task"] for p in fake_ls.posts) == tasks[1:]
    assert {p["model_version"] for p in fake_ls.posts} == {"gfsam-p1-v1"}


def test_claimed_but_unposted_result_is_redelivered(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [tasks[1]]
    store = Store(redis_conn, service_settings)
    # As if the POST had failed after the claim: LS lost it, our posted marker was never set.
    fake_ls.posts.clear()
    fake_ls.predictions.clear()
    redis_conn.delete(store._k("posted", 1, tasks[1], "gfsam-p1-v1"))
    assert store.delivery_claim(1, tasks[1], "gfsam-p1-v1") == "api"
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert service_client.post("/webhook", json=body).is_success
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [tasks[1]]
    assert fake_pipeline.calls["predict"] == 1  # delivered from the stored result, not recomputed


def test_predict_on_a_skipped_task_does_not_wait_for_the_deadline(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    """A cancelled (skipped) annotation leaves the task unlabeled; and /predict on a task whose
    batch job finished without a result (skipped) computes it at once."""
    tasks = setup_project(service_client, fake_ls, 3)
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings, max_jobs=2)  # sync and re-fit: tasks 1, 2 queued
    skip = fake_ls.annotate(tasks[2], [], was_cancelled=True)
    body = event("ANNOTATION_CREATED", skip, fake_ls)
    body["annotation"]["was_cancelled"] = True
    assert service_client.post("/webhook", json=body).is_success
    store = Store(redis_conn, service_settings)
    assert not store.is_labeled(1, tasks[2])
    run_worker(redis_conn, service_settings)
    assert sorted(p["task"] for p in fake_ls.posts) == tasks[1:]  # the skipped task too
    # A labeled task's batch job finishes as "skipped"; a later /predict must not wait it out.
    store.mark_labeled(1, tasks[1])
    redis_conn.delete(store._k("delivered", 1, tasks[1], "gfsam-p1-v1"))
    redis_conn.delete(store._k("pred", 1, tasks[1], "gfsam-p1-v1"))
    jobs = Jobs(redis_conn, service_settings)
    job = PredictJob(
        project=1,
        task=tasks[1],
        version="gfsam-p1-v1",
        image_url=fake_ls.tasks[tasks[1]]["data"]["image"],
    )
    jobs.enqueue_predict(job, high=False)  # finished -> dead -> queued again, then skipped
    run_worker(redis_conn, service_settings)
    req = fixture("predict_single.json")
    req["tasks"] = [{"id": tasks[1], "data": fake_ls.tasks[tasks[1]]["data"], "project": 1}]
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(service_client.post("/predict", json=req).json())
    )
    started = time.monotonic()
    thread.start()
    while thread.is_alive():  # the worker runs here: RQ workers need the main thread
        run_worker(redis_conn, service_settings)
        time.sleep(0.02)
    reply = replies[0]
    assert time.monotonic() - started < service_settings.predict_deadline_s / 2
    assert reply["results"][0]["result"] and reply["results"][0]["model_version"] == "gfsam-p1-v1"


def test_a_wiped_redis_never_reuses_a_version_label_studio_holds(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 3)
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    assert {p["model_version"] for p in fake_ls.posts} == {"gfsam-p1-v1"}
    redis_conn.flushdb()  # the operator lost or replaced the backend's Redis; LS kept everything
    assert version(service_client) == "gfsam-p1-v0"
    run_worker(redis_conn, service_settings)  # the sync of a project new to this Redis
    assert version(service_client) == "gfsam-p1-v2"  # past v1, which LS already holds
    new = [p for p in fake_ls.posts if p["model_version"] == "gfsam-p1-v2"]
    assert sorted(p["task"] for p in new) == tasks[1:]  # re-predicted, not mistaken for done


def test_a_refit_that_fails_for_good_is_reported_on_the_project(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)
    run_worker(redis_conn, service_settings)
    fake_ls.down = True
    ann = annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)  # retry interval 0: every attempt fails now
    failures = status(service_client)["failures"]
    assert "LabelStudioUnavailable" in failures[f"annotation:{ann['id']}"]
    assert version(service_client) == "gfsam-p1-v0"
