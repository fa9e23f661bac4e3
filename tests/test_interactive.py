"""The interactive lane end to end in one process: /predict with params.context -> click job on
the interactive queue -> `worker.clicks.click` (FakePipeline + FakeSam) -> one brushlabels region.
Also: bad input never reaches a worker, nothing is stored, warm-ups, cache counters, and a click
answered while a batch job is held."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from backend.state.labelconfig import config_digest, parse_label_config
from backend.state.schemas import StoredPrediction
from gfsam.encodings import TargetEncoding
from gfsam.types import GRID
from tests.fakes import png_bytes
from tests.service_fixtures import Service, wait_until
from worker.clicks import click as click_lane
from worker.labelstudio.brush_rle import masks_to_result, rle_to_mask

P = 1
W, H = 64, 48
CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Cat"/><Label value="Dog"/></BrushLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Cat"/>'
    '<Label value="Bird"/><Label value="Cat (all)"/></KeyPointLabels>'
    '<RectangleLabels name="rect" toName="image" smart="true"><Label value="Cat"/>'
    "</RectangleLabels></View>"
)


@pytest.fixture(autouse=True)
def _fresh_memory() -> None:
    """Each test is a fresh interactive worker (its in-process target memory is empty)."""
    click_lane._memory.clear()


def setup_project(svc: Service) -> int:
    svc.store.data.put_config(P, parse_label_config(CONFIG), config_digest(CONFIG))
    return int(svc.ls.add_task(P, png_bytes(W, H))["id"])


def kp(x: float, y: float, positive: bool = True, label: str = "Cat") -> dict[str, Any]:
    return {
        "from_name": "kp",
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": W,
        "original_height": H,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }


def body(task: int, regions: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "tasks": [{"id": task, "data": {"image": "ignored"}, "project": P}],
        "project": f"{P}.1700000000",
        "label_config": CONFIG,
        "params": {"login": None, "password": None, "context": {"result": regions}},
    }


def interactive_worker(svc: Service) -> SimpleWorker:
    return SimpleWorker([svc.jobs.interactive], connection=svc.conn, serializer=JSONSerializer)


def click(svc: Service, task: int, regions: list[dict[str, Any]]) -> httpx.Response:
    """POST the click, run the interactive lane until it is answered."""
    with ThreadPoolExecutor(1) as pool:
        reply = pool.submit(svc.client.post, "/predict", json=body(task, regions))
        wait_until(lambda: svc.jobs.interactive.count or reply.done(), 10, "click queued")
        interactive_worker(svc).work(burst=True, logging_level="WARNING")
        return reply.result(timeout=30)


def region_mask(reply: httpx.Response, label: str = "Cat") -> np.ndarray:
    assert reply.status_code == 200, reply.text
    (item,) = reply.json()["results"]
    (region,) = item["result"]
    assert region["type"] == "brushlabels" and region["value"]["brushlabels"] == [label]
    assert region["from_name"] == "tag" and region["to_name"] == "image"
    assert (region["original_width"], region["original_height"]) == (W, H)
    assert item["model_version"] == f"gfsam-p{P}-v0" and 0 <= item["score"] <= 1
    return rle_to_mask(region["value"]["rle"], W, H)


def test_click_before_any_reference_answers_one_region(svc: Service) -> None:
    task = setup_project(svc)
    mask = region_mask(click(svc, task, [kp(50, 50)]))
    assert mask[24, 32] and not mask.all()
    assert svc.pipeline.sam.calls[-1]["multimask"]
    assert not svc.ls.posts and svc.store.data.get_prediction(P, task, f"gfsam-p{P}-v0") is None


def test_second_click_uses_memory_then_counters_show_no_encoder(svc: Service) -> None:
    task = setup_project(svc)
    region_mask(click(svc, task, [kp(50, 50)]))
    region_mask(click(svc, task, [kp(20, 20), kp(80, 80, positive=False)]))
    stats = svc.store.progress.stats()
    assert stats["click"] == 2 and stats["click_encoded"] == 1 and stats["target_encode"] == 1
    # a cold click runs the mask engine alone (issue 21): no feature engine, nothing cached
    assert svc.pipeline.calls["mask_engine"] == 1 and svc.pipeline.calls["target"] == 0
    assert svc.pipeline.mask_precisions == ["auto"]  # INTERACTIVE_PRECISION's default
    cache = svc.settings.target_cache_dir
    assert not cache.exists() or not [f for f in cache.rglob("*") if f.is_file()]


def test_find_all_after_a_cold_click_encodes_the_features_once(
    svc: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode = svc.pipeline.encode_target

    def with_tokens(image: np.ndarray) -> TargetEncoding:  # FakePipeline's carry no features
        tokens = np.random.default_rng(0).standard_normal((GRID * GRID, 8)).astype(np.float32)
        return dataclasses.replace(encode(image), tokens=tokens)

    monkeypatch.setattr(svc.pipeline, "encode_target", with_tokens)
    task = setup_project(svc)
    region_mask(click(svc, task, [kp(50, 50)]))  # mask engine only
    found = click(svc, task, [kp(50, 50, label="Cat (all)")])
    assert found.status_code == 200, found.text
    assert svc.pipeline.calls["target"] == 1  # find all needs the feature tokens
    region_mask(click(svc, task, [kp(30, 30)]))  # the whole encoding serves plain clicks too
    assert svc.pipeline.calls == {**svc.pipeline.calls, "mask_engine": 1, "target": 1}


def test_pre_annotated_embedding_is_a_cache_hit(svc: Service) -> None:
    task = setup_project(svc)
    svc.client.post("/predict", json=body(task, []) | {"params": None})  # editor open: warm-up
    assert svc.jobs.interactive.count == 1
    interactive_worker(svc).work(burst=True, logging_level="WARNING")
    click_lane._memory.clear()  # a restarted interactive worker: the disk cache serves it
    region_mask(click(svc, task, [kp(50, 50)]))
    stats = svc.store.progress.stats()
    assert stats["target_encode"] == 1 and stats["target_cache_hit"] == 1
    assert "click_encoded" not in stats


def test_refines_our_prediction(svc: Service) -> None:
    task = setup_project(svc)
    prior = np.zeros((H, W), dtype=bool)
    prior[5:15, 5:20] = True  # instance A (top left)
    prior[30:45, 40:60] = True  # instance B (bottom right)
    result = masks_to_result({"Cat": prior}, from_name="tag", to_name="image", scores={"Cat": 0.6})
    svc.store.data.put_prediction(
        P, StoredPrediction(task=task, result=result, score=0.6, model_version=f"gfsam-p{P}-v0")
    )
    removed = region_mask(click(svc, task, [kp(75, 80, positive=False)]))  # on B
    assert removed[10, 10] and not removed[35, 50]
    svc.pipeline.sam.radius = 4
    added = region_mask(click(svc, task, [kp(50, 50)]))  # outside: adds, keeps A and B
    assert added[24, 32] and added[10, 10] and added[35, 50]
    reshaped = region_mask(click(svc, task, [kp(15, 20)]))  # inside A: A as mask prompt
    assert svc.pipeline.sam.calls[-1]["mask"] is not None
    assert reshaped[10, 10] and reshaped[35, 50]


@pytest.mark.parametrize(
    ("regions", "reason"),
    [
        ([kp(50, 50, label="Bird")], "not an output label"),
        ([kp(150, 50)], "percentage"),
        ([kp(50, 50, positive=False)], "only negative"),
        ([kp(50, 50) | {"original_height": None}], "original_height"),
    ],
)
def test_bad_input_is_a_422_and_never_queued(
    svc: Service, regions: list[dict[str, Any]], reason: str
) -> None:
    task = setup_project(svc)
    reply = svc.client.post("/predict", json=body(task, regions))
    assert reply.status_code == 422 and reason in reply.text
    assert svc.jobs.interactive.count == 0


def test_unknown_task_image_is_a_422(svc: Service) -> None:
    setup_project(svc)
    task = int(svc.ls.add_task(P, None, name="missing.png")["id"])
    reply = click(svc, task, [kp(50, 50)])
    assert reply.status_code == 422 and "cannot use its image" in reply.text


def test_click_is_answered_while_a_batch_job_is_held(svc: Service) -> None:
    """A batch worker (another process) stuck in a slow job does not delay the lane."""
    task = setup_project(svc)
    svc.conn.delete("test:held")
    svc.jobs.batch.enqueue("tests.test_interactive.held_job", svc.settings.redis_url, job_id="slow")
    code = (
        "import sys; from redis import Redis; from rq import SimpleWorker, Queue;"
        "from rq.serializers import JSONSerializer as J; c = Redis.from_url(sys.argv[1]);"
        "SimpleWorker([Queue(sys.argv[2], connection=c, serializer=J)], connection=c,"
        " serializer=J).work(burst=True)"
    )
    args = [sys.executable, "-c", code, svc.settings.redis_url or "", svc.settings.queue_batch]
    batch = subprocess.Popen(args, cwd=Path(__file__).resolve().parents[1])
    try:
        wait_until(lambda: svc.conn.get("test:held") == b"running", 30, "batch job running")
        region_mask(click(svc, task, [kp(50, 50)]))
        assert svc.conn.get("test:held") == b"running"  # answered while the batch job is held
    finally:
        svc.conn.set("test:held", "release")
        batch.wait(timeout=30)


def held_job(redis_url: str) -> str:
    """A batch job that runs until the test releases it (through Redis, no fixed sleep)."""
    from redis import Redis

    from tests.service_fixtures import wait_until as until

    conn = Redis.from_url(redis_url)
    conn.set("test:held", "running")
    until(lambda: conn.get("test:held") == b"release", 60, "release", poll_s=0.02)
    return "released"


def rect(x: float, y: float, w: float, h: float, **value: Any) -> dict[str, Any]:
    return {
        "from_name": "rect",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": W,
        "original_height": H,
        "value": {"x": x, "y": y, "width": w, "height": h, "rectanglelabels": ["Cat"], **value},
    }


@pytest.mark.parametrize(
    ("regions", "reason"),
    [  # issue 22, item 7: these gave a 500 (or crashed the worker: original_width 0.5)
        ([rect(10, 10, 20, 20, rotation="abc")], "rotation"),
        ([kp(50, 50) | {"value": ["x", 50]}], "value is not an object"),
        ([kp(50, 50) | {"original_width": 0.5}], "original_width=0.5"),
        ([kp(50, 50) | {"is_positive": "false"}], "is_positive"),
        ([kp(50, 50), 7], "is not an object"),
    ],
)
def test_malformed_click_contexts_are_a_422_never_queued(
    svc: Service, regions: list[Any], reason: str
) -> None:
    task = setup_project(svc)
    reply = svc.client.post("/predict", json=body(task, regions))
    assert reply.status_code == 422, reply.text
    assert reason in reply.json()["detail"]
    assert svc.jobs.interactive.count == 0


def test_points_and_boxes_beyond_the_caps_are_a_422(make_service: Any) -> None:
    """Issue 22, item 5: 30,000 points blocked the lane for a minute; now refused at once."""
    svc = make_service(click_max_points=10, click_max_boxes=2)
    task = setup_project(svc)
    reply = svc.client.post("/predict", json=body(task, [kp(50, 50)] * 11))
    assert reply.status_code == 422 and "11 points in one click: at most 10" in reply.text
    reply = svc.client.post("/predict", json=body(task, [rect(10, 10, 20, 20)] * 3))
    assert reply.status_code == 422 and "3 rectangles in one click: at most 2" in reply.text
    assert svc.jobs.interactive.count == 0
    region_mask(click(svc, task, [kp(50, 50)] * 10))  # at the cap: answered


def test_clicks_beyond_their_waiter_cap_are_a_503_at_once(make_service: Any) -> None:
    """Issue 22, item 4: clicks count against their own cap; beyond it a clear 503 at once,
    nothing queued, and the waiting ones are answered as before."""
    svc = make_service(interactive_max_waiters=2, interactive_deadline_s=20)
    task = setup_project(svc)
    with ThreadPoolExecutor(2) as pool:
        waiting = [pool.submit(svc.client.post, "/predict", json=body(task, [kp(50, 50)]))]
        waiting.append(pool.submit(svc.client.post, "/predict", json=body(task, [kp(40, 40)])))
        wait_until(lambda: svc.jobs.interactive.count == 2, 10, "two clicks waiting")
        started = time.monotonic()
        third = svc.client.post("/predict", json=body(task, [kp(30, 30)]))
        assert time.monotonic() - started < 2
        assert third.status_code == 503 and "INTERACTIVE_MAX_WAITERS" in third.text
        assert svc.jobs.interactive.count == 2  # nothing queued for it
        interactive_worker(svc).work(burst=True, logging_level="WARNING")
        for reply in waiting:
            region_mask(reply.result(timeout=30))
    region_mask(click(svc, task, [kp(30, 30)]))  # the slots are free again


def test_a_waiting_click_waits_on_a_notification_not_by_polling(make_service: Any) -> None:
    """Issue 22, item 8: a click waiting 3 s for a worker sent ~150 Redis commands (a poll
    every 20 ms); it now blocks on its result and checks the job every couple of seconds."""
    svc = make_service(interactive_deadline_s=3)
    task = setup_project(svc)
    before = int(svc.conn.info("stats")["total_commands_processed"])
    reply = svc.client.post("/predict", json=body(task, [kp(50, 50)]))  # no worker: deadline
    used = int(svc.conn.info("stats")["total_commands_processed"]) - before
    assert reply.status_code == 503 and "no interactive worker answered" in reply.text
    assert used < 40, f"{used} Redis commands for one waiting click"


def test_a_click_past_its_deadline_is_never_run(svc: Service) -> None:
    """Issue 22, item 6: a click whose caller has given up (503) is skipped by the worker."""
    from backend.state.prompts import ClickJob, Prompts

    task = setup_project(svc)
    prompts = Prompts(label="Cat", points=[(32.0, 24.0)], positive=[True], width=W, height=H)
    job = ClickJob(
        project=P,
        task=task,
        version=f"gfsam-p{P}-v0",
        from_name="tag",
        to_name="image",
        data_key="image",
        prompts=prompts,
        deadline=time.time() - 1,
    )
    job_id = svc.jobs.enqueue_click(job)
    interactive_worker(svc).work(burst=True, logging_level="WARNING")
    _, value = svc.jobs.await_click(job_id, time.monotonic() + 5)
    assert value == {"error": "the click expired before it could run"}
    assert svc.pipeline.sam.calls == [] and "click" not in svc.store.progress.stats()
