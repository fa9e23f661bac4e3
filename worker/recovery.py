"""Worker liveness, recovery of jobs abandoned by a killed worker, and the RQ scheduler tick.

RQ alone would notice a dead SimpleWorker's job only after the job's timeout + 60 s (its entry in
the StartedJobRegistry expires) and then retry it only if retries are left. We do better:

- every worker started by `worker.main` holds a lease (`Store.renew_lease`, a few seconds TTL)
  refreshed by a daemon thread, so a SIGKILLed worker's lease lapses quickly (the store also
  breaks re-fit and delivery locks whose holder has no lease);
- the lease's value names the job the worker is running ("" when idle), written when a job
  starts and ends (`Maintenance.running`) and with every renewal;
- the same thread (in every live worker) scans the started registries of our queues: an entry
  whose worker is ours (name prefix) and has no lease is removed (ZREM, so exactly one scanner
  wins) and its job is put back at the front of its queue. So is an entry whose worker is alive
  but runs something else, seen so on two scans `STRANDED_AFTER_S` apart: a job stranded when
  Redis went away under it (RQ could not record its end; the worker lives on under the same
  name, issue 22). The job then runs again from the start; jobs are idempotent (stored results
  are reused, API posts are checked against LS). A click past its deadline is not run again
  (its caller has its answer, a 503): it is deleted instead (`expired`);
- the thread also runs RQ's scheduler step (due retries and delayed `verify` jobs) in-process,
  because RQ's `with_scheduler=True` forks a child, which we avoid in processes that hold CUDA.
"""

from __future__ import annotations

import logging
import threading
import time

from redis import Redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.executions import Execution
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.scheduler import RQScheduler
from rq.serializers import JSONSerializer

from backend.state.settings import Settings
from backend.state.store import WORKER_PREFIX, Store

logger = logging.getLogger(__name__)

LEASE_RENEW_S = 1.0  # the maintenance thread renews the lease this often
# A started job whose live worker names another job in its lease is stranded only when seen so
# twice this far apart (longer than a renewal, so a lease written a moment late never counts).
STRANDED_AFTER_S = 2 * LEASE_RENEW_S + 1.0


class Sightings:
    """Started-registry entries seen stranded (live worker, other job), with when first seen."""

    def __init__(self, after_s: float = STRANDED_AFTER_S) -> None:
        self.after_s = after_s
        self.first: dict[str, float] = {}

    def due(self, entry: str, now: float) -> bool:
        """True when `entry` was seen stranded at least `after_s` ago (records it otherwise)."""
        first = self.first.setdefault(entry, now)
        return now - first >= self.after_s

    def keep_only(self, entries: set[str]) -> None:
        """Forget entries no longer stranded."""
        self.first = {e: t for e, t in self.first.items() if e in entries}


def recover_abandoned(
    conn: Redis, store: Store, queue_names: list[str], sightings: Sightings | None = None
) -> list[str]:
    """Requeue (at the front) started jobs of our workers whose lease is gone, or (with
    `sightings`, kept between calls) whose live worker has been running another job for
    `STRANDED_AFTER_S`. A click past its deadline is deleted, not requeued. Returns job ids."""
    recovered = []
    stranded: set[str] = set()
    now = time.monotonic()
    for name in queue_names:
        registry = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
        for job_id, execution_id in registry.get_job_and_execution_ids(cleanup=False):
            entry = f"{job_id}:{execution_id}"
            worker = _worker_of(conn, job_id, execution_id)
            if not worker.startswith(WORKER_PREFIX):
                continue
            running = store.coord.lease_job(worker)
            if running is not None:  # alive: recovered only when stranded (not its job)
                if running == job_id or sightings is None:
                    continue
                stranded.add(entry)
                if not sightings.due(entry, now):
                    continue
            if not conn.zrem(registry.key, entry):
                continue  # another worker recovered it first
            if _requeue(conn, name, job_id):
                how = "dead worker" if running is None else "worker that lost it (Redis restart)"
                logger.warning("requeued job %s abandoned by %s %s", job_id, how, worker)
                recovered.append(job_id)
        recovered += _recover_dequeued(conn, name)
    if sightings is not None:
        sightings.keep_only(stranded)
    return recovered


def expired(job: Job, now: float | None = None) -> bool:
    """A job whose payload carries a `deadline` (epoch seconds: a click) that has passed."""
    payload = job.args[0] if job.args and isinstance(job.args[0], dict) else {}
    deadline = payload.get("deadline")
    return isinstance(deadline, int | float) and (now or time.time()) > deadline


