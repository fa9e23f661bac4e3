"""Faults at the job level: LS down, Redis down, a re-fit lock left by a killed worker.

(Killed worker processes and Redis restarts are in tests/test_worker_process.py.)
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.api import inline
from backend.app import create_app
from backend.state.jobs import predict_job_id
from backend.state.keys import key
from backend.state.schemas import PredictJob
from backend.state.settings import Settings
from backend.state.store import Store
from tests.fakes import brush_region, png_bytes
from tests.project_helpers import SEED, annotate, event, fixture, setup_project, status, version
from tests.service_fixtures import (
    Service,
    changed,
    make_jobs,
    run_worker,
    tick_scheduler,
    wait_until,
)


def run_due_retries(svc: Service, retried: str) -> None:
    """Tick the scheduler (as the worker's maintenance thread does every second) until the
    retry of job `retried` is due and queued, then run the queues."""

    def queued() -> bool:
        tick_scheduler(svc.conn, svc.settings)
        return retried in svc.jobs.high.job_ids + svc.jobs.batch.job_ids

    wait_until(queued, 10, f"the retry of {retried} to be due")
    svc.run_worker()


def test_ls_down_then_back_delivers_once(make_service: Callable[..., Service]) -> None:
    svc = make_service(retry_intervals_s=[1])
    tasks = setup_project(svc, 2)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert len(svc.ls.posts) == 1
    fresh = svc.ls.add_task(1, png_bytes(64, 48, seed=5))
    svc.ls.down = True  # LS's API unreachable for the worker
    v, jobs = "gfsam-p1-v1", svc.jobs
    pending = inline.start(svc.store, jobs, 1, v, [fresh["id"]])
    inline.give_up(svc.store, jobs, 1, v, pending)  # LS's /predict gave up: API path
    svc.run_worker()  # download fails: retry scheduled in 1 s
    job_id = predict_job_id(1, fresh["id"], v)
    job = Job.fetch(job_id, connection=svc.conn, serializer=JSONSerializer)
    assert job.get_status().value == "scheduled" and job.retries_left == 2
    svc.ls.down = False
    run_due_retries(svc, job_id)
    assert [p["task"] for p in svc.ls.posts] == [tasks[1], fresh["id"]]
    assert status(svc)["counts"]["failed"] == 0


def test_ls_down_during_refit_is_retried(make_service: Callable[..., Service]) -> None:
    svc = make_service(retry_intervals_s=[1])
    tasks = setup_project(svc, 2)
    svc.run_worker()
    svc.ls.down = True
    ann = annotate(svc, tasks[0], SEED)  # the webhook arrives; LS API then fails
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v0"
    svc.ls.down = False
    refit = [j for j in svc.jobs.batch.scheduled_job_registry.get_job_ids() if "ann-" in j]
    assert refit and refit[0].startswith(f"ann-1-{ann['id']}-")
    run_due_retries(svc, refit[0])
    assert version(svc) == "gfsam-p1-v1" and len(svc.ls.posts) == 1
    assert svc.pipeline.calls["reference"] == 1


def test_ls_down_for_good_fails_after_retries(svc: Service) -> None:
    tasks = setup_project(svc, 2)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    fresh = svc.ls.add_task(1, png_bytes(64, 48, seed=6))
    svc.ls.down = True
    jobs = make_jobs(svc.conn, svc.settings)
    pending = inline.start(jobs.store, jobs, 1, "gfsam-p1-v1", [fresh["id"]])
    inline.give_up(jobs.store, jobs, 1, "gfsam-p1-v1", pending)
    svc.run_worker()  # retry interval 0: all attempts now
    job = Job.fetch(
        predict_job_id(1, fresh["id"], "gfsam-p1-v1"),
        connection=svc.conn,
        serializer=JSONSerializer,
    )
    assert job.get_status().value == "failed" and job.retries_left == 0
    assert status(svc)["counts"]["failed"] == 1
    assert "LabelStudioUnavailable" in status(svc)["failures"][f"task:{fresh['id']}"]
    svc.ls.down = False  # LS asks again later: /predict re-queues the failed job
    again = PredictJob(
        project=1,
        task=fresh["id"],
        version="gfsam-p1-v1",
        image_url=fresh["data"]["image"],
        interactive=True,
    )
    assert jobs.enqueue_predict(again, high=True) == "requeued"
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts][-1] == fresh["id"]


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


def test_refit_lock_of_a_killed_worker_is_broken_at_once(svc: Service) -> None:
    tasks = setup_project(svc, 2)
    dead = Store(svc.conn, svc.settings, owner="gfsam-host-99-dead")
    lock = dead.coord._locked("gfsam:lock:refit:1", 600, 1, break_dead=True)
    lock.__enter__()  # a worker took the re-fit lock, then was SIGKILLed (no lease)
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    svc.client.post("/webhook", json=event("ANNOTATION_CREATED", ann, svc.ls))
    started = time.monotonic()
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v1"
    assert time.monotonic() - started < 5  # not the lock's 600 s


def test_failed_sync_is_queued_again_by_the_next_setup(svc: Service) -> None:
    assert svc.client.post("/setup", json=fixture("setup.json")).is_success  # queues sync-1
    tasks = [svc.ls.add_task(1, png_bytes(64, 48, seed=i))["id"] for i in range(2)]
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])  # its webhook was lost
    svc.ls.down = True
    svc.run_worker()  # the sync fails, all retries included
    assert make_jobs(svc.conn, svc.settings).job_status("sync-1") == "failed"
    svc.ls.down = False
    assert version(svc) == "gfsam-p1-v0"  # this /setup queues a new sync
    svc.run_worker()
    assert status(svc)["shots"] == {"Object": [ann["id"]]}
    assert make_jobs(svc.conn, svc.settings).job_status("sync-1") is None  # done, not kept
    assert version(svc) == "gfsam-p1-v1"
    assert make_jobs(svc.conn, svc.settings).batch.job_ids == []  # synced: no more syncs


def test_long_ls_outage_during_preannotation_is_repaired_by_a_sync(svc: Service) -> None:
    """Pre-annotation jobs that exhausted their retries (LS down) are redone by the next sync,
    including results whose POST failed after the delivery claim, and each task gets one post."""
    tasks = setup_project(svc, 4)
    svc.run_worker()  # the first sync
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    assert svc.client.post("/webhook", json=event("ANNOTATION_CREATED", ann, svc.ls)).is_success
    run_worker(svc.conn, svc.settings, max_jobs=1)  # the re-fit: v1, 3 tasks queued
    svc.ls.down = True  # every download and POST now fails, beyond all retries
    svc.run_worker()
    assert svc.ls.posts == [] and status(svc)["counts"]["failed"] == 3
    svc.ls.down = False
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert svc.client.post("/webhook", json=body).is_success
    svc.run_worker()
    assert sorted(p["task"] for p in svc.ls.posts) == tasks[1:]
    assert {p["model_version"] for p in svc.ls.posts} == {"gfsam-p1-v1"}


def test_claimed_but_unposted_result_is_redelivered(svc: Service) -> None:
    tasks = setup_project(svc, 2)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [tasks[1]]
    store = Store(svc.conn, svc.settings)
    # As if the POST had failed after the claim: LS lost it, our posted marker was never set.
    svc.ls.posts.clear()
    svc.ls.predictions.clear()
    svc.conn.delete(key("posted:{p}:{t}:{v}", p=1, t=tasks[1], v="gfsam-p1-v1"))
    assert store.coord.delivery_claim(1, tasks[1], "gfsam-p1-v1") == "api"
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert svc.client.post("/webhook", json=body).is_success
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [tasks[1]]
    assert svc.pipeline.calls["predict"] == 1  # delivered from the stored result, not recomputed


def test_predict_on_a_skipped_task_does_not_wait_for_the_deadline(svc: Service) -> None:
    """A cancelled (skipped) annotation leaves the task unlabeled; and /predict on a task whose
    batch job finished without a result (skipped) computes it at once."""
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    run_worker(svc.conn, svc.settings, max_jobs=2)  # sync and re-fit: tasks 1, 2 queued
    skip = svc.ls.annotate(tasks[2], [], was_cancelled=True)
    body = event("ANNOTATION_CREATED", skip, svc.ls)
    body["annotation"]["was_cancelled"] = True
    assert svc.client.post("/webhook", json=body).is_success
    store = Store(svc.conn, svc.settings)
    assert not store.data.is_labeled(1, tasks[2])
    svc.run_worker()
    assert sorted(p["task"] for p in svc.ls.posts) == tasks[1:]  # the skipped task too
    # A labeled task's batch job finishes as "skipped"; a later /predict must not wait it out.
    store.data.mark_labeled(1, tasks[1])
    svc.conn.delete(key("delivered:{p}:{t}:{v}", p=1, t=tasks[1], v="gfsam-p1-v1"))
    svc.conn.delete(key("pred:{p}:{t}:{v}", p=1, t=tasks[1], v="gfsam-p1-v1"))
    jobs = make_jobs(svc.conn, svc.settings)
    job = PredictJob(
        project=1,
        task=tasks[1],
        version="gfsam-p1-v1",
        image_url=svc.ls.tasks[tasks[1]]["data"]["image"],
    )
    jobs.enqueue_predict(job, high=False)  # finished -> dead -> queued again, then skipped
    svc.run_worker()
    req = fixture("predict_single.json")
    req["tasks"] = [{"id": tasks[1], "data": svc.ls.tasks[tasks[1]]["data"], "project": 1}]
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(svc.client.post("/predict", json=req).json())
    )
    started = time.monotonic()
    thread.start()
    while thread.is_alive():  # the worker runs here: RQ workers need the main thread
        svc.run_worker()
        time.sleep(0.02)
    reply = replies[0]
    assert time.monotonic() - started < svc.settings.predict_deadline_s / 2
    assert reply["results"][0]["result"] and reply["results"][0]["model_version"] == "gfsam-p1-v1"


def test_a_wiped_redis_never_reuses_a_version_label_studio_holds(svc: Service) -> None:
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert {p["model_version"] for p in svc.ls.posts} == {"gfsam-p1-v1"}
    svc.conn.flushdb()  # the operator lost or replaced the backend's Redis; LS kept everything
    assert version(svc) == "gfsam-p1-v0"
    svc.run_worker()  # the sync of a project new to this Redis
    assert version(svc) == "gfsam-p1-v2"  # past v1, which LS already holds
    new = [p for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v2"]
    assert sorted(p["task"] for p in new) == tasks[1:]  # re-predicted, not mistaken for done


def test_a_refit_that_fails_for_good_is_reported_on_the_project(svc: Service) -> None:
    tasks = setup_project(svc, 2)
    svc.run_worker()
    svc.ls.down = True
    ann = annotate(svc, tasks[0], SEED)
    svc.run_worker()  # retry interval 0: every attempt fails now
    failures = status(svc)["failures"]
    assert "LabelStudioUnavailable" in failures[f"annotation:{ann['id']}"]
    assert version(svc) == "gfsam-p1-v0"


def test_a_job_dequeued_by_a_worker_that_died_is_requeued(svc: Service) -> None:
    """Killed between RQ's dequeue and its start registration, a worker leaves the job in the
    queue's intermediate list: recovery requeues it on its second sighting, once."""
    from rq.intermediate_queue import IntermediateQueue

    from worker.recovery import recover_abandoned

    job = PredictJob(project=1, task=5, version="gfsam-p1-v1", image_url="/data/upload/1/x.png")
    svc.jobs.enqueue_predict(job, high=False)
    job_id = predict_job_id(1, 5, "gfsam-p1-v1")
    batch = svc.jobs.batch
    intermediate = IntermediateQueue(batch.key, connection=svc.conn)
    svc.conn.lmove(batch.key, intermediate.key)  # what a dequeue does; then the worker dies
    names = [q.name for q in svc.jobs.queues]
    assert recover_abandoned(svc.conn, svc.store, names) == []  # first sighting: maybe starting
    assert recover_abandoned(svc.conn, svc.store, names) == [job_id]
    assert batch.job_ids == [job_id] and intermediate.get_job_ids() == []
    assert recover_abandoned(svc.conn, svc.store, names) == []


def _start(svc: Service, job_id: str, worker: str) -> None:
    """What a worker's start of a job leaves in Redis: out of the queue, started under `worker`."""
    from rq.executions import Execution

    job = Job.fetch(job_id, connection=svc.conn, serializer=JSONSerializer)
    Queue(job.origin, connection=svc.conn, serializer=JSONSerializer).remove(job_id)
    with svc.conn.pipeline() as pipe:
        Execution.create(job, 600, pipeline=pipe, worker_name=worker)
        pipe.execute()


def test_a_job_stranded_under_a_live_worker_is_requeued(svc: Service) -> None:
    """Issue 22, item 1: the worker lives (lease renewed) but runs another job, or none: the
    job it was running when Redis went away is requeued once seen so twice, never a job the
    worker's lease names."""
    from worker.recovery import Sightings, recover_abandoned

    job = PredictJob(project=1, task=5, version="gfsam-p1-v1", image_url="/data/upload/1/x.png")
    svc.jobs.enqueue_predict(job, high=False)
    job_id, worker = predict_job_id(1, 5, "gfsam-p1-v1"), "gfsam-host-7-abc"
    _start(svc, job_id, worker)
    names = [q.name for q in svc.jobs.queues]
    svc.store.coord.renew_lease(worker, 30, job_id)  # running it: never touched
    assert recover_abandoned(svc.conn, svc.store, names, Sightings(after_s=0)) == []
    svc.store.coord.renew_lease(worker, 30, "")  # idle after a Redis restart: stranded
    assert recover_abandoned(svc.conn, svc.store, names) == []  # no sightings: dead ones only
    slow = Sightings(after_s=60)
    assert recover_abandoned(svc.conn, svc.store, names, slow) == []  # seen once, not yet due
    assert list(slow.first) and svc.jobs.batch.job_ids == []
    assert recover_abandoned(svc.conn, svc.store, names, Sightings(after_s=0)) == [job_id]
    assert svc.jobs.batch.job_ids == [job_id]
    assert svc.jobs.batch.started_job_registry.get_job_ids() == []


def test_a_click_past_its_deadline_is_not_requeued_after_its_worker_died(svc: Service) -> None:
    """Issue 22, item 6: the interactive worker is killed during a click; recovery requeues the
    click only while its caller still waits (deadline), else deletes it: a caller that got its
    503 never has its click run again, and the lane is not held by it."""
    from backend.state.prompts import ClickJob, Prompts
    from worker.recovery import recover_abandoned

    prompts = Prompts(label="Object", points=[(1.0, 1.0)], positive=[True], width=8, height=8)
    ids = {}
    for name, offset in (("waiting", 60.0), ("gone", -1.0)):
        job = ClickJob(
            project=1,
            task=5,
            version="gfsam-p1-v0",
            from_name="tag",
            to_name="image",
            data_key="image",
            prompts=prompts,
            deadline=time.time() + offset,
        )
        ids[name] = svc.jobs.enqueue_click(job)
        _start(svc, ids[name], "gfsam-host-9-dead")  # its worker was SIGKILLed: no lease
    lane = [svc.jobs.interactive.name]
    assert recover_abandoned(svc.conn, svc.store, lane) == [ids["waiting"]]
    assert svc.jobs.interactive.job_ids == [ids["waiting"]]
    assert svc.jobs.job_status(ids["gone"]) is None  # deleted, never run again
