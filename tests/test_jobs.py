"""Enqueue through the API, run `SimpleWorker(...).work(burst=True)` in-process with the fake
pipeline and a fake LS, then assert on versions, shots, deliveries and counts (real Redis)."""

from __future__ import annotations

import copy
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from redis import Redis

from backend import inline
from backend.jobs import Jobs, predict_job_id
from backend.schemas import PredictJob
from backend.settings import Settings
from backend.store import Store
from tests.fakes import FakeLabelStudio, FakePipeline, box_mask, brush_region, png_bytes
from tests.service_fixtures import changed, run_worker
from worker.brush import annotation_masks, rle_to_mask

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


def setup_project(client: TestClient, ls: FakeLabelStudio, n: int = 4) -> list[int]:
    assert client.post("/setup", json=fixture("setup.json")).status_code == 200
    return [ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(n)]


def annotate(
    client: TestClient,
    ls: FakeLabelStudio,
    task: int,
    mask: np.ndarray | None,
    annotation: int | None = None,
    label: str = "Object",
) -> dict[str, Any]:
    result = [] if mask is None else [brush_region(mask, label)]
    ann = ls.annotate(task, result, annotation)
    action = "ANNOTATION_UPDATED" if annotation else "ANNOTATION_CREATED"
    assert client.post("/webhook", json=event(action, ann, ls)).status_code == 200
    return ann


def version(client: TestClient) -> str:
    return client.post("/setup", json=fixture("setup.json")).json()["model_version"]


def status(client: TestClient, project: int = 1) -> dict[str, Any]:
    return client.get(f"/projects/{project}").json()


def seeded(
    client: TestClient, ls: FakeLabelStudio, conn: Redis, settings: Settings, n: int = 4
) -> list[int]:
    """Project 1 with n tasks, the first annotated (seed), pre-annotations delivered."""
    tasks = setup_project(client, ls, n)
    annotate(client, ls, tasks[0], SEED)
    run_worker(conn, settings)
    return tasks


