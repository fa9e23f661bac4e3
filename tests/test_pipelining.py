"""The pipelined worker (issue 12): prefetched images, batched target encoding, POSTs on a
background executor; exactly-once delivery kept (fake pipeline, fake LS, real Redis; one test
on the tiny RANDOM-weight pipeline)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import wait
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from backend.state.keys import key
from backend.state.settings import Settings
from gfsam.encodings import TargetEncoding
from tests.fakes import FakePipeline, fake_model, png_bytes
from tests.project_helpers import SEED, annotate, setup_project
from tests.service_fixtures import Service
from worker import runtime
from worker.labelstudio.errors import LabelStudioUnavailable
from worker.prediction import delivery, prefetch

V1 = "gfsam-p1-v1"


@pytest.fixture(autouse=True)
def _stop_threads() -> Iterator[None]:
    yield
    delivery.reset()
    prefetch.reset()


@dataclass
class BatchPipeline(FakePipeline):
    """FakePipeline with `encode_targets`, recording the size of every batch."""

    batches: list[int] = field(default_factory=list)

    def encode_targets(
        self, images: Sequence[np.ndarray], *, batch_size: int = 8
    ) -> list[TargetEncoding]:
        self.batches.append(len(images))
        calls = self.calls["target"]
        encoded = [self.encode_target(image) for image in images]
        self.calls["target"] = calls  # counted as one batch, not as single encodes
        return encoded


def settled_ready(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make `Pipeline.ready` wait for the running prefetches (the fake model is instant)."""
    ready = prefetch.Prefetcher.ready

    def settled(self: prefetch.Prefetcher, exclude: str, limit: int) -> list[Any]:
        with self.lock:
            futures = list(self.entries.values())
        wait(futures, timeout=10)
        return ready(self, exclude, limit)

    monkeypatch.setattr(prefetch.Prefetcher, "ready", settled)


def stats(svc: Service) -> dict[str, int]:
    return svc.store.progress.stats()


def posted_tasks(svc: Service) -> list[int]:
    return sorted(p["task"] for p in svc.ls.posts)


def test_defaults_keep_the_serial_worker() -> None:
    s = Settings(_env_file=None)  # type: ignore[call-arg]
    assert (s.encode_batch, s.deliver_threads) == (1, 0)  # no batching, POSTs by the job
    assert s.prefetch_jobs == 4 and s.prefetch_bytes == 256 * 1024**2


def test_prefetched_images_are_used(make_service: Callable[..., Service]) -> None:
    svc = make_service(prefetch_jobs=4)
    tasks = setup_project(svc, 5)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert posted_tasks(svc) == tasks[1:]  # each once
    st = stats(svc)
    assert st.get("prefetch_miss") == 1  # the first job: nothing was ahead of it
    assert st.get("prefetch_hit") == 3


def test_prefetch_off_and_over_budget_fall_back(make_service: Callable[..., Service]) -> None:
    svc = make_service(prefetch_bytes=1)  # every prefetched image is over the budget
    tasks = setup_project(svc, 4)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert posted_tasks(svc) == tasks[1:]
    assert stats(svc).get("prefetch_hit", 0) == 0 and stats(svc)["prefetch_miss"] == 3


def test_prefetch_is_used_only_for_the_url_the_job_chose(
    make_service: Callable[..., Service],
) -> None:
    make_service()
    rt = runtime.get()
    pipe = prefetch.get(rt)
    assert pipe is not None
    image = png_bytes(8, 8)
    item = prefetch.Prefetched("/data/upload/1/a.png", image, "sha", None)
    pipe.entries[7] = pipe.pool.submit(lambda: item)
    assert pipe.take(7, "/data/upload/1/other.png", 5.0) is None  # another URL: not used
    assert 7 not in pipe.entries


