"""Project state in Redis: the one module that knows our Redis keys (architecture §2).

Keys (all under ``gfsam:``; ``p`` project id, ``t`` task id, ``v`` model version string):

- ``projects`` set of project ids; ``p:{p}:config`` label-config summary JSON (+ ``:digest``);
- ``p:{p}:refs`` the reference set JSON (version number + shots), replaced by one atomic SET;
- ``ref:{sha256}`` reference-encoding blobs, content-addressed, shared by every worker;
- ``p:{p}:ann`` hash annotation id -> fingerprint it was last applied at ("deleted" tombstone);
- ``p:{p}:labeled`` set of tasks with a human annotation;
- ``pred:{p}:{t}:{v}`` computed prediction; ``waiters:{p}:{t}:{v}`` /predict calls waiting;
  ``delivered:{p}:{t}:{v}`` the delivery claim ("inline" or "api"); ``p:{p}:last:{t}`` version of
  the last prediction delivered for a task;
- ``p:{p}:jobs:queued|running`` sets of predict job ids, ``p:{p}:counts`` done/failed/stale;
- ``p:{p}:failures`` reasons; ``p:{p}:acc:*`` acceptance IoU samples and histogram;
- ``stats`` hash of process-wide counters (target cache hits, encodes...).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from redis import Redis
from redis.exceptions import LockError, RedisError, WatchError

from backend.schemas import (
    AcceptanceSample,
    LabelConfigSummary,
    ProjectCounts,
    ReferenceSet,
    StoredPrediction,
)
from backend.settings import Settings

PREFIX = "gfsam:"
WORKER_PREFIX = "gfsam-"  # names of workers started by worker.main (they hold leases)
_DELETE_IF_EQUAL = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"
)
ACCEPTANCE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
ACCEPTANCE_SAMPLES = 200


# Raised by any store call while Redis is unreachable (the app maps it to 503).
StoreUnavailable = RedisError


class VersionConflict(RuntimeError):
    """The reference set changed under a re-fit (lock expired?): the re-fit must be redone."""


class LockTimeout(RuntimeError):
    """The project's re-fit lock was not acquired in time (transient: the job is retried)."""


def _text(value: bytes | str | None) -> str | None:
    return value.decode() if isinstance(value, bytes) else value


