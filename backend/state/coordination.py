"""Coordination between the API and the workers: locks, worker leases, /predict waiters and the
delivery claims of the exactly-once protocol (docs/architecture.md §3, "Delivery")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import LockError

from backend.state.keys import key, text
from backend.state.settings import Settings

WORKER_PREFIX = "gfsam-"  # names of workers started by worker.main (they hold leases)
_DELETE_IF_EQUAL = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
LOCK_POLL_S = 0.1


class LockTimeout(RuntimeError):
    """A lock was not acquired in time (transient: the job is retried)."""


class Coordination:
    """Locks, leases, waiters and delivery claims.

    Args:
        conn: the Redis connection.
        settings: lock timeouts and TTLs.
        owner: who takes locks through this object (a worker name, or "api").
    """

    def __init__(self, conn: Redis, settings: Settings, owner: str = "api") -> None:
        self.r = conn
        self.settings = settings
        self.owner = owner

    # --- locks ----------------------------------------------------------------------------------

    @contextmanager
    def project_lock(self, p: int) -> Iterator[None]:
        """Serialise re-fits of one project across all workers."""
        timeout = self.settings.refit_lock_timeout_s
        name = key("lock:refit:{p}", p=p)
        with self._locked(name, timeout, self.settings.refit_lock_wait_s, break_dead=True):
            yield

    @contextmanager
    def delivery_lock(self, p: int, t: int, v: str) -> Iterator[None]:
        """Around "check LS, then POST", so two deliverers never both post.

        Never broken early: a dead holder's POST may still be in flight to LS. It expires after
        two LS timeouts (check + post) plus a margin; the next deliverer then finds the POST in
        LS, or posts.
        """
        timeout = 2 * self.settings.ls_timeout_s + 10
        name = key("lock:deliver:{p}:{t}:{v}", p=p, t=t, v=v)
        with self._locked(name, timeout, timeout + 5, break_dead=False):
            yield

    @contextmanager
    def _locked(
        self, name: str, timeout_s: float, wait_s: float, *, break_dead: bool
    ) -> Iterator[None]:
        """A Redis lock that expires after `timeout_s`. With `break_dead`, it is broken at once
        when its holder is a worker whose lease is gone (SIGKILLed mid-job): only for locks whose
        holder has no side effects outside Redis that could still be in flight.

        Raises:
            LockTimeout: still held by a live owner after `wait_s`.
        """
        token = f"{self.owner}|{uuid.uuid4().hex}"
        lock = self.r.lock(name, timeout=timeout_s)
        deadline = time.monotonic() + wait_s
        while not lock.acquire(blocking=False, token=token):
            holder = text(self.r.get(name)) or ""
            owner = holder.split("|", 1)[0]
            if break_dead and owner.startswith(WORKER_PREFIX) and not self.lease_alive(owner):
                self.r.eval(_DELETE_IF_EQUAL, 1, name, holder)
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{name} held by {owner or 'someone'}")
            time.sleep(LOCK_POLL_S)
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:  # expired, maybe taken over: nothing of ours to release
                pass

    # --- worker leases --------------------------------------------------------------------------

    def renew_lease(self, worker: str, ttl_s: int, job: str = "") -> None:
        """Renew `worker`'s lease; its value names the job it is running ("" when idle)."""
        self.r.set(key("worker:{name}", name=worker), job, ex=ttl_s)

    def lease_job(self, worker: str) -> str | None:
        """The job `worker` says it is running ("" idle), or None when its lease is gone."""
        return text(self.r.get(key("worker:{name}", name=worker)))

    def drop_lease(self, worker: str) -> None:
        self.r.delete(key("worker:{name}", name=worker))

    def lease_alive(self, worker: str) -> bool:
        return bool(self.r.exists(key("worker:{name}", name=worker)))

    # --- /predict waiters -----------------------------------------------------------------------

    def waiter_enter(self, p: int, t: int, v: str, ttl_s: int) -> None:
        """Register a /predict call waiting for (p, t, v); the worker then leaves delivery to it."""
        name = key("waiters:{p}:{t}:{v}", p=p, t=t, v=v)
        with self.r.pipeline() as pipe:
            pipe.incr(name)
            pipe.expire(name, ttl_s)
            pipe.execute()

    def waiter_leave(self, p: int, t: int, v: str) -> None:
        name = key("waiters:{p}:{t}:{v}", p=p, t=t, v=v)
        if self.r.decr(name) <= 0:
            self.r.delete(name)

    def has_waiter(self, p: int, t: int, v: str) -> bool:
        return int(self.r.get(key("waiters:{p}:{t}:{v}", p=p, t=t, v=v)) or 0) > 0

    # --- delivery claims ------------------------------------------------------------------------

    def claim_delivery(self, p: int, t: int, v: str, how: str) -> bool:
        """Atomically become the one deliverer of (p, t, v): `how` is "inline" or "api"."""
        ttl = self.settings.prediction_ttl_s
        won = bool(self.r.set(key("delivered:{p}:{t}:{v}", p=p, t=t, v=v), how, nx=True, ex=ttl))
        if won:
            self.r.set(key("p:{p}:last:{t}", p=p, t=t), v, ex=ttl)
        return won

    def delivery_claim(self, p: int, t: int, v: str) -> str | None:
        return text(self.r.get(key("delivered:{p}:{t}:{v}", p=p, t=t, v=v)))

    def delivery_claims(self, p: int, tasks: list[int], v: str) -> list[str | None]:
        names = [key("delivered:{p}:{t}:{v}", p=p, t=t, v=v) for t in tasks]
        return [text(r) for r in self.r.mget(names)] if tasks else []

    def mark_posted(self, p: int, t: int, v: str) -> None:
        """LS holds the prediction of (p, t, v): a claim alone does not say so (the POST may
        have failed after the claim)."""
        name = key("posted:{p}:{t}:{v}", p=p, t=t, v=v)
        self.r.set(name, 1, ex=self.settings.prediction_ttl_s)

    def posted(self, p: int, tasks: list[int], v: str) -> list[bool]:
        names = [key("posted:{p}:{t}:{v}", p=p, t=t, v=v) for t in tasks]
        return [r is not None for r in self.r.mget(names)] if tasks else []

    # --- debounced re-fits (issue 12) -----------------------------------------------------------

    def open_refit_window(self, p: int, ttl_s: int) -> bool:
        """True for the first event of a burst: it schedules the re-fit; later events of the
        same window only add their state. Expires by itself if the re-fit never runs."""
        return bool(self.r.set(key("p:{p}:refit:window", p=p), 1, nx=True, ex=ttl_s))

    def close_refit_window(self, p: int) -> None:
        """The scheduled re-fit starts: the next event opens a new window (and a new re-fit)."""
        self.r.delete(key("p:{p}:refit:window", p=p))
