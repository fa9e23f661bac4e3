"""Enqueue through the API, run `SimpleWorker(...).work(burst=True)` in-process with the fake
pipeline and a fake LS, then assert on versions, shots, deliveries and counts (real Redis)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from backend.api import inline
from backend.state.jobs import Jobs, predict_job_id
from backend.state.schemas import PredictJob
from backend.state.store import Store
from tests.fakes import box_mask, brush_region, png_bytes
from tests.project_helpers import (
    SEED,
    H,
    W,
    annotate,
    event,
    fixture,
    seeded,
    setup_project,
    status,
    version,
)
from tests.service_fixtures import Service, make_jobs
from worker.labelstudio.brush_rle import annotation_masks, rle_to_mask


def test_seed_then_preannotation_through_the_api(svc: Service) -> None:
    tasks = setup_project(svc)
    assert version(svc) == "gfsam-p1-v0"
    ann = annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v1"
    assert status(svc)["shots"] == {"Object": [ann["id"]]}
    posted = sorted(svc.ls.posts, key=lambda p: p["task"])
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
    assert status(svc)["counts"] == {
        "queued": 0,
        "running": 0,
        "done": 3,
        "failed": 0,
        "stale": 0,
    }


def test_version_swaps_only_after_blobs_are_stored(svc: Service) -> None:
    tasks = setup_project(svc)
    seen: list[str] = []
    store = Store(svc.conn, svc.settings)
    encode = svc.pipeline.encode_reference

    def spy(image: np.ndarray, mask: np.ndarray) -> Any:
        seen.append(version(svc))  # what LS would get from /setup meanwhile
        return encode(image, mask)

    svc.pipeline.encode_reference = spy  # type: ignore[method-assign]
    swap = store.data.swap_reference_set
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert seen == ["gfsam-p1-v0"]
    refs = store.data.reference_set(1)
    assert refs.version == "gfsam-p1-v1"
    assert all(store.data.has_blob(s.ref) for s in refs.shots["Object"])
    assert swap  # the swap itself refuses a set naming a missing blob:
    bad = refs.model_copy(update={"n": 2})
    bad.shots["Object"][0] = bad.shots["Object"][0].model_copy(update={"ref": "0" * 64})
    try:
        store.data.swap_reference_set(bad, expected_n=1)
        raise AssertionError("swap accepted a missing blob")
    except RuntimeError as exc:
        assert "missing" in str(exc)


def test_duplicate_event_runs_once(svc: Service) -> None:
    tasks = setup_project(svc)
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])
    body = event("ANNOTATION_CREATED", ann, svc.ls)
    replies = [svc.client.post("/webhook", json=body).json() for _ in range(3)]
    assert [len(r["queued"]) for r in replies] == [1, 0, 0]
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v1"
    assert svc.pipeline.calls["reference"] == 1


def test_accepted_prediction_is_not_a_shot_and_correction_is(svc: Service) -> None:
    tasks = seeded(svc)
    targets_before = svc.pipeline.calls["target"]
    kept = annotation_masks(svc.ls.predictions_for(tasks[1])[0]["result"], from_name="tag")
    accepted = annotate(svc, tasks[1], kept["Object"])
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v1"  # unchanged prediction: no new shot
    corrected = annotate(svc, tasks[2], box_mask(H, W, 0, 40, 0, 60))
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v2"
    st = status(svc)
    assert (
        st["shots"]["Object"][1] == corrected["id"] and accepted["id"] not in st["shots"]["Object"]
    )
    ious = {s["annotation"]: s["iou"]["Object"] for s in st["acceptance"]}
    assert ious[accepted["id"]] == 1.0 and ious[corrected["id"]] < 0.99
    # the only task without annotation is re-predicted at v2 from its cached target encoding
    v2 = [p for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v2"]
    assert [p["task"] for p in v2] == [tasks[3]]
    assert svc.pipeline.calls["target"] == targets_before
    stats = Store(svc.conn, svc.settings).progress.stats()
    assert stats["target_cache_hit"] >= 1
    metrics = svc.client.get("/metrics").text
    assert 'gfsam_worker_events_total{event="target_cache_hit"}' in metrics
    assert 'gfsam_acceptance_iou_count{project="1"} 2.0' in metrics


def test_max_shots_keeps_seed_and_drops_oldest_correction(
    make_service: Callable[..., Service],
) -> None:
    svc = make_service(max_shots=2)
    tasks = setup_project(svc, 5)
    seed = annotate(svc, tasks[0], SEED)
    svc.run_worker()
    corrections = []
    for i, t in enumerate(tasks[1:4]):
        corrections.append(annotate(svc, t, box_mask(H, W, 0, 10 + 5 * i, 0, 9)))
        svc.run_worker()
    assert status(svc)["shots"] == {"Object": [seed["id"], corrections[-1]["id"]]}
    assert version(svc) == "gfsam-p1-v4"


def test_update_replaces_shot_and_delete_removes_it(svc: Service) -> None:
    tasks = setup_project(svc)
    ann = annotate(svc, tasks[0], SEED)
    svc.run_worker()
    store = Store(svc.conn, svc.settings)
    ref_v1 = store.data.reference_set(1).shots["Object"][0].ref
    annotate(svc, tasks[0], box_mask(H, W, 5, 40, 5, 40), ann["id"])
    svc.run_worker()
    refs = store.data.reference_set(1)
    assert refs.version == "gfsam-p1-v2" and refs.shot_ids() == {"Object": [ann["id"]]}
    assert refs.shots["Object"][0].ref != ref_v1
    svc.ls.delete_annotation(ann["id"])
    deleted = fixture("webhook_annotations_deleted.json")
    deleted["annotations"] = [{"id": ann["id"]}]
    assert svc.client.post("/webhook", json=deleted).json()["status"] == "ok"
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v3"
    assert status(svc)["shots"] == {} and status(svc)["ready"] is False
    reply = svc.client.post("/predict", json=fixture("predict_single.json")).json()
    assert reply == {"results": [{"model_version": "gfsam-p1-v3"}]}


def test_empty_or_bad_brush_is_not_a_shot(svc: Service) -> None:
    tasks = setup_project(svc)
    annotate(svc, tasks[0], np.zeros((H, W), dtype=bool))  # empty brush
    annotate(svc, tasks[1], None)  # no regions at all
    bad = brush_region(SEED, "Object")
    bad["original_width"] = W + 1  # RLE size != W*H*4
    ann = svc.ls.annotate(tasks[2], [bad])
    svc.client.post("/webhook", json=event("ANNOTATION_CREATED", ann, svc.ls))
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v0" and svc.ls.posts == []
    failures = status(svc)["failures"]
    assert "RLE size mismatch" in failures[f"annotation:{ann['id']}"]


def test_corrupt_and_missing_images_fail_alone(svc: Service) -> None:
    tasks = setup_project(svc, 2)
    corrupt = svc.ls.add_task(1, b"\x89PNG not really")["id"]
    missing = svc.ls.add_task(1, None)["id"]
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [tasks[1]]
    st = status(svc)
    assert st["counts"]["failed"] == 2 and st["counts"]["done"] == 1
    assert "decode" in st["failures"][f"task:{corrupt}"]
    assert "404" in st["failures"][f"task:{missing}"]


def test_multilabel_overlap_goes_to_higher_score(svc: Service) -> None:
    svc.ls.configs[2] = fixture("setup_multilabel.json")["schema"]  # the config LS holds
    svc.client.post("/setup", json=fixture("setup_multilabel.json"))
    a, b = (svc.ls.add_task(2, png_bytes(W, H, seed=i))["id"] for i in range(2))
    cat, dog = box_mask(H, W, 0, 30, 0, 40), box_mask(H, W, 10, 40, 20, 60)
    ann = svc.ls.annotate(a, [brush_region(cat, "Cat"), brush_region(dog, "Dog")])
    body = event("ANNOTATION_CREATED", ann, svc.ls)
    body["project"].update(id=2, label_config=fixture("setup_multilabel.json")["schema"])
    svc.client.post("/webhook", json=body)
    svc.run_worker()
    (pred,) = svc.ls.posts
    masks = annotation_masks(pred["result"], from_name="tag")
    assert set(masks) == {"Cat", "Dog"} and not (masks["Cat"] & masks["Dog"]).any()
    scores = {r["value"]["brushlabels"][0]: r["score"] for r in pred["result"]}
    assert scores["Cat"] > scores["Dog"]  # the fake overlaps them; Cat wins the shared pixels
    raw = svc.pipeline.predict_labels(
        svc.pipeline.encode_target(np.zeros((H, W, 3), np.uint8)),
        {
            label: [svc.pipeline.encode_reference(np.zeros((H, W, 3), np.uint8), m)]
            for label, m in (("Cat", cat), ("Dog", dog))
        },
    )
    assert (raw["Cat"].mask & raw["Dog"].mask).any()
    assert (masks["Cat"] == raw["Cat"].mask).all() and b == pred["task"]


def test_abstaining_prediction_is_empty_result_with_score(svc: Service) -> None:
    setup = fixture("setup.json")
    setup["schema"] = setup["schema"].replace('"Object"', '"Absent"')
    svc.ls.configs[1] = setup["schema"]  # the config LS holds
    svc.client.post("/setup", json=setup)
    a, b = (svc.ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(2))
    ann = svc.ls.annotate(a, [brush_region(SEED, "Absent")])
    body = event("ANNOTATION_CREATED", ann, svc.ls)
    body["project"]["label_config"] = setup["schema"]
    svc.client.post("/webhook", json=body)
    svc.run_worker()
    # nothing painted, no candidate near its floor (`gfsam.taskscore.task_estimate`; a miss
    # is invisible at prediction time): the score of an unmeasured project is 1
    assert svc.ls.posts == [{"task": b, "result": [], "score": 1.0, "model_version": "gfsam-p1-v1"}]


def test_sync_recovers_missed_webhooks(svc: Service) -> None:
    tasks = setup_project(svc)
    svc.run_worker()  # the sync queued by the first /setup: nothing yet
    ann = svc.ls.annotate(tasks[0], [brush_region(SEED, "Object")])  # webhook lost
    reply = svc.client.post("/webhook", json=fixture("webhook_start_training.json"))
    assert reply.json()["queued"] == ["sync-1"]
    svc.run_worker()
    assert status(svc)["shots"] == {"Object": [ann["id"]]}
    assert len(svc.ls.posts) == 3
    svc.ls.delete_annotation(ann["id"])  # deleted, webhook lost too
    svc.client.post("/webhook", json=fixture("webhook_start_training.json"))
    svc.run_worker()
    assert status(svc)["shots"] == {} and version(svc) == "gfsam-p1-v2"


def test_stale_version_is_dropped(svc: Service) -> None:
    tasks = seeded(svc, 3)
    jobs = make_jobs(svc.conn, svc.settings)
    svc.ls.predictions.clear()
    svc.ls.posts.clear()
    url = svc.ls.tasks[tasks[1]]["data"]["image"]
    jobs.batch.empty()
    assert (
        jobs.enqueue_predict(
            PredictJob(project=1, task=tasks[1], version="gfsam-p1-v0", image_url=url), high=False
        )
        == "queued"
    )
    svc.run_worker()
    assert svc.ls.posts == [] and status(svc)["counts"]["stale"] == 1


# --------------------------------------------------------------------------- delivery races


def _race_setup(svc: Service) -> tuple[Jobs, int, str]:
    """Seeded project with a fresh task that nothing has predicted yet."""
    seeded(svc, 2)
    task = svc.ls.add_task(1, png_bytes(W, H, seed=9))
    svc.ls.posts.clear()
    return svc.jobs, task["id"], task["data"]["image"]


def test_race_result_before_deadline_is_inline_only(svc: Service) -> None:
    jobs, t, url = _race_setup(svc)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs.store, jobs, 1, v, [t])
    svc.run_worker()  # stores, sees the waiter, leaves delivery to us
    out: list[Any] = [None]
    inline.wait(jobs.store, jobs, 1, v, pending, out, time.monotonic() + 5)
    inline.give_up(jobs.store, jobs, 1, v, pending)
    assert out[0] is not None and out[0].model_version == v
    svc.run_worker()
    assert svc.ls.posts == []


def test_race_deadline_before_result_goes_through_api(svc: Service) -> None:
    jobs, t, url = _race_setup(svc)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs.store, jobs, 1, v, [t])
    inline.give_up(jobs.store, jobs, 1, v, pending)  # deadline: nothing computed yet
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [t]
    out: list[Any] = [None]
    inline.wait(
        jobs.store, jobs, 1, v, {t: 0}, out, time.monotonic() + 1
    )  # a late look finds it claimed
    assert out == [None]


def test_race_result_lands_while_giving_up(svc: Service) -> None:
    jobs, t, url = _race_setup(svc)
    v = "gfsam-p1-v1"
    pending = inline.start(jobs.store, jobs, 1, v, [t])
    svc.run_worker()  # stored while the waiter was still registered
    inline.give_up(jobs.store, jobs, 1, v, pending)  # claims "api" and queues a deliver job
    assert svc.ls.posts == []
    svc.run_worker()
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [t]


def test_predict_after_api_delivery_and_redelivery_are_idempotent(svc: Service) -> None:
    tasks = seeded(svc, 2)
    before = len(svc.ls.posts)
    single = fixture("predict_single.json")
    single["tasks"][0].update(id=tasks[1], data=svc.ls.tasks[tasks[1]]["data"])
    reply = svc.client.post("/predict", json=single).json()
    assert reply == {"results": [{"model_version": "gfsam-p1-v1"}]}  # delivered via API already
    svc.run_worker()  # the queued re-check finds it in LS
    assert len(svc.ls.posts) == before
    svc.ls.predictions.clear()  # the user deleted it in LS: a re-check posts it again
    svc.client.post("/predict", json=single)
    svc.run_worker()
    assert len(svc.ls.posts) == before + 1


def test_inline_reply_is_verified_later(svc: Service) -> None:
    jobs, t, url = _race_setup(svc)
    from backend.state.schemas import DeliverJob

    v = "gfsam-p1-v1"
    pending = inline.start(jobs.store, jobs, 1, v, [t])
    svc.run_worker()
    out: list[Any] = [None]
    inline.wait(jobs.store, jobs, 1, v, pending, out, time.monotonic() + 5)
    assert out[0] is not None
    svc.ls.predictions[999] = {"id": 999, "task": t, "model_version": v, "result": []}
    jobs.enqueue_deliver(DeliverJob(project=1, task=t, version=v))  # LS stored the reply
    svc.run_worker()
    assert svc.ls.posts == []
    del svc.ls.predictions[999]  # LS never stored it (timeout, test request, failed batch)
    jobs.enqueue_deliver(DeliverJob(project=1, task=t, version=v))
    svc.run_worker()
    assert [p["task"] for p in svc.ls.posts] == [t]


def test_predict_http_inline_with_a_running_worker(svc: Service) -> None:
    seeded(svc, 2)
    new = [svc.ls.add_task(1, png_bytes(W, H, seed=20 + i)) for i in range(3)]
    svc.ls.posts.clear()
    batch = fixture("predict_batch.json")
    for item, task in zip(batch["tasks"], new, strict=True):
        item.update(id=task["id"], data=task["data"])
    replies: list[Any] = []
    thread = threading.Thread(
        target=lambda: replies.append(svc.client.post("/predict", json=batch))
    )
    thread.start()
    while thread.is_alive():
        svc.run_worker()
        time.sleep(0.02)
    results = replies[0].json()["results"]
    assert [r["model_version"] for r in results] == ["gfsam-p1-v1"] * 3
    assert all(r["result"] and r["score"] > 0 for r in results)
    assert results[0]["result"][0]["original_width"] == W
    assert svc.ls.posts == []  # inline only


def test_predict_promotes_a_queued_batch_job(svc: Service) -> None:
    jobs = make_jobs(svc.conn, svc.settings)
    payload = PredictJob(project=1, task=7, version="gfsam-p1-v1", image_url="/x.png")
    assert jobs.enqueue_predict(payload, high=False) == "queued"
    assert jobs.enqueue_predict(payload, high=False) == "exists"
    assert jobs.enqueue_predict(payload, high=True) == "promoted"
    job_id = predict_job_id(1, 7, "gfsam-p1-v1")
    assert jobs.high.job_ids == [job_id] and jobs.batch.job_ids == []


def test_inline_reply_schedules_a_later_check(make_service: Callable[..., Service]) -> None:
    from rq.registry import ScheduledJobRegistry

    svc = make_service(inline_verify_delay_s=150)
    jobs, t, url = _race_setup(svc)
    pending = inline.start(jobs.store, jobs, 1, "gfsam-p1-v1", [t])
    svc.run_worker()
    out: list[Any] = [None]
    inline.wait(jobs.store, jobs, 1, "gfsam-p1-v1", pending, out, time.monotonic() + 5)
    assert out[0] is not None
    registry = ScheduledJobRegistry(svc.settings.queue_batch, connection=svc.conn)
    assert registry.get_job_ids() == [f"verify-1-{t}-1"]
    # One check (ids collapse): the worker that left delivery to the waiter scheduled it first,
    # at the waiter's deadline plus max(inline_verify_delay_s, 60) of its own settings.
    when = registry.get_scheduled_time(f"verify-1-{t}-1").timestamp()
    worker_delay = svc.settings.predict_deadline_s + max(svc.settings.inline_verify_delay_s, 60)
    assert worker_delay - 10 < when - time.time() <= worker_delay


def test_task_whose_annotation_is_deleted_is_preannotated_again(svc: Service) -> None:
    tasks = seeded(svc, 3)
    fix = annotate(svc, tasks[1], box_mask(H, W, 0, 40, 0, 60))
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v2"
    assert {p["task"] for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v2"} == {tasks[2]}
    svc.ls.delete_annotation(fix["id"])
    deleted = fixture("webhook_annotations_deleted.json")
    deleted["annotations"] = [{"id": fix["id"]}]
    svc.client.post("/webhook", json=deleted)
    svc.run_worker()
    assert version(svc) == "gfsam-p1-v3"
    v3 = sorted(p["task"] for p in svc.ls.posts if p["model_version"] == "gfsam-p1-v3")
    assert v3 == [tasks[1], tasks[2]]


def test_label_config_change_bumps_version_and_repredicts(svc: Service) -> None:
    tasks = seeded(svc)
    shots = status(svc)["shots"]
    body = fixture("setup.json")
    assert version(svc) == "gfsam-p1-v1"
    # A cosmetic change (same control, image key and labels) keeps the version, queues nothing.
    body["schema"] = body["schema"].replace('zoom="true"', 'zoom="false"')
    svc.ls.configs[1] = body["schema"]  # changed in LS; /setup only hints at it
    assert svc.client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    svc.run_worker()
    assert svc.client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    # Renaming the brush control: the delivered predictions no longer fit the config.
    body["schema"] = body["schema"].replace('name="tag"', 'name="mask"')
    svc.ls.configs[1] = body["schema"]
    posts_before = len(svc.ls.posts)
    assert svc.client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v1"
    svc.run_worker()
    assert svc.client.post("/setup", json=body).json()["model_version"] == "gfsam-p1-v2"
    assert status(svc)["shots"] == shots  # same references
    new = svc.ls.posts[posts_before:]
    assert sorted(p["task"] for p in new) == tasks[1:]
    assert all(p["model_version"] == "gfsam-p1-v2" for p in new)
    assert all(p["result"][0]["from_name"] == "mask" for p in new)
    # Back to the first config, then to the second again: each change is a new version.
    for schema, expected in ((fixture("setup.json")["schema"], 3), (body["schema"], 4)):
        svc.ls.configs[1] = schema
        assert svc.client.post("/setup", json={**body, "schema": schema}).is_success
        svc.run_worker()
        assert version(svc) == f"gfsam-p1-v{expected}"


def test_sync_of_an_annotated_project_encodes_only_the_shots_it_keeps(svc: Service) -> None:
    """Connecting to a project with 10 annotations encodes MAX_SHOTS (5) references, not 10, and
    the blob of a shot dropped later expires while the current ones stay."""
    tasks = [svc.ls.add_task(1, png_bytes(W, H, seed=i))["id"] for i in range(12)]
    anns = [
        svc.ls.annotate(t, [brush_region(box_mask(H, W, 2 + i, 30, 5, 40 + i), "Object")])
        for i, t in enumerate(tasks[:10])
    ]
    assert svc.client.post("/setup", json=fixture("setup.json")).status_code == 200
    svc.run_worker()
    kept = [anns[0]["id"], *[a["id"] for a in anns[-4:]]]  # the seed and the 4 newest
    assert status(svc)["shots"] == {"Object": kept}
    assert svc.pipeline.calls["reference"] == 5
    assert len(svc.conn.keys("gfsam:ref:*")) == 5
    # One more correction drops the oldest kept correction: its blob expires, the rest persist.
    store = Store(svc.conn, svc.settings)
    before = {
        s["annotation"]: s["ref"]
        for s in store.data.reference_set(1).model_dump()["shots"]["Object"]
    }
    annotate(svc, tasks[10], box_mask(H, W, 1, 20, 1, 20))
    svc.run_worker()
    dropped = before[kept[1]]
    assert svc.conn.ttl(f"gfsam:ref:{dropped}") > 0
    current = store.data.reference_set(1).shots["Object"]
    assert kept[1] not in [s.annotation for s in current]
    assert all(svc.conn.ttl(f"gfsam:ref:{s.ref}") == -1 for s in current)


def test_an_older_snapshot_never_undoes_a_later_change(svc: Service) -> None:
    """A sync on one worker read annotation 2 before another worker applied its deletion: the
    stale snapshot must not bring the shot back (nor bump the version)."""
    from worker import runtime
    from worker.correction.refit import apply_changes
    from worker.correction.shots import AnnotationState
    from worker.labelstudio.replies import LSAnnotation

    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    ann2 = annotate(svc, tasks[1], box_mask(H, W, 0, 40, 0, 60))
    svc.run_worker()
    store, jobs = svc.store, svc.jobs
    url = svc.ls.tasks[tasks[1]]["data"]["image"]
    raw = LSAnnotation.model_validate(svc.ls.annotations[ann2["id"]])
    snapshot = AnnotationState.from_ls(raw, url, tasks[1])
    svc.ls.delete_annotation(ann2["id"])
    rt = runtime.get()
    assert apply_changes(rt, store, jobs, 1, [AnnotationState.deleted(ann2["id"])])
    after_delete = store.data.current_version(1)
    assert ann2["id"] not in status(svc)["shots"]["Object"]
    assert apply_changes(rt, store, jobs, 1, [snapshot]) is None
    assert store.data.current_version(1) == after_delete
    assert ann2["id"] not in status(svc)["shots"]["Object"]
