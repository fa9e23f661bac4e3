"""The enqueue API: RQ queues, jobs by dotted path with deterministic ids (architecture §3).

With `backend/state/store.py` (and its parts) this is the only module of ours that talks to
Redis; workers use it too, to queue follow-up work. Jobs are enqueued by dotted path, so the
HTTP side never imports `worker`.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backend.state.prompts import ClickJob, WarmJob
from backend.state.schemas import (
    AnnotationJob,
    DeleteJob,
    DeliverJob,
    PredictJob,
    PromoteJob,
    SyncJob,
)
from backend.state.settings import Settings
from backend.state.store import Store
from backend.state.versions import version_number

logger = logging.getLogger(__name__)

Enqueued = Literal["queued", "requeued", "promoted", "exists"]

# Job id templates (RQ allows [A-Za-z0-9_-]); docs/architecture.md §3 has the same table.
JOB_IDS: dict[str, str] = {
    "worker.tasks.predict_task": "predict-{p}-{t}-{n}",
    "worker.tasks.apply_annotation": "ann-{p}-{a}-{h}",
    "worker.tasks.delete_annotations": "del-{p}-{h}",
    "worker.tasks.sync_project": "sync-{p}",
    "worker.tasks.apply_config_change": "cfg-{p}-{n}-{h}",
    "worker.tasks.deliver_prediction": "deliver-{p}-{t}-{n} | verify-{p}-{t}-{n}",
    "worker.correction.debounce.refit_project": "refit-{p}-{w}",
    "worker.correction.debounce.feed_predictions": "feed-{p}-{n}-{k}",
    "worker.clicks.click.click": "click-{p}-{t}-{r}",
    "worker.clicks.click.warm_target": "warm-{p}-{t}",
    "worker.discovery.promote.promote_group": "promote-{p}-{g}-{h}",
}
# A delivery is one LS check and one POST: two LS timeouts with room to spare.
DELIVER_JOB_TIMEOUT_S = 120
KEEP_NO_RESULT = 0  # result_ttl of jobs that must not collapse with a finished run
CLICK_RESULT_TTL_S = 60  # a click's answer is read by its /predict within its deadline


def connect(url: str) -> Redis:
    """A Redis client for RQ and the store (binary replies, as RQ requires)."""
    return Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def predict_job_id(p: int, t: int, version: str) -> str:
    return f"predict-{p}-{t}-{version_number(version)}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Jobs:
    """The two queues (high: a task being opened; batch: pre-annotation and re-fits).

    Args:
        conn: the Redis connection (shared with `store`).
        settings: timeouts, TTLs, retries, queue names.
        store: progress bookkeeping of queued predict jobs.
    """

    def __init__(self, conn: Redis, settings: Settings, store: Store) -> None:
        self.conn = conn
        self.settings = settings
        self.store = store
        self.high = Queue(settings.queue_high, connection=conn, serializer=JSONSerializer)
        self.batch = Queue(settings.queue_batch, connection=conn, serializer=JSONSerializer)
        self.background = Queue(
            settings.queue_background, connection=conn, serializer=JSONSerializer
        )

    @property
    def queues(self) -> list[Queue]:
        """In listening order: high first, the pre-annotation feed last."""
        return [self.high, self.batch, self.background]

    def _retry(self) -> Retry:
        return Retry(max=self.settings.retry_max, interval=self.settings.retry_intervals_s)

    def _enqueue(
        self,
        *,
        queue: Queue,
        func: str,
        payload: dict[str, Any],
        job_id: str,
        timeout_s: int,
        result_ttl_s: int | None = None,
    ) -> bool:
        """Enqueue unless a job with this id exists. Returns True when a job was created."""
        try:
            queue.enqueue(
                func,
                payload,
                job_id=job_id,
                unique=True,
                job_timeout=timeout_s,
                result_ttl=self.settings.result_ttl_s if result_ttl_s is None else result_ttl_s,
                failure_ttl=self.settings.failure_ttl_s,
                retry=self._retry(),
            )
        except DuplicateJobError:
            return False
        logger.debug("queued %s on %s", job_id, queue.name)
        return True

    def _replace_failed(self, job_id: str, **enqueue: Any) -> bool:
        """Enqueue; when a failed job holds the id (e.g. LS was down for long), replace it."""
        if self._enqueue(job_id=job_id, **enqueue):
            return True
        if self.job_status(job_id) == JobStatus.FAILED.value:
            self._delete(job_id)
            return self._enqueue(job_id=job_id, **enqueue)
        return False

    # --- predictions ----------------------------------------------------------------------------

    def enqueue_predict(self, payload: PredictJob, *, high: bool) -> Enqueued:
        """Queue one task's prediction. A job that failed, or that finished without storing a
        prediction (e.g. skipped because the task was labeled then), is queued again; from
        /predict (`high`) a job still waiting in the batch queue is moved to the high queue."""
        p, t, v = payload.project, payload.task, payload.version
        job_id = predict_job_id(p, t, v)
        enqueue: dict[str, Any] = {
            "queue": self.high if high else self.batch,
            "func": "worker.tasks.predict_task",
            "payload": payload.model_dump(mode="json"),
            "timeout_s": self.settings.predict_job_timeout_s,
        }
        if self._enqueue(job_id=job_id, **enqueue):
            self.store.progress.job_queued(p, job_id)
            return "queued"
        status = self.job_status(job_id)
        dead = status == JobStatus.FAILED.value or (
            status == JobStatus.FINISHED.value and self.store.data.get_prediction(p, t, v) is None
        )
        if dead:
            self._delete(job_id)
            if self._enqueue(job_id=job_id, **enqueue):
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

    # --- re-fits and sync -----------------------------------------------------------------------

    def enqueue_annotation(self, payload: AnnotationJob) -> str | None:
        """Queue the re-fit for one annotation state (created/updated); None if a duplicate."""
        job_id = f"ann-{payload.project}-{payload.annotation}-{_digest(payload.fingerprint)}"
        ok = self._enqueue(
            queue=self.batch,
            func="worker.tasks.apply_annotation",
            payload=payload.model_dump(mode="json"),
            job_id=job_id,
            timeout_s=self.settings.refit_job_timeout_s,
        )
        return job_id if ok else None

    def enqueue_delete(self, payload: DeleteJob) -> str | None:
        ids = ",".join(str(a) for a in sorted(set(payload.annotations)))
        job_id = f"del-{payload.project}-{_digest(ids)}"
        ok = self._enqueue(
            queue=self.batch,
            func="worker.tasks.delete_annotations",
            payload=payload.model_dump(mode="json"),
            job_id=job_id,
            timeout_s=self.settings.refit_job_timeout_s,
        )
        return job_id if ok else None

    def enqueue_sync(self, project: int) -> str | None:
        """Reconcile with LS; collapses with a sync that is still queued, scheduled or running
        (a finished one leaves no job behind; a failed one is replaced)."""
        job_id = f"sync-{project}"
        ok = self._replace_failed(
            job_id,
            queue=self.batch,
            func="worker.tasks.sync_project",
            payload=SyncJob(project=project).model_dump(mode="json"),
            timeout_s=self.settings.sync_job_timeout_s,
            result_ttl_s=KEEP_NO_RESULT,
        )
        return job_id if ok else None

    def enqueue_config_change(self, project: int, digest: str, n: int) -> str | None:
        """Bump version `n` after a label-config change (once per config and version, so that
        going back to an earlier config bumps again)."""
        job_id = f"cfg-{project}-{n}-{_digest(digest)}"
        ok = self._enqueue(
            queue=self.batch,
            func="worker.tasks.apply_config_change",
            payload=SyncJob(project=project).model_dump(mode="json"),
            job_id=job_id,
            timeout_s=self.settings.sync_job_timeout_s,
        )
        return job_id if ok else None

    # --- deliveries -----------------------------------------------------------------------------

    def enqueue_deliver(self, payload: DeliverJob, *, delay_s: int = 0) -> str | None:
        """Post a stored prediction through the LS API (now, or `delay_s` later as a check)."""
        kind = "verify" if delay_s else "deliver"
        n = version_number(payload.version)
        job_id = f"{kind}-{payload.project}-{payload.task}-{n}"
        if not delay_s:
            ok = self._replace_failed(
                job_id,
                queue=self.high,
                func="worker.tasks.deliver_prediction",
                payload=payload.model_dump(mode="json"),
                timeout_s=DELIVER_JOB_TIMEOUT_S,
                result_ttl_s=KEEP_NO_RESULT,
            )
            return job_id if ok else None
        job = self.batch.create_job(
            "worker.tasks.deliver_prediction",
            args=(payload.model_dump(mode="json"),),
            job_id=job_id,
            timeout=DELIVER_JOB_TIMEOUT_S,
            result_ttl=KEEP_NO_RESULT,
            failure_ttl=self.settings.failure_ttl_s,
            retry=self._retry(),
        )
        when = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        try:
            self.batch.schedule_job(job, when, unique=True)
        except DuplicateJobError:
            return None
        return job_id

    # --- debounced re-fits and the pre-annotation feed (issue 12) -------------------------------

    def enqueue_refit(self, project: int, *, delay_s: float) -> str:
        """Re-fit a project from its pending annotation states, `delay_s` from now (the debounce
        window; 0: at once on the batch queue). Called once per window (see the store's
        `open_refit_window`), so every id is new."""
        job_id = f"refit-{project}-{uuid.uuid4().hex[:12]}"
        payload = SyncJob(project=project).model_dump(mode="json")
        if delay_s <= 0:
            self._enqueue(
                queue=self.batch,
                func="worker.correction.debounce.refit_project",
                payload=payload,
                job_id=job_id,
                timeout_s=self.settings.refit_job_timeout_s,
            )
            return job_id
        job = self.batch.create_job(
            "worker.correction.debounce.refit_project",
            args=(payload,),
            job_id=job_id,
            timeout=self.settings.refit_job_timeout_s,
            result_ttl=self.settings.result_ttl_s,
            failure_ttl=self.settings.failure_ttl_s,
            retry=self._retry(),
        )
        self.batch.schedule_job(job, datetime.now(timezone.utc) + timedelta(seconds=delay_s))
        return job_id

    def enqueue_feed(self, project: int, version: str, chunk: int) -> str | None:
        """Queue chunk `chunk` of version `version`'s pre-annotation feed (background queue:
        it runs only when nothing else waits)."""
        job_id = f"feed-{project}-{version_number(version)}-{chunk}"
        ok = self._enqueue(
            queue=self.background,
            func="worker.correction.debounce.feed_predictions",
            payload={"project": project, "version": version, "chunk": chunk},
            job_id=job_id,
            timeout_s=self.settings.sync_job_timeout_s,
        )
        return job_id if ok else None

    # --- the interactive lane (issue 9) ---------------------------------------------------------

    @property
    def interactive(self) -> Queue:
        """Clicks and editor warm-ups; only `python -m worker.main --interactive` listens."""
        return Queue(
            self.settings.queue_interactive, connection=self.conn, serializer=JSONSerializer
        )

    def enqueue_click(self, payload: ClickJob) -> str:
        """Queue one click at the front of the interactive queue (ahead of warm-ups). The id
        carries a random request id `r`: every click is answered once, never collapsed."""
        job_id = f"click-{payload.project}-{payload.task}-{uuid.uuid4().hex[:12]}"
        self.interactive.enqueue(
            "worker.clicks.click.click",
            payload.model_dump(mode="json"),
            job_id=job_id,
            job_timeout=int(self.settings.interactive_deadline_s) + 30,
            result_ttl=CLICK_RESULT_TTL_S,
            failure_ttl=CLICK_RESULT_TTL_S,
            at_front=True,
        )
        return job_id

    def click_outcome(self, job_id: str) -> tuple[str | None, Any]:
        """(RQ status, return value) of a click job; the value is None until it finished."""
        try:
            job = Job.fetch(job_id, connection=self.conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return None, None
        status = job.get_status(refresh=False)
        value = job.return_value(refresh=False) if status == JobStatus.FINISHED else None
        return (status.value if status is not None else None), value

    def cancel_click(self, job_id: str) -> None:
        """Drop a click nobody waits for any more (still queued: never run)."""
        self.interactive.remove(job_id)
        self._delete(job_id)

    def enqueue_warm(self, payload: WarmJob) -> str | None:
        """Encode a task opened in the editor on the interactive lane (once at a time per task;
        a finished warm-up leaves no job, the worker's cache check makes a repeat cheap)."""
        job_id = f"warm-{payload.project}-{payload.task}"
        ok = self._enqueue(
            queue=self.interactive,
            func="worker.clicks.click.warm_target",
            payload=payload.model_dump(mode="json"),
            job_id=job_id,
            timeout_s=self.settings.predict_job_timeout_s,
            result_ttl_s=KEEP_NO_RESULT,
        )
        return job_id if ok else None

    # --- discovery (issue 11) -------------------------------------------------------------------

    def enqueue_promote(self, payload: PromoteJob) -> str:
        """Turn a candidate group into a new label (`worker.discovery.promote`); the same request
        while
        one is queued or running collapses on the id (a failed one is replaced)."""
        job_id = f"promote-{payload.project}-{payload.group}-{_digest(payload.label)}"
        self._replace_failed(
            job_id,
            queue=self.batch,
            func="worker.discovery.promote.promote_group",
            payload=payload.model_dump(mode="json"),
            timeout_s=self.settings.sync_job_timeout_s,
            result_ttl_s=KEEP_NO_RESULT,
        )
        return job_id
