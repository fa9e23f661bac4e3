"""Store semantics on a real Redis, plus the pure helpers: caches, label configs, overlaps."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from redis import Redis

from backend.labelconfig import LabelConfigError, parse_label_config
from backend.schemas import (
    AcceptanceSample,
    LabelConfigSummary,
    ReferenceSet,
    Shot,
    StoredPrediction,
    project_id_of,
)
from backend.settings import Settings
from backend.store import LockTimeout, Store, VersionConflict
from worker.cache import ReferenceCache, TargetCache
from worker.inference import resolve_overlaps


@pytest.fixture
def store(redis_conn: Redis, tmp_path: Path) -> Store:
    settings = Settings(
        redis_url="redis://unused", data_dir=tmp_path, refit_lock_wait_s=0.3, _env_file=None
    )  # type: ignore[call-arg]
    return Store(redis_conn, settings, owner="test")


def shot(annotation: int, ref: str, seq: int) -> Shot:
    return Shot(
        annotation=annotation,
        task=annotation,
        label="A",
        ref=ref,
        fingerprint="f",
        seq=seq,
        mask="m",
    )


def test_project_ids_and_versions() -> None:
    assert project_id_of("12.1795248910") == 12 and project_id_of(7) == 7
    with pytest.raises(ValueError):
        project_id_of("abc.1")
    assert ReferenceSet(project=3).version == "gfsam-p3-v0"
    assert ReferenceSet(project=3, n=4).version == "gfsam-p3-v4"


def test_config_registration(store: Store) -> None:
    summary = LabelConfigSummary(from_name="tag", to_name="image", data_key="image", labels=["A"])
    assert store.put_config(1, summary, "d1") is True
    assert store.put_config(1, summary, "d2") is False
    assert store.config(1) == summary and store.config_digest(1) == "d2"
    assert store.projects() == [1] and store.config(2) is None


def test_swap_is_compare_and_set_and_needs_blobs(store: Store) -> None:
    assert store.current_version(5) == "gfsam-p5-v0"
    store.put_blob("aa", b"blob")
    one = ReferenceSet(project=5, n=1, shots={"A": [shot(1, "aa", 1)]})
    store.swap_reference_set(one, expected_n=0)
    assert store.current_version(5) == "gfsam-p5-v1" and store.reference_set(5) == one
    with pytest.raises(VersionConflict):
        store.swap_reference_set(one.model_copy(update={"n": 2}), expected_n=0)
    with pytest.raises(RuntimeError, match="missing"):
        missing = ReferenceSet(project=5, n=2, shots={"A": [shot(2, "bb", 2)]})
        store.swap_reference_set(missing, expected_n=1)
    assert store.current_version(5) == "gfsam-p5-v1"


def test_delivery_claim_is_exclusive(store: Store) -> None:
    pred = StoredPrediction(task=3, result=[], score=0.5, model_version="gfsam-p1-v1")
    store.put_prediction(1, pred)
    assert store.get_predictions(1, [3, 4], "gfsam-p1-v1") == [pred, None]
    assert store.claim_delivery(1, 3, "gfsam-p1-v1", "inline") is True
    assert store.claim_delivery(1, 3, "gfsam-p1-v1", "api") is False
    assert store.delivery_claim(1, 3, "gfsam-p1-v1") == "inline"
    assert store.last_delivered_version(1, 3) == "gfsam-p1-v1"


def test_waiters_count(store: Store) -> None:
    store.waiter_enter(1, 2, "v", 60)
    store.waiter_enter(1, 2, "v", 60)
    store.waiter_leave(1, 2, "v")
    assert store.has_waiter(1, 2, "v")
    store.waiter_leave(1, 2, "v")
    assert not store.has_waiter(1, 2, "v")


def test_counts(store: Store) -> None:
    for job in ("a", "b", "c"):
        store.job_queued(1, job)
    store.job_started(1, "a")
    store.job_started(1, "b")
    store.job_ended(1, "a", "done")
    store.job_ended(1, "b", "failed", requeued=True)  # will be retried
    c = store.counts(1)
    assert (c.queued, c.running, c.done, c.failed) == (2, 0, 1, 0)


def test_acceptance_recorded_once_with_cumulative_buckets(store: Store) -> None:
    sample = AcceptanceSample(annotation=9, task=2, model_version="v1", iou={"A": 0.6, "B": 1.0})
    assert store.record_acceptance(1, sample) is True
    assert store.record_acceptance(1, sample) is False
    hist = store.acceptance_histogram(1)
    assert hist["count"] == 2 and hist["sum"] == pytest.approx(1.6)
    assert hist.get("0.5", 0) == 0 and hist["0.75"] == 1 and hist["1.0"] == 2
    assert store.acceptance_samples(1) == [sample]


def test_refit_lock_waits_for_live_owner_and_breaks_dead_one(store: Store) -> None:
    other = Store(store.r, store.settings, owner="gfsam-host-1-abc")
    store.renew_lease("gfsam-host-1-abc", 30)
    with other.project_lock(1):
        with pytest.raises(LockTimeout):
            with store.project_lock(1):
                pass
    with other.project_lock(1):
        store.drop_lease("gfsam-host-1-abc")  # the holder was SIGKILLed
        started = time.monotonic()
        with store.project_lock(1):
            assert time.monotonic() - started < 0.3


def test_delivery_lock_is_never_broken_early(store: Store) -> None:
    """A dead holder's POST may still be in flight: only the lock's expiry frees it."""
    dead = Store(store.r, store.settings, owner="gfsam-dead-1-abc")  # no lease at all
    with dead._locked("gfsam:lock:x", 0.8, 0.1, break_dead=False):
        with pytest.raises(LockTimeout):
            with store._locked("gfsam:lock:x", 0.8, 0.2, break_dead=False):
                pass
        started = time.monotonic()
        with store._locked("gfsam:lock:x", 0.8, 2.0, break_dead=False):
            assert time.monotonic() - started > 0.3  # acquired only once it expired


def test_target_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    cache = TargetCache(tmp_path / "t", max_bytes=250)
    for i, name in enumerate(("a", "b")):
        cache.put(name, bytes(100))
        os.utime(tmp_path / "t" / f"{name}.bin", (1000 + i, 1000 + i))
    assert cache.get("a") == bytes(100)  # a is now the most recently used
    cache.put("c", bytes(100))
    assert cache.get("b") is None and cache.get("a") is not None and cache.get("c") is not None
    assert cache.size_bytes() <= 250
    cache.put("huge", bytes(1000))  # larger than the whole cache: not stored
    assert cache.get("huge") is None


def test_reference_cache(tmp_path: Path) -> None:
    fetched: list[str] = []
    blobs = {"x": b"1", "y": b"2", "z": b"3"}

    def fetch(sha: str) -> bytes | None:
        fetched.append(sha)
        return blobs.get(sha)

    cache = ReferenceCache(max_items=2)
    assert cache.get("x", fetch, int) == 1 and cache.get("x", fetch, int) == 1
    cache.get("y", fetch, int)
    cache.get("z", fetch, int)  # evicts x
    cache.get("x", fetch, int)
    assert fetched == ["x", "y", "z", "x"]
    with pytest.raises(KeyError):
        cache.get("missing", fetch, int)


def test_label_config_parsing() -> None:
    cfg = parse_label_config(
        '<View><Image name="img" value="$photo"/><Text name="t" value="$text"/>'
        '<BrushLabels name="txt" toName="t"><Label value="X"/></BrushLabels>'
        '<KeyPointLabels name="kp" toName="img" smart="true"><Label value="A"/></KeyPointLabels>'
        '<BrushLabels name="mask" toName="img"><Label value="A"/><Label value="B"/>'
        '<Label value="A"/></BrushLabels></View>'
    )
    assert cfg == LabelConfigSummary(
        from_name="mask", to_name="img", data_key="photo", labels=["A", "B"]
    )
    for bad, reason in [
        ('<View><Image name="i" value="$i"/></View>', "BrushLabels"),
        ('<View><Image name="i" value="$i"/><BrushLabels name="b" toName="i"/></View>', "Label"),
        (
            '<View><Image name="i" value="http://x/y.png"/><BrushLabels name="b" toName="i">'
            '<Label value="A"/></BrushLabels></View>',
            "value",
        ),
        ("<View><Image", "parse"),
    ]:
        with pytest.raises(LabelConfigError, match=reason):
            parse_label_config(bad)


def test_overlaps_go_to_the_higher_score() -> None:
    a = np.zeros((4, 4), bool)
    a[:, :3] = True
    b = np.zeros((4, 4), bool)
    b[:, 1:] = True
    out = resolve_overlaps({"A": a, "B": b}, {"A": 0.4, "B": 0.9}, ["A", "B"])
    assert out["B"].sum() == 12 and out["A"].sum() == 4 and not (out["A"] & out["B"]).any()
    tie = resolve_overlaps({"A": a, "B": b}, {"A": 0.5, "B": 0.5}, ["A", "B"])
    assert tie["A"].sum() == 12  # tie: config order
    swallowed = resolve_overlaps({"A": a, "B": a.copy()}, {"A": 0.9, "B": 0.1}, ["A", "B"])
    assert list(swallowed) == ["A"]  # B kept nothing: no region
