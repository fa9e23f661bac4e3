"""Progress in Redis: predict jobs per state, failures, acceptance IoU and worker counters."""

from __future__ import annotations

from redis import Redis

from backend.state.keys import key, text
from backend.state.schemas import AcceptanceSample, ProjectCounts
from backend.state.settings import Settings

ACCEPTANCE_BUCKETS = (0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 1.0)
ACCEPTANCE_SAMPLES = 200
FAILURE_REASON_CHARS = 500


class Progress:
    """Counters and samples written by every worker, read by /projects and /metrics."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.r = conn
        self.settings = settings

    # --- predict jobs ---------------------------------------------------------------------------

    def job_queued(self, p: int, job_id: str) -> None:
        self.r.sadd(key("p:{p}:jobs:queued", p=p), job_id)

    def job_started(self, p: int, job_id: str) -> None:
        with self.r.pipeline() as pipe:
            pipe.srem(key("p:{p}:jobs:queued", p=p), job_id)
            pipe.sadd(key("p:{p}:jobs:running", p=p), job_id)
            pipe.execute()

    def job_ended(self, p: int, job_id: str, outcome: str, requeued: bool = False) -> None:
        """Move a job out of running: outcome "done", "failed" or "stale" (or back to queued)."""
        with self.r.pipeline() as pipe:
            pipe.srem(key("p:{p}:jobs:running", p=p), job_id)
            if requeued:
                pipe.sadd(key("p:{p}:jobs:queued", p=p), job_id)
            else:
                pipe.hincrby(key("p:{p}:counts", p=p), outcome, 1)
            pipe.execute()

    def counts(self, p: int) -> ProjectCounts:
        with self.r.pipeline() as pipe:
            pipe.scard(key("p:{p}:jobs:queued", p=p))
            pipe.scard(key("p:{p}:jobs:running", p=p))
            pipe.hgetall(key("p:{p}:counts", p=p))
            queued, running, raw = pipe.execute()
        ended = {str(text(k)): int(v) for k, v in raw.items()}
        return ProjectCounts(queued=queued, running=running, **ended)

    # --- failures -------------------------------------------------------------------------------

    def record_failure(self, p: int, what: str, reason: str) -> None:
        self.r.hset(key("p:{p}:failures", p=p), what, reason[:FAILURE_REASON_CHARS])

    def clear_failure(self, p: int, what: str) -> None:
        self.r.hdel(key("p:{p}:failures", p=p), what)

    def failures(self, p: int) -> dict[str, str]:
        raw = self.r.hgetall(key("p:{p}:failures", p=p))
        return {str(text(k)): str(text(v)) for k, v in raw.items()}

    # --- acceptance IoU -------------------------------------------------------------------------

    def record_acceptance(self, p: int, sample: AcceptanceSample) -> bool:
        """Record how much an annotation kept of the prediction it replaced (once per pair)."""
        pair = f"{sample.annotation}:{sample.model_version}"
        if not self.r.hsetnx(key("p:{p}:acc:seen", p=p), pair, 1):
            return False
        hist, samples = key("p:{p}:acc:hist", p=p), key("p:{p}:acc:samples", p=p)
        with self.r.pipeline() as pipe:
            for iou in sample.iou.values():
                for le in ACCEPTANCE_BUCKETS:
                    if iou <= le:
                        pipe.hincrby(hist, f"{le}", 1)
                pipe.hincrbyfloat(hist, "sum", iou)
                pipe.hincrby(hist, "count", 1)
            pipe.lpush(samples, sample.model_dump_json())
            pipe.ltrim(samples, 0, ACCEPTANCE_SAMPLES - 1)
            pipe.execute()
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
        self.r.hincrby(key("stats"), name, amount)

    def stats(self) -> dict[str, int]:
        return {str(text(k)): int(v) for k, v in self.r.hgetall(key("stats")).items()}