def _requeue(conn: Redis, name: str, job_id: str) -> bool:
    """Put a job back at the front of its queue; an expired click is deleted instead."""
    try:
        job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
    except NoSuchJobError:
        return False
    if expired(job):
        job.delete()
        logger.warning("dropped job %s: past its deadline, its caller has given up", job_id)
        return False
    Queue(job.origin or name, connection=conn, serializer=JSONSerializer).enqueue_job(
        job, at_front=True
    )
    return True


def _recover_dequeued(conn: Redis, name: str) -> list[str]:
    """Requeue jobs a worker took from the queue but died before registering as started.

    RQ moves a job to the queue's intermediate list on dequeue and registers it as started a
    moment later; a worker killed in between leaves it there (RQ's own cleanup would fail it).
    A job found there, not started, on two scans in a row is requeued at the front; `LREM`
    decides which scanner wins.
    """
    queue = Queue(name, connection=conn, serializer=JSONSerializer)
    intermediate = IntermediateQueue(queue.key, connection=conn)
    started = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
    recovered = []
    for job_id in intermediate.get_job_ids():
        if job_id in started:
            conn.delete(intermediate.get_first_seen_key(job_id))  # a later dequeue starts afresh
            continue
        if intermediate.set_first_seen(job_id):
            continue  # first seen now: a live worker may be registering it
        if not conn.lrem(intermediate.key, 1, job_id):
            continue  # another scanner took it
        conn.delete(intermediate.get_first_seen_key(job_id))
        if _requeue(conn, name, job_id):
            logger.warning("requeued job %s taken from %s by a worker that died", job_id, name)
            recovered.append(job_id)
    return recovered


def _worker_of(conn: Redis, job_id: str, execution_id: str) -> str:
    try:
        return Execution.fetch(execution_id, job_id, connection=conn).worker_name or ""
    except Exception:  # execution hash expired: fall back to the job's record
        try:
            job = Job.fetch(job_id, connection=conn, serializer=JSONSerializer)
        except NoSuchJobError:
            return ""
        return job.worker_name or ""


class Maintenance(threading.Thread):
    """Daemon thread: lease every second, recovery and scheduler every `interval_s`.

    `running(job_id)` (called by the worker when a job starts and ends) puts the job in the
    lease at once; renewals repeat it. A lock orders the two writers, so a renewal never
    overwrites a newer value with an older one.
    """

    def __init__(self, settings: Settings, name: str, queue_names: list[str]) -> None:
        super().__init__(name="gfsam-maintenance", daemon=True)
        assert settings.redis_url is not None
        # Its own connection: the worker's connection sits in BLPOP.
        self.conn = Redis.from_url(settings.redis_url)
        self.store = Store(self.conn, settings, owner=name)
        self.worker_name = name
        self.queue_names = queue_names
        self.lease_s = settings.worker_lease_s
        self.interval_s = settings.recovery_interval_s
        self.stopped = threading.Event()
        self.sightings = Sightings()
        self.current = ""  # the job the worker is running
        self.lease_lock = threading.Lock()
        self.scheduler = RQScheduler(
            queue_names,
            connection=self.conn,
            serializer=JSONSerializer,
            logging_level=settings.log_level,
        )
        self.store.coord.renew_lease(name, self.lease_s)  # alive before the first job is taken

    def running(self, job_id: str | None) -> None:
        """The worker starts (`job_id`) or ends (None) a job: say so in the lease now."""
        with self.lease_lock:
            self.current = job_id or ""
            try:
                self.store.coord.renew_lease(self.worker_name, self.lease_s, self.current)
            except Exception:  # Redis away: the next renewal writes it
                logger.debug("lease update failed", exc_info=True)

    def renew(self) -> None:
        with self.lease_lock:
            self.store.coord.renew_lease(self.worker_name, self.lease_s, self.current)

    def run(self) -> None:
        last = 0.0
        while not self.stopped.is_set():
            try:
                self.renew()
                if time.monotonic() - last >= self.interval_s:
                    last = time.monotonic()
                    recover_abandoned(self.conn, self.store, self.queue_names, self.sightings)
                self.scheduler.acquire_locks()
                self.scheduler.enqueue_scheduled_jobs()
            except Exception:  # Redis restarting: keep trying, the worker itself reconnects too
                logger.warning("maintenance step failed; retrying", exc_info=True)
            self.stopped.wait(LEASE_RENEW_S)

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.scheduler.release_locks()
            self.store.coord.drop_lease(self.worker_name)
        except Exception:
            logger.debug("cleanup on stop failed", exc_info=True)
