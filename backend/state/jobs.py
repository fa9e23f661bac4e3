"""The enqueue API: RQ queues, jobs by dotted path with deterministic ids (architecture §3).

With `backend/state/store.py` (and its parts) this is the only module of ours that talks to
Redis; workers use it too, to queue follow-up work. What each job is (entry point, id, queue,
timeout, result TTL, retries, payload) is declared once in `backend.state.jobspecs`.
"""

from __future__ import annotations

import hashlib
import logging
import time
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pydantic import BaseModel
from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.results import Result
from rq.serializers import JSONSerializer

from backend.state.jobspecs import JOB_IDS, JOBS, JobSpec
from backend.state.prompts import ClickJob, TeachJob, WarmJob
from backend.state.schemas import (
    AnnotationJob,
    CalibrateJob,
    DeleteJob,
    DeliverJob,
    FeedJob,
    PredictJob,
    PromoteJob,
    SyncJob,
)
from backend.state.settings import Settings
from backend.state.store import Store
from backend.state.versions import version_number

__all__ = ["JOB_IDS", "Enqueued", "Jobs", "connect", "predict_job_id"]

logger = logging.getLogger(__name__)

Enqueued = Literal["queued", "requeued", "promoted", "exists"]
CLICK_WAIT_BLOCK_S = 2  # a waiting click blocks on its result this long between status checks