def test_seed_then_preannotation_through_the_api(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    assert version(service_client) == "gfsam-p1-v0"
    ann = annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v1"
    assert status(service_client)["shots"] == {"Object": [ann["id"]]}
    posted = sorted(fake_ls.posts, key=lambda p: p["task"])
    assert [p["task"] for p in posted] == tasks[1:]  # every unlabeled task, once
    for pred in posted:
        assert pred["model_version"] == "gfsam-p1-v1" and isinstance(pred["score"], float)
        (region,) = pred["result"]
        assert (region["from_name"], region["to_name"], region["type"]) == (
            "tag",
            "image",
            "brushlabels",
        )
        assert (region["original_width"], region["original_height"]) == (W, H)
        assert region["value"]["brushlabels"] == ["Object"]
        assert rle_to_mask(region["value"]["rle"], W, H).any()
    assert status(service_client)["counts"] == {
        "queued": 0,
        "running": 0,
        "done": 3,
        "failed": 0,
        "stale": 0,
    }


def test_version_swaps_only_after_blobs_are_stored(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    seen: list[str] = []
    store = Store(redis_conn, service_settings)
    encode = fake_pipeline.encode_reference

    def spy(image: np.ndarray, mask: np.ndarray) -> Any:
        seen.append(version(service_client))  # what LS would get from /setup meanwhile
        return encode(image, mask)

    fake_pipeline.encode_reference = spy  # type: ignore[method-assign]
    swap = store.swap_reference_set
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    assert seen == ["gfsam-p1-v0"]
    refs = store.reference_set(1)
    assert refs.version == "gfsam-p1-v1"
    assert all(store.has_blob(s.ref) for s in refs.shots["Object"])
    assert swap  # the swap itself refuses a set naming a missing blob:
    bad = refs.model_copy(update={"n": 2})
    bad.shots["Object"][0] = bad.shots["Object"][0].model_copy(update={"ref": "0" * 64})
    try:
        store.swap_reference_set(bad, expected_n=1)
        raise AssertionError("swap accepted a missing blob")
    except RuntimeError as exc:
        assert "missing" in str(exc)


def test_duplicate_event_runs_once(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    ann = fake_ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    body = event("ANNOTATION_CREATED", ann, fake_ls)
    replies = [service_client.post("/webhook", json=body).json() for _ in range(3)]
    assert [len(r["queued"]) for r in replies] == [1, 0, 0]
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v1"
    assert fake_pipeline.calls["reference"] == 1


def test_accepted_prediction_is_not_a_shot_and_correction_is(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = seeded(service_client, fake_ls, redis_conn, service_settings)
    targets_before = fake_pipeline.calls["target"]
    kept = annotation_masks(fake_ls.predictions_for(tasks[1])[0]["result"], from_name="tag")
    accepted = annotate(service_client, fake_ls, tasks[1], kept["Object"])
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v1"  # unchanged prediction: no new shot
    corrected = annotate(service_client, fake_ls, tasks[2], box_mask(H, W, 0, 40, 0, 60))
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v2"
    st = status(service_client)
    assert (
        st["shots"]["Object"][1] == corrected["id"] and accepted["id"] not in st["shots"]["Object"]
    )
    ious = {s["annotation"]: s["iou"]["Object"] for s in st["acceptance"]}
    assert ious[accepted["id"]] == 1.0 and ious[corrected["id"]] < 0.99
    # the only task without annotation is re-predicted at v2 from its cached target encoding
    v2 = [p for p in fake_ls.posts if p["model_version"] == "gfsam-p1-v2"]
    assert [p["task"] for p in v2] == [tasks[3]]
    assert fake_pipeline.calls["target"] == targets_before
    stats = Store(redis_conn, service_settings).stats()
    assert stats["target_cache_hit"] >= 1
    metrics = service_client.get("/metrics").text
    assert 'gfsam_worker_events_total{event="target_cache_hit"}' in metrics
    assert 'gfsam_acceptance_iou_count{project="1"} 2.0' in metrics


def test_max_shots_keeps_seed_and_drops_oldest_correction(
    service_settings: Settings,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    fake_pipeline: FakePipeline,
) -> None:
    from backend.app import create_app
    from tests.fakes import fake_model
    from worker import models

    settings = changed(service_settings, max_shots=2)
    models.install(settings, fake_model(fake_pipeline))
    with TestClient(create_app(settings)) as client:
        tasks = setup_project(client, fake_ls, 5)
        seed = annotate(client, fake_ls, tasks[0], SEED)
        run_worker(redis_conn, settings)
        corrections = []
        for i, t in enumerate(tasks[1:4]):
            corrections.append(annotate(client, fake_ls, t, box_mask(H, W, 0, 10 + 5 * i, 0, 9)))
            run_worker(redis_conn, settings)
        assert status(client)["shots"] == {"Object": [seed["id"], corrections[-1]["id"]]}
        assert version(client) == "gfsam-p1-v4"


def test_update_replaces_shot_and_delete_removes_it(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    ann = annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    store = Store(redis_conn, service_settings)
    ref_v1 = store.reference_set(1).shots["Object"][0].ref
    annotate(service_client, fake_ls, tasks[0], box_mask(H, W, 5, 40, 5, 40), ann["id"])
    run_worker(redis_conn, service_settings)
    refs = store.reference_set(1)
    assert refs.version == "gfsam-p1-v2" and refs.shot_ids() == {"Object": [ann["id"]]}
    assert refs.shots["Object"][0].ref != ref_v1
    fake_ls.delete_annotation(ann["id"])
    deleted = fixture("webhook_annotations_deleted.json")
    deleted["annotations"] = [{"id": ann["id"]}]
    assert service_client.post("/webhook", json=deleted).json()["status"] == "ok"
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v3"
    assert status(service_client)["shots"] == {} and status(service_client)["ready"] is False
    reply = service_client.post("/predict", json=fixture("predict_single.json")).json()
    assert reply == {"results": [{"model_version": "gfsam-p1-v3"}]}


def test_empty_or_bad_brush_is_not_a_shot(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    annotate(service_client, fake_ls, tasks[0], np.zeros((H, W), dtype=bool))  # empty brush
    annotate(service_client, fake_ls, tasks[1], None)  # no regions at all
    bad = brush_region(SEED, "Object")
    bad["original_width"] = W + 1  # RLE size != W*H*4
    ann = fake_ls.annotate(tasks[2], [bad])
    service_client.post("/webhook", json=event("ANNOTATION_CREATED", ann, fake_ls))
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v0" and fake_ls.posts == []
    failures = status(service_client)["failures"]
    assert "RLE size mismatch" in failures[f"annotation:{ann['id']}"]


def test_corrupt_and_missing_images_fail_alone(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls, 2)
    corrupt = fake_ls.add_task(1, b"\x89PNG not really")["id"]
    missing = fake_ls.add_task(1, None)["id"]
    annotate(service_client, fake_ls, tasks[0], SEED)
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [tasks[1]]
    st = status(service_client)
    assert st["counts"]["failed"] == 2 and st["counts"]["done"] == 1
    assert "decode" in st["failures"][f"task:{corrupt}"]
    assert "404" in st["failures"][f"task:{missing}"]


def test_multilabel_overlap_goes_to_higher_score(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    service_client.post("/setup", json=fixture("setup_multilabel.json"))
    a, b = (fake_ls.add_task(2, png_bytes(W, H, seed=i))["id"] for i in range(2))
    cat, dog = box_mask(H, W, 0, 30, 0, 40), box_mask(H, W, 10, 40, 20, 60)
    ann = fake_ls.annotate(a, [brush_region(cat, "Cat"), brush_region(dog, "Dog")])
    body = event("ANNOTATION_CREATED", ann, fake_ls)
    body["project"].update(id=2, label_config=fixture("setup_multilabel.json")["schema"])
    service_client.post("/webhook", json=body)
    run_worker(redis_conn, service_settings)
    (pred,) = fake_ls.posts
    masks = annotation_masks(pred["result"], from_name="tag")
    assert set(masks) == {"Cat", "Dog"} and not (masks["Cat"] & masks["Dog"]).any()
    scores = {r["value"]["brushlabels"][0]: r["score"] for r in pred["result"]}
    assert scores["Cat"] > scores["Dog"]  # the fake overlaps them; Cat wins the shared pixels
    raw = fake_pipeline.predict_labels(
        fake_pipeline.encode_target(np.zeros((H, W, 3), np.uint8)),
        {
            label: [fake_pipeline.encode_reference(np.zeros((H, W, 3), np.uint8), m)]
            for label, m in (("Cat", cat), ("Dog", dog))
        },
    )
    assert (raw["Cat"].mask & raw["Dog"].mask).any()
    assert (masks["Cat"] == raw["Cat"].mask).all() and b == pred["task"]


def test_abstaining_prediction_is_empty_result_with_score(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    setup = fixture("setup.json")
    setup["schema"] = setup["schema"].replace('"Object"', '"Absent"')
    service_client.post("/setup", json=setup)
    a, b = (fake_ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(2))
    ann = fake_ls.annotate(a, [brush_region(SEED, "Absent")])
    body = event("ANNOTATION_CREATED", ann, fake_ls)
    body["project"]["label_config"] = setup["schema"]
    service_client.post("/webhook", json=body)
    run_worker(redis_conn, service_settings)
    assert fake_ls.posts == [
        {"task": b, "result": [], "score": 0.1, "model_version": "gfsam-p1-v1"}
    ]


def test_sync_recovers_missed_webhooks(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = setup_project(service_client, fake_ls)
    run_worker(redis_conn, service_settings)  # the sync queued by the first /setup: nothing yet
    ann = fake_ls.annotate(tasks[0], [brush_region(SEED, "Object")])  # webhook lost
    reply = service_client.post("/webhook", json=fixture("webhook_start_training.json"))
    assert reply.json()["queued"] == ["sync-1"]
    run_worker(redis_conn, service_settings)
    assert status(service_client)["shots"] == {"Object": [ann["id"]]}
    assert len(fake_ls.posts) == 3
    fake_ls.delete_annotation(ann["id"])  # deleted, webhook lost too
    service_client.post("/webhook", json=fixture("webhook_start_training.json"))
    run_worker(redis_conn, service_settings)
    assert status(service_client)["shots"] == {} and version(service_client) == "gfsam-p1-v2"


def test_stale_version_is_dropped(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = seeded(service_client, fake_ls, redis_conn, service_settings, 3)
    jobs = Jobs(redis_conn, service_settings)
    fake_ls.predictions.clear()
    fake_ls.posts.clear()
    url = fake_ls.tasks[tasks[1]]["data"]["image"]
    jobs.batch.empty()
    assert (
        jobs.enqueue_predict(
            PredictJob(project=1, task=tasks[1], version="gfsam-p1-v0", image_url=url), high=False
        )
        == "queued"
    )
    run_worker(redis_conn, service_settings)
    assert fake_ls.posts == [] and status(service_client)["counts"]["stale"] == 1


# --------------------------------------------------------------------------- delivery races


def _race_setup(
    client: TestClient, ls: FakeLabelStudio, conn: Redis, settings: Settings
) -> tuple[Jobs, int, str]:
    """Seeded project with a fresh task that nothing has predicted yet."""
    seeded(client, ls, conn, settings, 2)
    task = ls.add_task(1, png_bytes(W, H, seed=9))
    ls.posts.clear()
    return Jobs(conn, settings), task["id"], task["data"]["image"]


def test_race_result_before_deadline_is_inline_only(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    jobs, t, url = _race_setup(service_client, fake_ls, redis_conn, service_settings)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs, 1, v, [(t, url)])
    run_worker(redis_conn, service_settings)  # stores, sees the waiter, leaves delivery to us
    out: list[Any] = [None]
    inline.wait(jobs, 1, v, pending, out, time.monotonic() + 5)
    inline.give_up(jobs, 1, v, pending)
    assert out[0] is not None and out[0].model_version == v
    run_worker(redis_conn, service_settings)
    assert fake_ls.posts == []


def test_race_deadline_before_result_goes_through_api(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    jobs, t, url = _race_setup(service_client, fake_ls, redis_conn, service_settings)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs, 1, v, [(t, url)])
    inline.give_up(jobs, 1, v, pending)  # deadline: nothing computed yet
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [t]
    out: list[Any] = [None]
    inline.wait(jobs, 1, v, {t: 0}, out, time.monotonic() + 1)  # a late look finds it claimed
    assert out == [None]


def test_race_result_lands_while_giving_up(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    jobs, t, url = _race_setup(service_client, fake_ls, redis_conn, service_settings)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs, 1, v, [(t, url)])
    run_worker(redis_conn, service_settings)  # stored while the waiter was still registered
    inline.give_up(jobs, 1, v, pending)  # claims "api" and queues a deliver job
    assert fake_ls.posts == []
    run_worker(redis_conn, service_settings)
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [t]


def test_predict_after_api_delivery_and_redelivery_are_idempotent(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = seeded(service_client, fake_ls, redis_conn, service_settings, 2)
    before = len(fake_ls.posts)
    single = fixture("predict_single.json")
    single["tasks"][0].update(id=tasks[1], data=fake_ls.tasks[tasks[1]]["data"])
    reply = service_client.post("/predict", json=single).json()
    assert reply == {"results": [{"model_version": "gfsam-p1-v1"}]}  # delivered via API already
    run_worker(redis_conn, service_settings)  # the queued re-check finds it in LS
    assert len(fake_ls.posts) == before
    fake_ls.predictions.clear()  # the user deleted it in LS: a re-check posts it again
    service_client.post("/predict", json=single)
    run_worker(redis_conn, service_settings)
    assert len(fake_ls.posts) == before + 1


def test_inline_reply_is_verified_later(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    jobs, t, url = _race_setup(service_client, fake_ls, redis_conn, service_settings)
    from backend.schemas import DeliverJob

    v = "gfsam-p1-v1"
    pending = inline.start(jobs, 1, v, [(t, url)])
    run_worker(redis_conn, service_settings)
    out: list[Any] = [None]
    inline.wait(jobs, 1, v, pending, out, time.monotonic() + 5)
    assert out[0] is not None
    fake_ls.predictions[999] = {"id": 999, "task": t, "model_version": v, "result": []}
    jobs.enqueue_deliver(DeliverJob(project=1, task=t, version=v))  # LS stored the reply
    run_worker(redis_conn, service_settings)
    assert fake_ls.posts == []
    del fake_ls.predictions[999]  # LS never stored it (timeout, test request, failed batch)
    jobs.enqueue_deliver(DeliverJob(project=1, task=t, version=v))
    run_worker(redis_conn, service_settings)
    assert [p["task"] for p in fake_ls.posts] == [t]


def test_predict_http_inline_with_a_running_worker(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    seeded(service_client, fake_ls, redis_conn, service_settings, 2)
    new = [fake_ls.add_task(1, png_bytes(W, H, seed=20 + i)) for i in range(3)]
    fake_ls.posts.clear()
    batch = fixture("predict_batch.json")
    for item, task in zip(batch["tasks"], new, strict=True):
        item.update(id=task["id"], data=task["data"])
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(service_client.post("/predict", json=batch))
    )
    thread.start()
    while thread.is_alive():
        run_worker(redis_conn, service_settings)
        time.sleep(0.02)
    results = replies[0].json()["results"]
    assert [r["model_version"] for r in results] == ["gfsam-p1-v1"] * 3
    assert all(r["result"] and r["score"] > 0 for r in results)
    assert results[0]["result"][0]["original_width"] == W
    assert fake_ls.posts == []  # inline only


def test_predict_promotes_a_queued_batch_job(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
) -> None:
    jobs = Jobs(redis_conn, service_settings)
    payload = PredictJob(project=1, task=7, version="gfsam-p1-v1", image_url="/x.png")
    assert jobs.enqueue_predict(payload, high=False) == "queued"
    assert jobs.enqueue_predict(payload, high=False) == "exists"
    assert jobs.enqueue_predict(payload, high=True) == "promoted"
    job_id = predict_job_id(1, 7, "gfsam-p1-v1")
    assert jobs.high.job_ids == [job_id] and jobs.batch.job_ids == []


def test_inline_reply_schedules_a_later_check(
    service_settings: Settings,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    fake_pipeline: FakePipeline,
) -> None:
    from rq.registry import ScheduledJobRegistry

    from backend.app import create_app

    settings = changed(service_settings, inline_verify_delay_s=150)
    with TestClient(create_app(settings)) as client:
        jobs, t, url = _race_setup(client, fake_ls, redis_conn, settings)
        pending = inline.start(jobs, 1, "gfsam-p1-v1", [(t, url)])
        run_worker(redis_conn, settings)
        out: list[Any] = [None]
        inline.wait(jobs, 1, "gfsam-p1-v1", pending, out, time.monotonic() + 5)
        assert out[0] is not None
    registry = ScheduledJobRegistry(settings.queue_batch, connection=redis_conn)
    assert registry.get_job_ids() == [f"verify-1-{t}-1"]
    # One check (ids collapse): the worker that left delivery to the waiter scheduled it first,
    # at the waiter's deadline plus max(inline_verify_delay_s, 60) of its own settings.
    when = registry.get_scheduled_time(f"verify-1-{t}-1").timestamp()
    worker_delay = service_settings.predict_deadline_s + max(
        service_settings.inline_verify_delay_s, 60
    )
    assert worker_delay - 10 < when - time.time() <= worker_delay


def test_task_whose_annotation_is_deleted_is_preannotated_again(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = seeded(service_client, fake_ls, redis_conn, service_settings, 3)
    fix = annotate(service_client, fake_ls, tasks[1], box_mask(H, W, 0, 40, 0, 60))
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v2"
    assert {p["task"] for p in fake_ls.posts if p["model_version"] == "gfsam-p1-v2"} == {tasks[2]}
    fake_ls.delete_annotation(fix["id"])
    deleted = fixture("webhook_annotations_deleted.json")
    deleted["annotations"] = [{"id": fix["id"]}]
    service_client.post("/webhook", json=deleted)
    run_worker(redis_conn, service_settings)
    assert version(service_client) == "gfsam-p1-v3"
    v3 = sorted(p["task"] for p in fake_ls.posts if p["model_version"] == "gfsam-p1-v3")
    assert v3 == [tasks[1], tasks[2]]


def test_label_config_change_bumps_version_and_repredicts(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    tasks = seeded(service_client, fake_ls, redis_conn, service_settings)
    shots = status(service_client)["shots"]
    body = fixture("setup.json")
    assert version(service_client) == "gfsam-p1-v1"
    # A cosmetic change (same control, image key and labels) keeps the version, queues nothing.
    body["schema"] = body["schema"].replace('zoom="true"', 'zoom="false"')
    assert service_client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    run_worker(redis_conn, service_settings)
    assert service_client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    # Renaming the brush control: the delivered predictions no longer fit the config.
    body["schema"] = body["schema"].replace('name="tag"', 'name="mask"')
    posts_before = len(fake_ls.posts)
    assert service_client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    run_worker(redis_conn, service_settings)
    assert service_client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v2"
    assert status(service_client)["shots"] == shots  # same references
    new = fake_ls.posts[posts_before:]
    assert sorted(p["task"] for p in new) == tasks[1:]
    assert all(p["model_version"] == "gfsam-p1-v2" for p in new)
    assert all(p["result"][0]["from_name"] == "mask" for p in new)
    # Back to the first config, then to the second again: each change is a new version.
    for schema, expected in ((fixture("setup.json")["schema"], 3), (body["schema"], 4)):
        assert service_client.post("/setup", json={**body, "schema": schema}).is_success
        run_worker(redis_conn, service_settings)
        assert version(service_client) == f"gfsam-p1-v{expected}"


def test_sync_of_an_annotated_project_encodes_only_the_shots_it_keeps(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    """Connecting to a project with 10 annotations encodes MAX_SHOTS (5) references, not 10, and
    the blob of a shot dropped later expires while the current ones stay."""
    tasks = [fake_ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(12)]
    anns = [
        fake_ls.annotate(t, [brush_region(box_mask(H, W, 2 + i, 30, 5, 40 + i), "Object")])
        for i, t in enumerate(tasks[:10])
    ]
    assert service_client.post("/setup", json=fixture("setup.json")).status_code == 200
    run_worker(redis_conn, service_settings)
    kept = [anns[0]["id"], *[a["id"] for a in anns[-4:]]]  # the seed and the 4 newest
    assert status(service_client)["shots"] == {"Object": kept}
    assert fake_pipeline.calls["reference"] == 5
    assert len(redis_conn.keys("gfsam:ref:*")) == 5
    # One more correction drops the oldest kept correction: its blob expires, the rest persist.
    store = Store(redis_conn, service_settings)
    before = {
        s["annotation"]: s["ref"] for s in store.reference_set(1).model_dump()["shots"]["Object"]
    }
    annotate(service_client, fake_ls, tasks[10], box_mask(H, W, 1, 20, 1, 20))
    run_worker(redis_conn, service_settings)
    dropped = before[kept[1]]
    assert redis_conn.ttl(f"gfsam:ref:{dropped}") > 0
    current = store.reference_set(1).shots["Object"]
    assert kept[1] not in [s.annotation for s in current]
    assert all(redis_conn.ttl(f"gfsam:ref:{s.ref}") == -1 for s in current)


def test_an_older_snapshot_never_undoes_a_later_change(
    service_client: TestClient,
    fake_ls: FakeLabelStudio,
    redis_conn: Redis,
    service_settings: Settings,
    fake_pipeline: FakePipeline,
) -> None:
    """A sync on one worker read annotation 2 before another worker applied its deletion: the
    stale snapshot must not bring the shot back (nor bump the version)."""
    from worker import models
    from worker.refit import AnnotationState, apply_changes

    tasks = setup_project(service_client, fake_ls, 3)
    annotate(service_client, fake_ls, tasks[0], SEED)
    ann2 = annotate(service_client, fake_ls, tasks[1], box_mask(H, W, 0, 40, 0, 60))
    run_worker(redis_conn, service_settings)
    store, jobs = Store(redis_conn, service_settings), Jobs(redis_conn, service_settings)
    url = fake_ls.tasks[tasks[1]]["data"]["image"]
    snapshot = AnnotationState.from_ls(dict(fake_ls.annotations[ann2["id"]]), url)
    fake_ls.delete_annotation(ann2["id"])
    rt = models.get()
    assert apply_changes(rt, store, jobs, 1, [AnnotationState.deleted(ann2["id"])])
    after_delete = store.current_version(1)
    assert ann2["id"] not in status(service_client)["shots"]["Object"]
    assert apply_changes(rt, store, jobs, 1, [snapshot]) is None
    assert store.current_version(1) == after_delete
    assert ann2["id"] not in status(service_client)["shots"]["Object"]
