"""RQ side of the service: connect, enqueue by dotted path with deterministic ids, job status.

With `backend/store.py` this is the only service-side module that imports `rq` or `redis`. The
workers use it too, to queue follow-up work (re-predictions after a re-fit, deliveries).

Job ids (RQ allows ``[A-Za-z0-9_-]``) make duplicate events collapse (`unique=True`):

- ``predict-{p}-{t}-{n}``: one task at model version n (the version is part of the id, so a
  re-fit yields new ids and a repeated /predict or pre-annotation pass yields none);
- ``ann-{p}-{a}-{h}``: annotation a at fingerprint h (a hash of its `updated_at`);
- ``del-{p}-{h}``: one ANNOTATIONS_DELETED event (h hashes the sorted ids);
- ``sync-{p}``: reconcile with LS (result_ttl 0, so only a queued/running sync collapses);
- ``deliver-{p}-{t}-{n}`` / ``verify-{p}-{t}-{n}``: post a computed prediction through the API.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from redis import Redis
from rq import Queue, Retry
from rq.exceptions import DuplicateJobError, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

from backend.schemas import (
    AnnotationJob,
    DeleteJob,
    DeliverJob,
    PredictJob,
    SyncJob,
)
from backend.settings import Settings
from backend.store import Store

logger = logging.getLogger(__name__)

Enqueued = Literal["queued", "requeued", "promoted", "exists"]


def connect(url: str) -> Redis:
    """A Redis client for RQ and the store (binary replies, as RQ requires)."""
    return Redis.from_url(url, health_check_interval=30, socket_keepalive=True)


def version_number(version: str) -> int:
    """`gfsam-p3-v12` -> 12."""
    return int(version.rsplit("-v", 1)[1])


def predict_job_id(p: int, t: int, version: str) -> str:
    return f"predict-{p}-{t}-{version_number(version)}"


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode()).hexdigest()[:12]


class Jobs:
    """The two queues (high: a task being opened; batch: pre-annotation and re-fits)."""

    def __init__(self, conn: Redis, settings: Settings) -> None:
        self.conn = conn
        self.settings = settings
        self.store = Store(conn, settings)
        self.high = Queue(settings.queue_high, connection=conn, serializer=JSONSerializer)
        self.batch = Queue(settings.queue_batch, connection=conn, serializer=JSONSerializer)

    @property
    def queues(self) -> list[Queue]:
        """In listening order: high first."""
        return [self.high, self.batch]

    def _retry(self) -> Retry:
        return Retry(max=self.settings.retry_max, interval=self.settings.retry_intervals_s)

    def _enqueue(
        self,
        queue: Queue,
        func: str,
        payload: dict[str, Any],
        job_id: str,
        timeout: int,
        result_ttl: int | None = None,
    ) -> bool:
        """Enqueue unless a job with this id exists. Returns True when a job was created."""
        try:
            queue.enqueue(
                func,
                payload,
                job_id=job_id,
                unique=True,
                job_timeout=timeout,
                result_ttl=self.settings.result_ttl_s if result_ttl is None else result_ttl,
                failure_ttl=self.settings.failure_ttl_s,
                retry=self._retry(),
            )
        except DuplicateJobError:
            return False
        logger.debug("queued %s on %s", job_id, queue.name)
        return True

    # --- predictions ----------------------------------------------------------------------------

    def enqueue_predict(self, payload: PredictJob, *, high: bool) -> Enqueued:
        """Queue one task's prediction. A job that failed, or that finished without storing a
        prediction (e.g. skipped because the task was labeled then), is queued again; from
        /predict (`high`) a job still waiting in the batch queue is moved to the high queue."""
        job_id = predict_job_id(payload.project, payload.task, payload.version)
        queue = self.high if high else self.batch
        args = (
            queue,
            "worker.tasks.predict_task",
            payload.model_dump(mode="json"),
            job_id,
            self.settings.predict_job_timeout_s,
        )
        if self._enqueue(*args):
            self.store.job_queued(payload.project, job_id)
            return "queued"
        status = self.job_status(job_id)
        p, t, v = payload.project, payload.task, payload.version
        dead = status == JobStatus.FAILED.value or (
            status == JobStatus.FINISHED.value and self.store.get_prediction(p, t, v) is None
        )
        if dead:
            self._delete(job_id)
            if self._enqueue(*args):
                self.store.job_queued(payload.project, job_id)
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
            self.batch,
            "worker.tasks.apply_annotation",
            payload.model_dump(mode="json"),
            job_id,
            self.settings.refit_job_timeout_s,
        )
        return job_id if ok else None

    def enqueue_delete(self, payload: DeleteJob) -> str | None:
        ids = ",".join(str(a) for a in sorted(set(payload.annotations)))
        job_id = f"del-{payload.project}-{_digest(ids)}"
        ok = self._enqueue(
            self.batch,
            "worker.tasks.delete_annotations",
            payload.model_dump(mode="json"),
            job_id,
            self.settings.refit_job_timeout_s,
        )
        return job_id if ok else None

    def enqueue_sync(self, project: int) -> str | None:
        """Reconcile with LS; collapses with a sync that is still queued, scheduled or running
        (a finished one leaves no job behind; a failed one is replaced)."""
        job_id = f"sync-{project}"
        args = (
            self.batch,
            "worker.tasks.sync_project",
            SyncJob(project=project).model_dump(mode="json"),
            job_id,
            self.settings.sync_job_timeout_s,
            0,
        )
        if self._enqueue(*args):
            return job_id
        if self.job_status(job_id) == JobStatus.FAILED.value:
            self._delete(job_id)
            return job_id if self._enqueue(*args) else None
        return None

    def enqueue_config_change(self, project: int, digest: str, n: int) -> str | None:
        """Bump version `n` after a label-config change (once per config and version, so that
        going back to an earlier config bumps again)."""
        job_id = f"cfg-{project}-{n}-{_digest(digest)}"
        ok = self._enqueue(
            self.batch,
            "worker.tasks.apply_config_change",
            SyncJob(project=project).model_dump(mode="json"),
            job_id,
            self.settings.sync_job_timeout_s,
        )
        return job_id if ok else None

    # --- deliveries -----------------------------------------------------------------------------

    def enqueue_deliver(self, payload: DeliverJob, *, delay_s: int = 0) -> str | None:
        """Post a stored prediction through the LS API (now, or `delay_s` later as a check)."""
        kind = "verify" if delay_s else "deliver"
        n = version_number(payload.version)
        job_id = f"{kind}-{payload.project}-{payload.task}-{n}"
        if not delay_s:
            args = (
                self.high,
                "worker.tasks.deliver_prediction",
                payload.model_dump(mode="json"),
                job_id,
                120,
                0,
            )
            if self._enqueue(*args):
                return job_id
            if self.job_status(job_id) == JobStatus.FAILED.value:  # e.g. LS was down for long
                self._delete(job_id)
                return job_id if self._enqueue(*args) else None
            return None
        job = self.batch.create_job(
            "worker.tasks.deliver_prediction",
            args=(payload.model_dump(mode="json"),),
            job_id=job_id,
            timeout=120,
            result_ttl=0,
            failure_ttl=self.settings.failure_ttl_s,
            retry=self._retry(),
        )
        when = datetime.now(timezone.utc) + timedelta(seconds=delay_s)
        try:
            self.batch.schedule_job(job, when, unique=True)
        except DuplicateJobError:
            return None
        return job_id