def connect(url: str) -> Redis:
    """A Redis client for RQ and the store (binary replies, as RQ requires)."""
    return Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def predict_job_id(p: int, t: int, version: str) -> str:
    return f"predict-{p}-{t}-{version_number(version)}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Jobs:
    """The queues (high: a task being opened; batch: pre-annotation and re-fits; background:
    the pre-annotation feed; interactive: clicks) and one method per kind of job.

    Args:
        conn: the Redis connection (shared with `store`).
        settings: timeouts, TTLs, retries, queue names.
        store: progress bookkeeping of queued predict jobs.
    """

    def __init__(self, conn: Redis, settings: Settings, store: Store) -> None:
        self.conn = conn
        self.settings = settings
        self.store = store
        names = {
            "high": settings.queue_high,
            "batch": settings.queue_batch,
            "background": settings.queue_background,
            "interactive": settings.queue_interactive,
            "calibrate": settings.queue_calibrate,
        }
        self._queues = {
            kind: Queue(name, connection=conn, serializer=JSONSerializer)
            for kind, name in names.items()
        }
        self.high, self.batch = self._queues["high"], self._queues["batch"]
        self.background, self.interactive = self._queues["background"], self._queues["interactive"]
        self.calibrate = self._queues["calibrate"]

    @property
    def queues(self) -> list[Queue]:
        """What a pre-annotation worker listens to, in order: high first, then the feed, then
        self-measurement (issue 19) last (only `python -m worker.main --interactive` listens to
        `interactive`)."""
        return [self.high, self.batch, self.background, self.calibrate]

    def _options(self, spec: JobSpec, timeout: str = "job_timeout") -> dict[str, Any]:
        """RQ's options for a job of this kind (`timeout`: what RQ's call names the timeout)."""
        ttl, failure_ttl = spec.result_ttl, spec.failure_ttl
        retry = Retry(max=self.settings.retry_max, interval=self.settings.retry_intervals_s)
        return {
            timeout: spec.timeout_s(self.settings),
            "result_ttl": self.settings.result_ttl_s if ttl is None else ttl,
            "failure_ttl": self.settings.failure_ttl_s if failure_ttl is None else failure_ttl,
            "retry": retry if spec.retry else None,
        }

    def _enqueue(
        self, kind: str, job_id: str, payload: BaseModel, *, queue: Queue | None = None
    ) -> bool:
        """Enqueue unless a job with this id exists. Returns True when a job was created."""
        spec = JOBS[kind]
        target = queue or self._queues[spec.queue]
        try:
            target.enqueue(
                spec.func,
                payload.model_dump(mode="json"),
                job_id=job_id,
                unique=True,
                **self._options(spec),
            )
        except DuplicateJobError:
            return False
        logger.debug("queued %s on %s", job_id, target.name)
        return True

    def _schedule(self, kind: str, job_id: str, payload: BaseModel, delay_s: float) -> bool:
        """Schedule on the batch queue `delay_s` from now, unless the id is scheduled already."""
        job = self.batch.create_job(
            JOBS[kind].func,
            args=(payload.model_dump(mode="json"),),
            job_id=job_id,
            **self._options(JOBS[kind], timeout="timeout"),
        )
        when = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        try:
            self.batch.schedule_job(job, when, unique=True)
        except DuplicateJobError:
            return False
        return True

    def _replace_failed(self, kind: str, job_id: str, payload: BaseModel) -> bool:
        """Enqueue; when a failed job holds the id (e.g. LS was down for long), replace it."""
        if self._enqueue(kind, job_id, payload):
            return True
        if self.job_status(job_id) == JobStatus.FAILED.value:
            self._delete(job_id)
            return self._enqueue(kind, job_id, payload)
        return False

    # --- predictions ----------------------------------------------------------------------------

    def enqueue_predict(self, payload: PredictJob, *, high: bool) -> Enqueued:
        """Queue one task's prediction. A job that failed, or that finished without storing a
        prediction (e.g. skipped because the task was labeled then), is queued again; from
        /predict (`high`) a job still waiting in the batch queue is moved to the high queue."""
        p, t, v = payload.project, payload.task, payload.version
        job_id = predict_job_id(p, t, v)
        queue = self.high if high else self.batch
        if self._enqueue("predict", job_id, payload, queue=queue):
            self.store.progress.job_queued(p, job_id)
            return "queued"
        status = self.job_status(job_id)
        dead = status == JobStatus.FAILED.value or (
            status == JobStatus.FINISHED.value and self.store.data.get_prediction(p, t, v) is None
        )
        if dead:
            self._delete(job_id)
            if self._enqueue("predict", job_id, payload, queue=queue):
                self.store.progress.job_queued(p, job_id)
                return "requeued"
        elif high and status == JobStatus.QUEUED.value and self.batch.remove(job_id):
            job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
            self.high.enqueue_job(job)
            return "promoted"
        return "exists"

    def job_status(self, job_id: str) -> str | None:
        try:
            job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return None
        status = job.get_status(refresh=False)
        return status.value if status is not None else None

    def job_statuses(self, job_ids: list[str]) -> list[str | None]:
        jobs = Job.fetch_many(job_ids, connection=self.conn, serializer=JSONSerializer)
        out: list[str | None] = []
        for job in jobs:
            status = job.get_status(refresh=False) if job is not None else None
            out.append(status.value if status is not None else None)
        return out

    def _delete(self, job_id: str) -> None:
        try:
            Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer).delete()
        except NoSuchJobError:
            pass

    # --- re-fits, sync and deliveries -----------------------------------------------------------

    def enqueue_annotation(self, payload: AnnotationJob) -> str | None:
        """Queue the re-fit for one annotation state (created/updated); None if a duplicate."""
        job_id = f"ann-{payload.project}-{payload.annotation}-{_digest(payload.fingerprint)}"
        return job_id if self._enqueue("annotation", job_id, payload) else None

    def enqueue_delete(self, payload: DeleteJob) -> str | None:
        ids = ",".join(str(a) for a in sorted(set(payload.annotations)))
        job_id = f"del-{payload.project}-{_digest(ids)}"
        return job_id if self._enqueue("delete", job_id, payload) else None

    def enqueue_sync(self, project: int) -> str | None:
        """Reconcile with LS; collapses with a sync that is still queued, scheduled or running
        (a finished one leaves no job behind; a failed one is replaced)."""
        job_id = f"sync-{project}"
        return job_id if self._replace_failed("sync", job_id, SyncJob(project=project)) else None

    def enqueue_config_change(self, project: int, digest: str, n: int) -> str | None:
        """Bump version `n` after a label-config change (once per config and version, so that
        going back to an earlier config bumps again)."""
        job_id = f"cfg-{project}-{n}-{_digest(digest)}"
        return job_id if self._enqueue("config", job_id, SyncJob(project=project)) else None

    def enqueue_deliver(self, payload: DeliverJob, *, delay_s: int = 0) -> str | None:
        """Post a stored prediction through the LS API (now, or `delay_s` later as a check)."""
        kind = "verify" if delay_s else "deliver"
        job_id = f"{kind}-{payload.project}-{payload.task}-{version_number(payload.version)}"
        if delay_s:
            return job_id if self._schedule("deliver", job_id, payload, delay_s) else None
        return job_id if self._replace_failed("deliver", job_id, payload) else None

    # --- debounced re-fits and the pre-annotation feed (issue 12) -------------------------------

    def enqueue_refit(self, project: int, *, delay_s: float) -> str:
        """Re-fit a project from its pending annotation states, `delay_s` from now (the debounce
        window; 0: at once on the batch queue). Called once per window (see the store's
        `open_refit_window`), so every id is new."""
        job_id = f"refit-{project}-{uuid.uuid4().hex[:12]}"
        payload = SyncJob(project=project)
        if delay_s <= 0:
            self._enqueue("refit", job_id, payload)
        else:
            self._schedule("refit", job_id, payload, delay_s)
        return job_id

    def enqueue_feed(self, payload: FeedJob) -> str | None:
        """Queue one chunk of a version's pre-annotation feed (background queue: it runs only
        when nothing else waits)."""
        n = version_number(payload.version)
        job_id = f"feed-{payload.project}-{n}-{payload.chunk}"
        return job_id if self._enqueue("feed", job_id, payload) else None

    def enqueue_calibrate(self, payload: CalibrateJob) -> str | None:
        """Queue the measurement of a version (calibrate queue: after every other job); one job
        per version and attempt (a measurement stopped for waiting predictions is queued again
        as the next attempt)."""
        if not self.settings.calibrate or self.settings.calibrate_tasks == 0:
            return None
        job_id = f"calibrate-{payload.project}-{version_number(payload.version)}"
        if payload.attempt:
            job_id += f"-{payload.attempt}"
        return job_id if self._replace_failed("calibrate", job_id, payload) else None

    # --- the interactive lane (issue 9) ---------------------------------------------------------

    def enqueue_click(self, payload: ClickJob) -> str:
        """Queue one click at the front of the interactive queue (ahead of warm-ups). The id
        carries a random request id `r`: every click is answered once, never collapsed."""
        job_id = f"click-{payload.project}-{payload.task}-{uuid.uuid4().hex[:12]}"
        spec = JOBS["click"]
        self.interactive.enqueue(
            spec.func,
            payload.model_dump(mode="json"),
            job_id=job_id,
            at_front=True,
            **self._options(spec),
        )
        return job_id

    def await_click(self, job_id: str, deadline: float) -> tuple[str | None, Any]:
        """Wait for a click's answer until `deadline` (monotonic): (RQ status, return value).

        Blocks on RQ's result stream of the job (XREAD, woken when the worker saves the
        result: a notification, not polling), `CLICK_WAIT_BLOCK_S` at a time, checking between
        blocks that the job still exists and has not ended without a result. Returns
        ("finished", value), (status, None) for a job that ended otherwise or is gone (None),
        or ("waiting", None) at the deadline.
        """
        try:
            job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return None, None
        while (left := deadline - time.monotonic()) > 0:
            block = max(1, min(CLICK_WAIT_BLOCK_S, int(left)))
            result = Result.fetch_latest(job, serializer=JSONSerializer, timeout=block)
            if result is not None:
                if result.type == Result.Type.SUCCESSFUL:
                    return JobStatus.FINISHED.value, result.return_value
                return JobStatus.FAILED.value, None
            status = self.job_status(job_id)
            if status in (None, "failed", "canceled", "stopped"):
                return status, None
        return "waiting", None

    def cancel_click(self, job_id: str) -> None:
        """Drop a click nobody waits for any more (still queued: never run)."""
        self.interactive.remove(job_id)
        self._delete(job_id)

    def enqueue_warm(self, payload: WarmJob) -> str | None:
        """Encode a task opened in the editor on the interactive lane (once at a time per task;
        a finished warm-up leaves no job, the worker's cache check makes a repeat cheap)."""
        job_id = f"warm-{payload.project}-{payload.task}"
        return job_id if self._enqueue("warm", job_id, payload) else None

    def enqueue_teach(self, payload: TeachJob) -> str | None:
        """Add the object a "teach" gesture clicked to its label's references (batch queue;
        the same gesture twice collapses on the id)."""
        h = _digest(payload.prompts.model_dump_json())
        job_id = f"teach-{payload.project}-{payload.task}-{h}"
        return job_id if self._enqueue("teach", job_id, payload) else None

    # --- discovery (issue 11) -------------------------------------------------------------------

    def enqueue_promote(self, payload: PromoteJob) -> str:
        """Turn a candidate group into a new label; the same request while one is queued or
        running collapses on the id (a failed one is replaced)."""
        job_id = f"promote-{payload.project}-{payload.group}-{_digest(payload.label)}"
        self._replace_failed("promote", job_id, payload)
        return job_id