class Store:
    """Typed access to the state above. Holds no state of its own besides the connection."""

    def __init__(self, conn: Redis, settings: Settings, owner: str = "api") -> None:
        self.r = conn
        self.settings = settings
        self.owner = owner  # who takes locks through this store (a worker name, or "api")

    # --- label configs --------------------------------------------------------------------------

    def put_config(self, p: int, summary: LabelConfigSummary, digest: str) -> bool:
        """Store a project's config summary. Returns True when the project was unknown."""
        with self.r.pipeline() as pipe:
            pipe.sadd(f"{PREFIX}projects", p)
            pipe.set(f"{PREFIX}p:{p}:config", summary.model_dump_json())
            pipe.set(f"{PREFIX}p:{p}:config:digest", digest)
            added, *_ = pipe.execute()
        return bool(added)

    def config(self, p: int) -> LabelConfigSummary | None:
        raw = self.r.get(f"{PREFIX}p:{p}:config")
        return LabelConfigSummary.model_validate_json(raw) if raw else None

    def config_digest(self, p: int) -> str | None:
        return _text(self.r.get(f"{PREFIX}p:{p}:config:digest"))

    def mark_synced(self, p: int) -> None:
        self.r.set(f"{PREFIX}p:{p}:synced", 1)

    def synced(self, p: int) -> bool:
        return bool(self.r.exists(f"{PREFIX}p:{p}:synced"))

    def projects(self) -> list[int]:
        return sorted(int(x) for x in self.r.smembers(f"{PREFIX}projects"))

    # --- references and versions ----------------------------------------------------------------

    def reference_set(self, p: int) -> ReferenceSet:
        raw = self.r.get(f"{PREFIX}p:{p}:refs")
        return ReferenceSet.model_validate_json(raw) if raw else ReferenceSet(project=p)

    def current_version(self, p: int) -> str:
        return self.reference_set(p).version

    def raise_version_floor(self, p: int, n: int) -> bool:
        """Make the project's version counter at least `n` (same shots). Used when LS already
        holds predictions of our versions that this Redis does not know (a wiped or replaced
        Redis): the next version is then new to LS too. Returns True when it moved."""
        key = f"{PREFIX}p:{p}:refs"
        with self.r.pipeline() as pipe:
            pipe.watch(key)
            refs = self.reference_set(p)
            if refs.n >= n:
                pipe.unwatch()
                return False
            pipe.multi()
            pipe.set(key, refs.model_copy(update={"n": n}).model_dump_json())
            try:
                pipe.execute()
            except WatchError:
                return False
        return True

    def swap_reference_set(self, new: ReferenceSet, expected_n: int) -> None:
        """Atomically replace a project's reference set if its version is still `expected_n`.

        Every blob named by `new` must already be stored: the version becomes visible to /setup
        only with references that workers can load.
        """
        key = f"{PREFIX}p:{new.project}:refs"
        missing = [s.ref for shots in new.shots.values() for s in shots if not self.has_blob(s.ref)]
        if missing:
            raise RuntimeError(f"reference blobs missing before swap: {missing[:3]}")
        with self.r.pipeline() as pipe:
            try:
                pipe.watch(key)
                raw = pipe.get(key)
                n = ReferenceSet.model_validate_json(raw).n if raw else 0
                if n != expected_n:
                    raise VersionConflict(f"project {new.project}: v{n}, expected v{expected_n}")
                pipe.multi()
                pipe.set(key, new.model_dump_json())
                pipe.execute()
            except WatchError:
                raise VersionConflict(f"project {new.project}: concurrent swap") from None

    def put_blob(self, sha: str, blob: bytes) -> None:
        self.r.set(f"{PREFIX}ref:{sha}", blob)

    def get_blob(self, sha: str) -> bytes | None:
        blob = self.r.get(f"{PREFIX}ref:{sha}")
        return blob if isinstance(blob, bytes) or blob is None else blob.encode()

    def expire_blobs(self, dropped: set[str], keep: set[str], seconds: int = 3600) -> None:
        """Let blobs no reference set names expire (an hour: a job of the old version may still
        be loading one); blobs of the current set never expire, even if dropped before."""
        with self.r.pipeline() as pipe:
            for sha in dropped:
                pipe.expire(f"{PREFIX}ref:{sha}", seconds)
            for sha in keep:
                pipe.persist(f"{PREFIX}ref:{sha}")
            pipe.execute()

    def has_blob(self, sha: str) -> bool:
        return bool(self.r.exists(f"{PREFIX}ref:{sha}"))

    @contextmanager
    def project_lock(self, p: int) -> Iterator[None]:
        """Serialise re-fits of one project across all workers."""
        key, timeout = f"{PREFIX}lock:refit:{p}", self.settings.refit_lock_timeout_s
        with self._locked(key, timeout, self.settings.refit_lock_wait_s, break_dead=True):
            yield

    @contextmanager
    def _locked(
        self, key: str, timeout_s: float, wait_s: float, break_dead: bool
    ) -> Iterator[None]:
        """A Redis lock that expires after `timeout_s`. With `break_dead`, it is broken at once
        when its holder is a worker whose lease is gone (SIGKILLed mid-job): only for locks whose
        holder has no side effects outside Redis that could still be in flight.

        Raises:
            LockTimeout: still held by a live owner after `wait_s`.
        """
        token = f"{self.owner}|{uuid.uuid4().hex}"
        lock = self.r.lock(key, timeout=timeout_s)
        deadline = time.monotonic() + wait_s
        while not lock.acquire(blocking=False, token=token):
            holder = _text(self.r.get(key)) or ""
            owner = holder.split("|", 1)[0]
            if break_dead and owner.startswith(WORKER_PREFIX) and not self.lease_alive(owner):
                self.r.eval(_DELETE_IF_EQUAL, 1, key, holder)
                continue
            if time.monotonic() > deadline:
                raise LockTimeout(f"{key} held by {owner or 'someone'}")
            time.sleep(0.1)
        try:
            yield
        finally:
            try:
                lock.release()
            except LockError:  # expired, maybe taken over: nothing of ours to release
                pass

    # --- worker leases --------------------------------------------------------------------------

    def renew_lease(self, worker: str, ttl_s: int) -> None:
        self.r.set(f"{PREFIX}worker:{worker}", 1, ex=ttl_s)

    def drop_lease(self, worker: str) -> None:
        self.r.delete(f"{PREFIX}worker:{worker}")

    def lease_alive(self, worker: str) -> bool:
        return bool(self.r.exists(f"{PREFIX}worker:{worker}"))

    # --- annotations ----------------------------------------------------------------------------

    def annotation_fingerprint(self, p: int, annotation: int) -> str | None:
        return _text(self.r.hget(f"{PREFIX}p:{p}:ann", annotation))

    def set_annotation_fingerprint(self, p: int, annotation: int, fingerprint: str) -> None:
        self.r.hset(f"{PREFIX}p:{p}:ann", annotation, fingerprint)

    def mark_labeled(self, p: int, task: int) -> None:
        self.r.sadd(f"{PREFIX}p:{p}:labeled", task)

    def mark_unlabeled(self, p: int, task: int) -> None:
        self.r.srem(f"{PREFIX}p:{p}:labeled", task)

    def is_labeled(self, p: int, task: int) -> bool:
        return bool(self.r.sismember(f"{PREFIX}p:{p}:labeled", str(task)))

    # --- predictions and delivery ---------------------------------------------------------------

    def _k(self, kind: str, p: int, t: int, v: str) -> str:
        return f"{PREFIX}{kind}:{p}:{t}:{v}"

    def put_prediction(self, p: int, pred: StoredPrediction) -> None:
        key = self._k("pred", p, pred.task, pred.model_version)
        self.r.set(key, pred.model_dump_json(), ex=self.settings.prediction_ttl_s)

    def get_prediction(self, p: int, t: int, v: str) -> StoredPrediction | None:
        raw = self.r.get(self._k("pred", p, t, v))
        return StoredPrediction.model_validate_json(raw) if raw else None

    def get_predictions(self, p: int, tasks: list[int], v: str) -> list[StoredPrediction | None]:
        raws = self.r.mget([self._k("pred", p, t, v) for t in tasks]) if tasks else []
        return [StoredPrediction.model_validate_json(r) if r else None for r in raws]

    def waiter_enter(self, p: int, t: int, v: str, ttl_s: int) -> None:
        """Register a /predict call waiting for (p, t, v); the worker then leaves delivery to it."""
        key = self._k("waiters", p, t, v)
        with self.r.pipeline() as pipe:
            pipe.incr(key)
            pipe.expire(key, ttl_s)
            pipe.execute()

    def waiter_leave(self, p: int, t: int, v: str) -> None:
        key = self._k("waiters", p, t, v)
        if self.r.decr(key) <= 0:
            self.r.delete(key)

    def has_waiter(self, p: int, t: int, v: str) -> bool:
        return int(self.r.get(self._k("waiters", p, t, v)) or 0) > 0

    def claim_delivery(self, p: int, t: int, v: str, how: str) -> bool:
        """Atomically become the one deliverer of (p, t, v): `how` is "inline" or "api"."""
        key = self._k("delivered", p, t, v)
        won = bool(self.r.set(key, how, nx=True, ex=self.settings.prediction_ttl_s))
        if won:
            self.r.set(f"{PREFIX}p:{p}:last:{t}", v, ex=self.settings.prediction_ttl_s)
        return won

    def delivery_claim(self, p: int, t: int, v: str) -> str | None:
        return _text(self.r.get(self._k("delivered", p, t, v)))

    def delivery_claims(self, p: int, tasks: list[int], v: str) -> list[str | None]:
        raws = self.r.mget([self._k("delivered", p, t, v) for t in tasks]) if tasks else []
        return [_text(r) for r in raws]

    def mark_posted(self, p: int, t: int, v: str) -> None:
        """LS holds the prediction of (p, t, v): a claim alone does not say so (the POST may
        have failed after the claim)."""
        self.r.set(self._k("posted", p, t, v), 1, ex=self.settings.prediction_ttl_s)

    def posted(self, p: int, tasks: list[int], v: str) -> list[bool]:
        raws = self.r.mget([self._k("posted", p, t, v) for t in tasks]) if tasks else []
        return [r is not None for r in raws]

    def last_delivered_version(self, p: int, t: int) -> str | None:
        return _text(self.r.get(f"{PREFIX}p:{p}:last:{t}"))

    @contextmanager
    def delivery_lock(self, p: int, t: int, v: str) -> Iterator[None]:
        """Around "check LS, then POST", so two deliverers never both post.

        Never broken early: a dead holder's POST may still be in flight to LS. It expires after
        two LS timeouts (check + post) plus a margin; the next deliverer then finds the POST in
        LS, or posts.
        """
        timeout = 2 * self.settings.ls_timeout_s + 10
        with self._locked(self._k("lock:deliver", p, t, v), timeout, timeout + 5, False):
            yield

    # --- progress -------------------------------------------------------------------------------

    def job_queued(self, p: int, job_id: str) -> None:
        self.r.sadd(f"{PREFIX}p:{p}:jobs:queued", job_id)

    def job_started(self, p: int, job_id: str) -> None:
        with self.r.pipeline() as pipe:
            pipe.srem(f"{PREFIX}p:{p}:jobs:queued", job_id)
            pipe.sadd(f"{PREFIX}p:{p}:jobs:running", job_id)
            pipe.execute()

    def job_ended(self, p: int, job_id: str, outcome: str, requeued: bool = False) -> None:
        """Move a job out of running: outcome "done", "failed" or "stale" (or back to queued)."""
        with self.r.pipeline() as pipe:
            pipe.srem(f"{PREFIX}p:{p}:jobs:running", job_id)
            if requeued:
                pipe.sadd(f"{PREFIX}p:{p}:jobs:queued", job_id)
            else:
                pipe.hincrby(f"{PREFIX}p:{p}:counts", outcome, 1)
            pipe.execute()

    def counts(self, p: int) -> ProjectCounts:
        with self.r.pipeline() as pipe:
            pipe.scard(f"{PREFIX}p:{p}:jobs:queued")
            pipe.scard(f"{PREFIX}p:{p}:jobs:running")
            pipe.hgetall(f"{PREFIX}p:{p}:counts")
            queued, running, raw = pipe.execute()
        ended = {str(_text(k)): int(v) for k, v in raw.items()}
        return ProjectCounts(queued=queued, running=running, **ended)

    def record_failure(self, p: int, what: str, reason: str) -> None:
        self.r.hset(f"{PREFIX}p:{p}:failures", what, reason[:500])

    def clear_failure(self, p: int, what: str) -> None:
        self.r.hdel(f"{PREFIX}p:{p}:failures", what)

    def failures(self, p: int) -> dict[str, str]:
        raw = self.r.hgetall(f"{PREFIX}p:{p}:failures")
        return {str(_text(k)): str(_text(v)) for k, v in raw.items()}

    # --- acceptance IoU -------------------------------------------------------------------------

    def record_acceptance(self, p: int, sample: AcceptanceSample) -> bool:
        """Record how much an annotation kept of the prediction it replaced (once per pair)."""
        first = self.r.hsetnx(
            f"{PREFIX}p:{p}:acc:seen", f"{sample.annotation}:{sample.model_version}", 1
        )
        if not first:
            return False
        hist = f"{PREFIX}p:{p}:acc:hist"
        with self.r.pipeline() as pipe:
            for iou in sample.iou.values():
                for le in ACCEPTANCE_BUCKETS:
                    if iou <= le:
                        pipe.hincrby(hist, f"{le}", 1)
                pipe.hincrbyfloat(hist, "sum", iou)
                pipe.hincrby(hist, "count", 1)
            pipe.lpush(f"{PREFIX}p:{p}:acc:samples", sample.model_dump_json())
            pipe.ltrim(f"{PREFIX}p:{p}:acc:samples", 0, ACCEPTANCE_SAMPLES - 1)
            pipe.execute()
        return True

    def acceptance_samples(self, p: int, limit: int = 20) -> list[AcceptanceSample]:
        raws = self.r.lrange(f"{PREFIX}p:{p}:acc:samples", 0, limit - 1)
        return [AcceptanceSample.model_validate_json(r) for r in raws]

    def acceptance_histogram(self, p: int) -> dict[str, float]:
        """Cumulative bucket counts keyed by upper bound ("0.5"), plus "sum" and "count"."""
        raw = self.r.hgetall(f"{PREFIX}p:{p}:acc:hist")
        return {str(_text(k)): float(v) for k, v in raw.items()}

    # --- process-wide counters ------------------------------------------------------------------

    def incr_stat(self, name: str, amount: int = 1) -> None:
        self.r.hincrby(f"{PREFIX}stats", name, amount)

    def stats(self) -> dict[str, int]:
        return {str(_text(k)): int(v) for k, v in self.r.hgetall(f"{PREFIX}stats").items()}

    def ping(self) -> bool:
        return bool(self.r.ping())
