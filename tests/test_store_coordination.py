"""backend.state.coordination on a real Redis: delivery claims, waiters, locks and leases."""

from __future__ import annotations

import time

import pytest

from backend.state.schemas import StoredPrediction
from backend.state.store import LockTimeout, Store


def test_delivery_claim_is_exclusive(store: Store) -> None:
    pred = StoredPrediction(task=3, result=[], score=0.5, model_version="gfsam-p1-v1")
    store.data.put_prediction(1, pred)
    assert store.data.get_predictions(1, [3, 4], "gfsam-p1-v1") == [pred, None]
    assert store.coord.claim_delivery(1, 3, "gfsam-p1-v1", "inline") is True
    assert store.coord.claim_delivery(1, 3, "gfsam-p1-v1", "api") is False
    assert store.coord.delivery_claim(1, 3, "gfsam-p1-v1") == "inline"
    assert store.data.last_delivered_version(1, 3) == "gfsam-p1-v1"


def test_waiters_count(store: Store) -> None:
    store.coord.waiter_enter(1, 2, "v", 60)
    store.coord.waiter_enter(1, 2, "v", 60)
    store.coord.waiter_leave(1, 2, "v")
    assert store.coord.has_waiter(1, 2, "v")
    store.coord.waiter_leave(1, 2, "v")
    assert not store.coord.has_waiter(1, 2, "v")


def test_refit_lock_waits_for_live_owner_and_breaks_dead_one(store: Store) -> None:
    other = Store(store.r, store.settings, owner="gfsam-host-1-abc")
    store.coord.renew_lease("gfsam-host-1-abc", 30)
    with other.coord.project_lock(1):
        with pytest.raises(LockTimeout):
            with store.coord.project_lock(1):
                pass
    with other.coord.project_lock(1):
        store.coord.drop_lease("gfsam-host-1-abc")  # the holder was SIGKILLed
        # refit_lock_wait_s is 0.3 s and the lock's own timeout 1800 s: only breaking it works
        with store.coord.project_lock(1):
            assert store.r.get("gfsam:lock:refit:1").decode().startswith("test|")


def test_delivery_lock_is_never_broken_early(store: Store) -> None:
    """A dead holder's POST may still be in flight: only the lock's expiry frees it."""
    dead = Store(store.r, store.settings, owner="gfsam-dead-1-abc")  # no lease at all
    with dead.coord._locked("gfsam:lock:x", 0.8, 0.1, break_dead=False):
        with pytest.raises(LockTimeout):
            with store.coord._locked("gfsam:lock:x", 0.8, 0.2, break_dead=False):
                pass
        started = time.monotonic()
        with store.coord._locked("gfsam:lock:x", 0.8, 2.0, break_dead=False):
            assert time.monotonic() - started > 0.3  # acquired only once it expired
