"""Progress in Redis: predict jobs per state (per project and per version), failures,
acceptance IoU and worker counters."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from redis.client import Pipeline

from backend.state.keys import key, text
from backend.state.schemas import (
    AcceptanceSample,
    FailureRecord,
    LabelRejects,
    ProjectCounts,
    VersionProgress,
    VersionRejects,
)
from backend.state.settings import Settings
from backend.state.versions import model_version, parse_version

ACCEPTANCE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
ACCEPTANCE_SAMPLES = 200
FAILURE_REASON_CHARS = 500
FAILURES_OVERFLOW = "more"  # failures field: how many were not kept (max_failures reached)
RECENT_FAILURES = 50
VERSIONS_KEPT = 30  # per-version progress of older versions is deleted (bounded reads)
_ENDED = ("done", "failed", "stale")
_REJECT_FIELDS = {"found_instances", "found_pixels", "rejected_instances", "rejected_pixels"}


def _job_version(job_id: str) -> int | None:
    """n of a predict job id `predict-{p}-{t}-{n}`; None for any other id."""
    head, _, n = job_id.rpartition("-")
    return int(n) if head.startswith("predict-") and n.isdigit() else None


def _ints(members: Any) -> list[int]:
    """Sorted-set members (bytes) as ints."""
    return [int(m) for m in members]


class _Held(threading.local):
    """Per thread: the counter increments `Progress.stats_held` holds back, or None."""

    stats: Counter[str] | None = None


class Progress:
    """Counters and samples written by every worker, read by /projects and /metrics."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings
        self._held = _Held()  # this thread's increments held back (`stats_held`)

    # --- predict jobs ---------------------------------------------------------------------------

    def job_queued(self, p: int, job_id: str) -> None:
        n = _job_version(job_id)
        with self.r.pipeline() as pipe:
            pipe.sadd(key("p:{p}:jobs:queued", p=p), job_id)
            if n is not None:
                pipe.sadd(key("p:{p}:v:{n}:queued", p=p, n=n), job_id)
            self._execute_tracked(pipe, p, n)

    def job_started(self, p: int, job_id: str) -> None:
        n = _job_version(job_id)
        with self.r.pipeline() as pipe:
            pipe.srem(key("p:{p}:jobs:queued", p=p), job_id)
            pipe.sadd(key("p:{p}:jobs:running", p=p), job_id)
            if n is not None:
                pipe.srem(key("p:{p}:v:{n}:queued", p=p, n=n), job_id)
                pipe.sadd(key("p:{p}:v:{n}:running", p=p, n=n), job_id)
            self._execute_tracked(pipe, p, n)

    def job_ended(self, p: int, job_id: str, outcome: str, requeued: bool = False) -> None:
        """Move a job out of running: outcome "done", "failed" or "stale" (or back to queued)."""
        n = _job_version(job_id)
        with self.r.pipeline() as pipe:
            pipe.srem(key("p:{p}:jobs:running", p=p), job_id)
            if requeued:
                pipe.sadd(key("p:{p}:jobs:queued", p=p), job_id)
            else:
                pipe.hincrby(key("p:{p}:counts", p=p), outcome, 1)
            if n is not None:
                pipe.srem(key("p:{p}:v:{n}:running", p=p, n=n), job_id)
                if requeued:
                    pipe.sadd(key("p:{p}:v:{n}:queued", p=p, n=n), job_id)
                else:
                    pipe.hincrby(key("p:{p}:v:{n}:counts", p=p, n=n), outcome, 1)
            self._execute_tracked(pipe, p, n)

    def _execute_tracked(self, pipe: Pipeline, p: int, n: int | None) -> None:
        """Execute `pipe`, first indexing version `n` (if any); then drop the per-version keys
        of versions beyond the last `VERSIONS_KEPT` (an old version written again is the
        lowest, so it goes at once)."""
        if n is None:
            pipe.execute()
            return
        pipe.zadd(key("p:{p}:versions", p=p), {str(n): n})
        pipe.zcard(key("p:{p}:versions", p=p))
        if pipe.execute()[-1] > VERSIONS_KEPT:
            self._prune_versions(p)

    def _prune_versions(self, p: int) -> None:
        index = key("p:{p}:versions", p=p)
        old = _ints(self.r.zrange(index, 0, -(VERSIONS_KEPT + 1)))
        with self.r.pipeline() as pipe:
            for n in old:
                pipe.zrem(index, str(n))
                for part in ("queued", "running", "counts", "rejects"):
                    pipe.delete(key(f"p:{{p}}:v:{{n}}:{part}", p=p, n=n))
            pipe.execute()

    def counts(self, p: int) -> ProjectCounts:
        with self.r.pipeline() as pipe:
            pipe.scard(key("p:{p}:jobs:queued", p=p))
            pipe.scard(key("p:{p}:jobs:running", p=p))
            pipe.hgetall(key("p:{p}:counts", p=p))
            queued, running, raw = pipe.execute()
        ended = {str(text(k)): int(v) for k, v in raw.items()}
        return ProjectCounts(queued=queued, running=running, **ended)

    def version_progress(self, p: int, limit: int = VERSIONS_KEPT) -> list[VersionProgress]:
        """Per-version job counts and acceptance of the last `limit` versions, newest first
        (1 + 3 * limit Redis commands in two round trips, whatever the number of tasks)."""
        ns = _ints(self.r.zrevrange(key("p:{p}:versions", p=p), 0, limit - 1))
        with self.r.pipeline() as pipe:
            for n in ns:
                pipe.scard(key("p:{p}:v:{n}:queued", p=p, n=n))
                pipe.scard(key("p:{p}:v:{n}:running", p=p, n=n))
                pipe.hgetall(key("p:{p}:v:{n}:counts", p=p, n=n))
            replies = pipe.execute()
        out = []
        for i, n in enumerate(ns):
            queued, running, raw = replies[3 * i : 3 * i + 3]
            fields = {str(text(k)): float(v) for k, v in raw.items()}
            count = int(fields.get("acc_count", 0))
            out.append(
                VersionProgress(
                    n=n,
                    version=model_version(p, n),
                    queued=queued,
                    running=running,
                    **{name: int(fields.get(name, 0)) for name in _ENDED},
                    acceptance_count=count,
                    acceptance_mean_iou=fields.get("acc_sum", 0.0) / count if count else None,
                )
            )
        return out

    # --- what the assignment's reject removed (issue 18) ---------------------------------------

    def record_rejects(
        self, p: int, version: str, task: int, labels: dict[str, LabelRejects]
    ) -> None:
        """One task's per-label found / rejected counts at `version`. Keyed by task, so a job
        that runs again overwrites its own row (nothing counted twice)."""
        parsed = parse_version(version)
        if parsed is None or parsed[0] != p:
            return
        n = parsed[1]
        row = {label: r.model_dump(include=_REJECT_FIELDS) for label, r in labels.items()}
        with self.r.pipeline() as pipe:
            pipe.hset(key("p:{p}:v:{n}:rejects", p=p, n=n), str(task), json.dumps(row))
            self._execute_tracked(pipe, p, n)

    def rejects(self, p: int, limit: int = 3) -> list[VersionRejects]:
        """Per-label totals of the last `limit` versions that have any, newest first; each
        label's ``rejected_share`` and ``warning`` (above ``reject_warn_share``) filled."""
        ns = _ints(self.r.zrevrange(key("p:{p}:versions", p=p), 0, VERSIONS_KEPT - 1))
        out: list[VersionRejects] = []
        for n in ns:
            raw = self.r.hgetall(key("p:{p}:v:{n}:rejects", p=p, n=n))
            if not raw:
                continue
            totals: dict[str, LabelRejects] = {}
            for row in raw.values():
                for label, counts in json.loads(row).items():
                    totals.setdefault(label, LabelRejects(label=label)).add(
                        LabelRejects(label=label, **counts)
                    )
            for r in totals.values():
                r.rejected_share = r.rejected_pixels / r.found_pixels if r.found_pixels else None
                r.warning = (r.rejected_share or 0.0) > self.settings.reject_warn_share
            labels = sorted(totals.values(), key=lambda r: r.label)
            out.append(
                VersionRejects(n=n, version=model_version(p, n), tasks=len(raw), labels=labels)
            )
            if len(out) >= limit:
                break
        return out

    # --- failures -------------------------------------------------------------------------------

    def record_failure(self, p: int, what: str, reason: str) -> None:
        """Keep the reason of `what`; past `max_failures` reasons a project only counts new ones
        (under FAILURES_OVERFLOW), so failure state stays bounded (issue 7)."""
        reason = reason[:FAILURE_REASON_CHARS]
        failures = key("p:{p}:failures", p=p)
        if self.r.hlen(failures) >= self.settings.max_failures and not self.r.hexists(
            failures, what
        ):
            self.r.hincrby(failures, FAILURES_OVERFLOW, 1)
            return
        entry = FailureRecord(what=what, reason=reason, at=time.time()).model_dump_json()
        recent = key("p:{p}:failures:recent", p=p)
        with self.r.pipeline() as pipe:
            pipe.hset(key("p:{p}:failures", p=p), what, reason)
            pipe.lpush(recent, entry)
            pipe.ltrim(recent, 0, RECENT_FAILURES - 1)
            pipe.execute()

    def clear_failure(self, p: int, what: str) -> None:
        self.r.hdel(key("p:{p}:failures", p=p), what)

    def failures(self, p: int) -> dict[str, str]:
        raw = self.r.hgetall(key("p:{p}:failures", p=p))
        return {str(text(k)): str(text(v)) for k, v in raw.items()}

    def recent_failures(self, p: int, limit: int = 20) -> tuple[list[FailureRecord], int]:
        """The last `limit` failures, newest first, the newest of each task/annotation marked
        `current` when it still stands (not cleared since); and how many stand now.
        Three Redis commands in one round trip."""
        with self.r.pipeline() as pipe:
            pipe.lrange(key("p:{p}:failures:recent", p=p), 0, limit - 1)
            pipe.hlen(key("p:{p}:failures", p=p))
            raws, standing = pipe.execute()
        records = [FailureRecord.model_validate_json(r) for r in raws]
        if records:
            now = self.r.hmget(key("p:{p}:failures", p=p), [r.what for r in records])
            seen: set[str] = set()
            for record, reason in zip(records, now, strict=True):
                record.current = reason is not None and record.what not in seen  # newest only
                seen.add(record.what)
        return records, int(standing)

    # --- acceptance IoU -------------------------------------------------------------------------

    def record_acceptance(self, p: int, sample: AcceptanceSample) -> bool:
        """Record how much an annotation kept of the prediction it replaced (once per pair)."""
        pair = f"{sample.annotation}:{sample.model_version}"
        if not self.r.hsetnx(key("p:{p}:acc:seen", p=p), pair, 1):
            return False
        hist, samples = key("p:{p}:acc:hist", p=p), key("p:{p}:acc:samples", p=p)
        parsed = parse_version(sample.model_version)
        n = parsed[1] if parsed is not None and parsed[0] == p else None
        with self.r.pipeline() as pipe:
            for iou in sample.iou.values():
                for le in ACCEPTANCE_BUCKETS:
                    if iou <= le:
                        pipe.hincrby(hist, f"{le}", 1)
                pipe.hincrbyfloat(hist, "sum", iou)
                pipe.hincrby(hist, "count", 1)
                if n is not None:
                    pipe.hincrbyfloat(key("p:{p}:v:{n}:counts", p=p, n=n), "acc_sum", iou)
                    pipe.hincrby(key("p:{p}:v:{n}:counts", p=p, n=n), "acc_count", 1)
            pipe.lpush(samples, sample.model_dump_json())
            pipe.ltrim(samples, 0, ACCEPTANCE_SAMPLES - 1)
            self._execute_tracked(pipe, p, n)
        return True

    def acceptance_samples(self, p: int, limit: int = 20) -> list[AcceptanceSample]:
        raws = self.r.lrange(key("p:{p}:acc:samples", p=p), 0, limit - 1)
        return [AcceptanceSample.model_validate_json(r) for r in raws]

    def acceptance_histogram(self, p: int) -> dict[str, float]:
        """Cumulative bucket counts keyed by upper bound ("0.5"), plus "sum" and "count"."""
        raw = self.r.hgetall(key("p:{p}:acc:hist", p=p))
        return {str(text(k)): float(v) for k, v in raw.items()}

    # --- process-wide counters ------------------------------------------------------------------

    def incr_stat(self, name: str, amount: int = 1) -> None:
        held = self._held.stats
        if held is not None:
            held[name] += amount
            return
        self.r.hincrby(key("stats"), name, amount)

    @contextmanager
    def stats_held(self) -> Iterator[None]:
        """This thread's `incr_stat` calls inside the block reach Redis together when it ends,
        raising or not (a pre-annotation job's half-dozen counters: one round trip, not one
        each). Other threads count at once; an inner block is part of the outer one."""
        if self._held.stats is not None:
            yield
            return
        held: Counter[str] = Counter()
        self._held.stats = held
        try:
            yield
        finally:
            self._held.stats = None
            if held:
                with self.r.pipeline(transaction=False) as pipe:
                    for name, amount in held.items():
                        pipe.hincrby(key("stats"), name, amount)
                    pipe.execute()

    def stats(self) -> dict[str, int]:
        return {str(text(k)): int(v) for k, v in self.r.hgetall(key("stats")).items()}
