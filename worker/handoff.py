"""Label Studio POSTs of computed predictions on background threads (issue 12, the pipelined
worker; docs/architecture.md §3, "Pipeline"), so the model thread goes on with the next job.

Exactly once is kept: the job stores the result and claims it ("api") on its own thread
(`delivery.claim_computed`) before handing the POST over; the POST is `delivery.post_once`
(lock + LS check). A POST that fails queues a `deliver` job (RQ retries it); a process that dies
first leaves a claim "api" without "posted", which pre-annotation (every sync) delivers again.
At most `deliver_queue` POSTs wait: the job blocks when that many are pending.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from backend.state.jobs import Jobs
from backend.state.schemas import DeliverJob, StoredPrediction
from backend.state.store import Store
from worker import delivery, models
from worker.labelstudio import LabelStudioClient

logger = logging.getLogger(__name__)


class Handoff:
    """A bounded background executor of LS POSTs for one runtime."""

    def __init__(self, rt: models.Runtime) -> None:
        self.rt = rt
        self.pool = ThreadPoolExecutor(rt.settings.deliver_threads, thread_name_prefix="gfsam-post")
        self.slots = threading.BoundedSemaphore(rt.settings.deliver_queue)
        self.pending = 0
        self.lock = threading.Lock()
        self._local = threading.local()

    def _runtime(self) -> models.Runtime:
        """The runtime with this thread's own LS client (a client is not shared by threads)."""
        ls: LabelStudioClient | None = getattr(self._local, "ls", None)
        if ls is None:
            ls = self._local.ls = models.client(self.rt.settings)
        return dataclasses.replace(self.rt, ls=ls)

    def submit(self, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> None:
        """Post `pred` (stored and claimed "api" already) in the background."""
        self.slots.acquire()  # bounded: the job waits while deliver_queue POSTs are pending
        with self.lock:
            self.pending += 1
        try:
            self.pool.submit(self._post, store, jobs, p, pred)
        except RuntimeError:  # the pool was shut down meanwhile: a deliver job posts it instead
            with self.lock:
                self.pending -= 1
            self.slots.release()
            jobs.enqueue_deliver(DeliverJob(project=p, task=pred.task, version=pred.model_version))

    def _post(self, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> None:
        t, v = pred.task, pred.model_version
        try:
            outcome = post(self._runtime(), store, p, pred)
            logger.info("background delivery p%s t%s %s: %s", p, t, v, outcome)
        except Exception as exc:
            logger.warning(
                "background POST p%s t%s %s failed (%s: %s): queued for re-delivery",
                p,
                t,
                v,
                type(exc).__name__,
                exc,
            )
            try:
                jobs.enqueue_deliver(DeliverJob(project=p, task=t, version=v))
            except Exception as again:  # Redis gone too: the next sync re-delivers the claim
                logger.warning("re-delivery of p%s t%s %s not queued: %s", p, t, v, again)
        finally:
            with self.lock:
                self.pending -= 1
            self.slots.release()

    def drain(self, timeout_s: float = 60.0) -> bool:
        """Wait until no POST is pending. Returns False when some still are after `timeout_s`."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if self.pending == 0:
                    return True
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self.pool.shutdown(wait=True)


def post(rt: models.Runtime, store: Store, p: int, pred: StoredPrediction) -> str:
    """`delivery.post_once` (a seam for the tests)."""
    return delivery.post_once(rt, store, p, pred)


_handoff: Handoff | None = None
_guard = threading.Lock()


def get(rt: models.Runtime) -> Handoff | None:
    """This process's executor for `rt` (None when `deliver_threads` is 0)."""
    global _handoff
    if rt.settings.deliver_threads == 0:
        return None
    with _guard:
        if _handoff is None or _handoff.rt is not rt:
            if _handoff is not None:
                _handoff.close()
            _handoff = Handoff(rt)
        return _handoff


def deliver(rt: models.Runtime, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> str:
    """Deliver a stored prediction: claim here, POST in the background when enabled (else as
    `delivery.deliver_computed`). Returns what happened ("handed-off" for a background POST)."""
    executor = get(rt)
    if executor is None:
        return delivery.deliver_computed(rt, store, jobs, p, pred)
    outcome = delivery.claim_computed(rt, store, jobs, p, pred)
    if outcome is not None:
        return outcome
    executor.submit(store, jobs, p, pred)
    return "handed-off"


def drain(timeout_s: float = 60.0) -> bool:
    """Wait for the pending background POSTs (worker exit, tests)."""
    executor = _handoff
    return executor.drain(timeout_s) if executor is not None else True


def reset() -> None:
    """Finish pending POSTs and stop the threads (worker exit, tests)."""
    global _handoff
    with _guard:
        if _handoff is not None:
            _handoff.close()
        _handoff = None