def test_prefetch_count_is_bounded(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(prefetch_jobs=2)
    seen: list[int] = []
    look_ahead = prefetch.Prefetcher.look_ahead

    def recording(self: prefetch.Prefetcher, *args: Any) -> None:
        look_ahead(self, *args)
        seen.append(len(self.entries))

    monkeypatch.setattr(prefetch.Prefetcher, "look_ahead", recording)
    tasks = setup_project(svc, 7)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert posted_tasks(svc) == tasks[1:]
    assert seen and max(seen) <= 2


def test_batched_encoding_fills_the_target_cache(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(encode_batch=4, prefetch_jobs=4)
    pipeline = BatchPipeline()
    runtime.install(svc.settings, fake_model(pipeline), runtime.get().ls)
    settled_ready(monkeypatch)
    tasks = setup_project(svc, 5)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert posted_tasks(svc) == tasks[1:]
    assert pipeline.batches == [4]  # the first job's target and the 3 prefetched ones, one call
    assert pipeline.calls["target"] == 0  # no single encode
    st = stats(svc)
    assert st["target_encode"] == 4 and st["target_batch"] == 1
    assert st["target_cache_hit"] == 3  # the 3 later jobs found their encoding


def test_batched_encoding_on_the_tiny_pipeline(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(model="tiny", gfsam_max_points=8, encode_batch=3)
    settled_ready(monkeypatch)
    tasks = setup_project(svc, 4)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert posted_tasks(svc) == tasks[1:]
    st = stats(svc)
    assert st["target_batch"] == 1 and st["target_encode"] == 3 and st["target_cache_hit"] == 2


def test_background_post_failure_is_redelivered(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(deliver_threads=2, deliver_queue=1)
    failed: list[int] = []
    pending: list[int] = []
    post = delivery.background_post

    def flaky(rt: runtime.Runtime, store: Any, p: int, pred: Any) -> str:
        executor = delivery._poster  # not get(rt): rt is the thread's copy (own LS client)
        pending.append(executor.pending if executor is not None else -1)
        if pred.task not in failed:  # each task's first POST fails (LS down)
            failed.append(pred.task)
            raise LabelStudioUnavailable("LS down")
        return post(rt, store, p, pred)

    monkeypatch.setattr(delivery, "background_post", flaky)
    tasks = setup_project(svc, 4)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()  # predictions stored and claimed; every first POST fails in the background
    assert delivery.drain(10)
    assert sorted(failed) == tasks[1:]
    assert max(pending) <= 1  # deliver_queue bounds the POSTs waiting
    for t in tasks[1:]:
        assert svc.store.coord.delivery_claim(1, t, V1) == "api"
    # the deliver jobs queued by the failures (some may already have run in the same burst)
    svc.run_worker()
    assert delivery.drain(10)
    assert posted_tasks(svc) == tasks[1:]  # once each
    assert svc.pipeline.calls["predict"] == 3  # delivered from the stored results


def test_process_dying_before_the_post_is_redelivered_by_a_sync(
    make_service: Callable[..., Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    svc = make_service(deliver_threads=1)
    # The process dies with the hand-offs still queued: nothing posts, nothing is re-queued.
    monkeypatch.setattr(delivery.BackgroundPoster, "submit", lambda self, *args: None)
    tasks = setup_project(svc, 3)
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert svc.ls.posts == []
    for t in tasks[1:]:
        assert svc.store.coord.delivery_claim(1, t, V1) == "api"
        assert not svc.conn.exists(key("posted:{p}:{t}:{v}", p=1, t=t, v=V1))
    monkeypatch.undo()
    body = {"action": "START_TRAINING", "project": {"id": 1}}
    assert svc.client.post("/webhook", json=body).is_success  # a sync: claim "api", not posted
    svc.run_worker()
    assert delivery.drain(10)
    assert posted_tasks(svc) == tasks[1:]
    assert svc.pipeline.calls["predict"] == 2  # not recomputed


@pytest.mark.parametrize("fault", ["missing", "slow"])
def test_a_failing_or_slow_prefetched_image_is_not_fetched_again(
    make_service: Callable[..., Service], fault: str
) -> None:
    """Issue 22, item 8: the prefetch's failure (404, deadline) is the job's; the job does not
    download the same URL a second time."""
    svc = make_service(prefetch_jobs=4, media_deadline_s=1.0)
    tasks = setup_project(svc, 4)
    path = svc.ls.tasks[tasks[2]]["data"]["image"]
    if fault == "missing":
        del svc.ls.media[path]
    else:
        original = svc.ls.handle

        def slow_media(method: str, p: str, query: Any, body: Any) -> Any:
            if p == path:
                svc.ls.media_hits[p] = svc.ls.media_hits.get(p, 0) + 1
                time.sleep(2.0)  # past MEDIA_DEADLINE_S
                return 200, svc.ls.media[p]  # counted here only
            return original(method, p, query, body)

        svc.ls.handle = slow_media  # type: ignore[method-assign]
    annotate(svc, tasks[0], SEED)
    svc.run_worker()
    assert svc.ls.media_hits[path] == 1
    assert f"task:{tasks[2]}" in svc.client.get("/projects/1").json()["failures"]
    assert posted_tasks(svc) == [tasks[1], tasks[3]]


def test_a_jobs_image_is_decoded_once_and_forgotten_when_it_ends() -> None:
    """The target encoder's decode is kept for the job's thread (discovery's crops reuse it):
    the same image is not decoded twice, another image or another thread decodes its own, and
    nothing is kept once the job forgets it."""
    import threading
    from types import SimpleNamespace

    decodes: list[bytes] = []

    def load_image(data: bytes) -> np.ndarray:
        decodes.append(data)
        return np.full((2, 3, 3), len(decodes), dtype=np.uint8)

    rt: Any = SimpleNamespace(model=SimpleNamespace(load_image=load_image))
    first = prefetch.decoded_image(rt, b"a", "sha-a")
    assert prefetch.decoded_image(rt, b"a", "sha-a") is first and decodes == [b"a"]
    elsewhere: list[np.ndarray] = []
    thread = threading.Thread(
        target=lambda: elsewhere.append(prefetch.decoded_image(rt, b"a", "sha-a"))
    )
    thread.start()
    thread.join()
    assert elsewhere[0] is not first and decodes == [b"a", b"a"]  # its own thread, its own
    assert prefetch.decoded_image(rt, b"b", "sha-b")[0, 0, 0] == 3  # another image
    prefetch.forget_decoded()
    prefetch.decoded_image(rt, b"b", "sha-b")
    assert decodes == [b"a", b"a", b"b", b"b"]
    prefetch.forget_decoded()
