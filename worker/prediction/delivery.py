"""The worker's side of the exactly-once delivery protocol: inline /predict reply or LS API,
never both (docs/architecture.md §3, "Delivery", steps 2, 4 and 6), and the background POSTs of
the worker (§3, "Prefetch and background delivery").

Background POSTs: with `deliver_threads` > 0 the job stores the result and claims it ("api") on
its own thread (`claim_computed`) before handing the POST (`post_once`: lock + LS check) to a
bounded executor, so the model thread goes on with the next job. A POST that fails queues a
`deliver` job (RQ retries it); a process that dies first leaves a claim "api" without "posted",
which pre-annotation (every sync) delivers again. At most `deliver_queue` POSTs wait: the job
blocks when that many are pending.
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
from worker.runtime import Runtime, ThreadClient

logger = logging.getLogger(__name__)


def deliver_computed(rt: Runtime, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> str:
    """Steps 1-2 after a result is stored. Returns what happened (for logs and tests)."""
    outcome = claim_computed(rt, store, jobs, p, pred)
    return outcome if outcome is not None else post_once(rt, store, p, pred)


def claim_computed(
    rt: Runtime, store: Store, jobs: Jobs, p: int, pred: StoredPrediction
) -> str | None:
    """Step 2 up to the claim. Returns what happened, or None when the caller must post
    (`post_once`; claimed "api" by us now or by an earlier attempt)."""
    t, v = pred.task, pred.model_version
    if store.coord.has_waiter(p, t, v):
        # If that /predict's process dies before replying, nobody else would post: check LS
        # once its deadline has surely passed (a no-op when the inline reply was stored).
        delay = int(rt.settings.predict_deadline_s) + max(rt.settings.inline_verify_delay_s, 60)
        jobs.enqueue_deliver(DeliverJob(project=p, task=t, version=v), delay_s=delay)
        return "waiter"
    if not store.coord.claim_delivery(p, t, v, "api"):
        claim = store.coord.delivery_claim(p, t, v)
        if claim != "api":
            return f"claimed-{claim}"
        # "api" already: our own earlier attempt (retry, killed worker) or a /predict hand-over;
        # post_once makes that safe.
    return None


def post_once(rt: Runtime, store: Store, p: int, pred: StoredPrediction) -> str:
    """Post unless stale or already in LS (step 4-5). Returns "posted", "present" or "stale".

    Raises:
        LockTimeout: another deliverer of the same prediction holds the lock (retried).
        LabelStudioUnavailable: LS down (retried by RQ).
    """
    t, v = pred.task, pred.model_version
    if store.data.current_version(p) != v:
        logger.info("prediction p%s t%s %s is stale: not posted", p, t, v)
        return "stale"
    with store.coord.delivery_lock(p, t, v):
        if store.data.current_version(p) != v:  # a re-fit landed while we waited for the lock
            return "stale"
        # Whoever posts holds a claim (NX: an existing one stays), so a later /predict never
        # answers this (t, v) inline again: a check after an orphaned waiter posts unclaimed.
        store.coord.claim_delivery(p, t, v, "api")
        existing = rt.ls.task_predictions(t)
        if any(x.model_version == v for x in existing):
            store.coord.mark_posted(p, t, v)
            return "present"
        prediction_id = rt.ls.create_prediction(t, pred.result, pred.score, v)
        store.coord.mark_posted(p, t, v)
    store.progress.incr_stat("delivered_api")
    logger.info("posted prediction %s for p%s t%s %s", prediction_id, p, t, v)
    return "posted"


# --------------------------------------------------------------------------- background POSTs


class BackgroundPoster:
    """A bounded background executor of LS POSTs for one runtime."""

    def __init__(self, rt: Runtime) -> None:
        self.rt = rt
        self.pool = ThreadPoolExecutor(rt.settings.deliver_threads, thread_name_prefix="gfsam-post")
        self.slots = threading.BoundedSemaphore(rt.settings.deliver_queue)
        self.pending = 0
        self.lock = threading.Lock()
        self._clients = ThreadClient(rt.settings)

    def _runtime(self) -> Runtime:
        """The runtime with this thread's own LS client (a client is not shared by threads)."""
        return dataclasses.replace(self.rt, ls=self._clients.get())

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
            outcome = background_post(self._runtime(), store, p, pred)
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


def background_post(rt: Runtime, store: Store, p: int, pred: StoredPrediction) -> str:
    """The POST a background thread runs: `post_once` (a seam for the tests)."""
    return post_once(rt, store, p, pred)


_poster: BackgroundPoster | None = None
_guard = threading.Lock()


def executor_for(rt: Runtime) -> BackgroundPoster | None:
    """This process's executor for `rt` (None when `deliver_threads` is 0)."""
    global _poster
    if rt.settings.deliver_threads == 0:
        return None
    with _guard:
        if _poster is None or _poster.rt is not rt:
            if _poster is not None:
                _poster.close()
            _poster = BackgroundPoster(rt)
        return _poster


def deliver(rt: Runtime, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> str:
    """Deliver a stored prediction: claim here, POST in the background when enabled (else as
    `deliver_computed`). Returns what happened ("handed-off" for a background POST)."""
    executor = executor_for(rt)
    if executor is None:
        return deliver_computed(rt, store, jobs, p, pred)
    outcome = claim_computed(rt, store, jobs, p, pred)
    if outcome is not None:
        return outcome
    executor.submit(store, jobs, p, pred)
    return "handed-off"


def drain(timeout_s: float = 60.0) -> bool:
    """Wait for the pending background POSTs (worker exit, tests)."""
    executor = _poster
    return executor.drain(timeout_s) if executor is not None else True


def reset() -> None:
    """Finish pending POSTs and stop the threads (worker exit, tests)."""
    global _poster
    with _guard:
        if _poster is not None:
            _poster.close()
        _poster = None
