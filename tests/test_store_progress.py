"""backend.state.progress on a real Redis: job counts and acceptance IoU."""

from __future__ import annotations

import pytest

from backend.state.schemas import AcceptanceSample
from backend.state.store import Store


def test_counts(store: Store) -> None:
    for job in ("a", "b", "c"):
        store.progress.job_queued(1, job)
    store.progress.job_started(1, "a")
    store.progress.job_started(1, "b")
    store.progress.job_ended(1, "a", "done")
    store.progress.job_ended(1, "b", "failed", requeued=True)  # will be retried
    c = store.progress.counts(1)
    assert (c.queued, c.running, c.done, c.failed) == (2, 0, 1, 0)


def test_acceptance_recorded_once_with_cumulative_buckets(store: Store) -> None:
    sample = AcceptanceSample(annotation=9, task=2, model_version="v1", iou={"A": 0.6, "B": 1.0})
    assert store.progress.record_acceptance(1, sample) is True
    assert store.progress.record_acceptance(1, sample) is False
    hist = store.progress.acceptance_histogram(1)
    assert hist["count"] == 2 and hist["sum"] == pytest.approx(1.6)
    assert hist.get("0.5", 0) == 0 and hist["0.75"] == 1 and hist["1.0"] == 2
    assert store.progress.acceptance_samples(1) == [sample]


def test_held_stats_reach_redis_together_at_the_end_of_the_block(store: Store) -> None:
    """A job's counters are held by its thread and written in one pipeline when the block ends
    (also when it raises); another thread's count meanwhile goes straight in."""
    import threading

    store.progress.incr_stat("predict")
    with store.progress.stats_held():
        store.progress.incr_stat("predict")
        store.progress.incr_stat("decode", 3)
        with store.progress.stats_held():  # an inner block is part of the outer one
            store.progress.incr_stat("decode")
        other = threading.Thread(target=store.progress.incr_stat, args=("click",))
        other.start()
        other.join()
        assert store.progress.stats() == {"predict": 1, "click": 1}  # held back: not yet
    assert store.progress.stats() == {"predict": 2, "decode": 4, "click": 1}
    with pytest.raises(RuntimeError), store.progress.stats_held():
        store.progress.incr_stat("discover")
        raise RuntimeError("the job failed")
    assert store.progress.stats()["discover"] == 1
    store.progress.incr_stat("discover")  # after the block: at once again
    assert store.progress.stats()["discover"] == 2
