"""Faults at the job level: LS down, Redis down, a re-fit lock left by a killed worker.

(Killed worker processes and Redis restarts are in tests/test_worker_process.py.)
"""

from __future__ import annotations

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
