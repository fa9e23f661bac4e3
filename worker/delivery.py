"""Exactly-once delivery of a computed prediction: inline /predict reply or LS API, never both.

Protocol (per project p, task t, version v; keys in `backend/store.py`):

1. The worker stores the result, then looks for a waiting /predict (`waiters`): if one waits, it
   delivers inline and the worker is done.
2. Otherwise the worker claims `delivered` with SET NX ("api") and posts through the API.
3. /predict registers as a waiter before queueing; on a result it claims ("inline") and replies;
   at its deadline it leaves as a waiter, then claims ("api") any result that raced it and queues
   a `deliver` job.
4. Every API post runs under a per-(p, t, v) lock and first asks LS whether a prediction of
   version v exists on the task, so retries, re-runs after a killed worker and the later check of
   inline replies (`verify`) never create a second prediction.
5. A result whose version is no longer current is not posted (the new version re-predicts).
"""

from __future__ import annotations

import logging

from backend.jobs import Jobs
from backend.schemas import DeliverJob, StoredPrediction
from backend.store import Store
from worker.models import Runtime

logger = logging.getLogger(__name__)


def deliver_computed(rt: Runtime, store: Store, jobs: Jobs, p: int, pred: StoredPrediction) -> str:
    """Steps 1-2 after a result is stored. Returns what happened (for logs and tests)."""
    t, v = pred.task, pred.model_version
    if store.has_waiter(p, t, v):
        # If that /predict's process dies before replying, nobody else would post: check LS
        # once its deadline has surely passed (a no-op when the inline reply was stored).
        delay = int(rt.settings.predict_deadline_s) + max(rt.settings.inline_verify_delay_s, 60)
        jobs.enqueue_deliver(DeliverJob(project=p, task=t, version=v), delay_s=delay)
        return "waiter"
    if not store.claim_delivery(p, t, v, "api"):
        claim = store.delivery_claim(p, t, v)
        if claim != "api":
            return f"claimed-{claim}"
        # "api" already: our own earlier attempt (retry, killed worker) or a /predict hand-over;
        # post_once makes that safe.
    return post_once(rt, store, p, pred)


def post_once(rt: Runtime, store: Store, p: int, pred: StoredPrediction) -> str:
    """Post unless stale or already in LS (step 4-5). Returns "posted", "present" or "stale".

    Raises:
        LockTimeout: another deliverer of the same prediction holds the lock (retried).
        LabelStudioUnavailable: LS down (retried by RQ).
    """
    t, v = pred.task, pred.model_version
    if store.current_version(p) != v:
        logger.info("prediction p%s t%s %s is stale: not posted", p, t, v)
        return "stale"
    with store.delivery_lock(p, t, v):
        if store.current_version(p) != v:  # a re-fit landed while we waited for the lock
            return "stale"
        existing = rt.ls.task_predictions(t)
        if any(x.get("model_version") == v for x in existing):
            store.mark_posted(p, t, v)
            return "present"
        prediction_id = rt.ls.create_prediction(t, pred.result, pred.score, v)
        store.mark_posted(p, t, v)
    store.incr_stat("delivered_api")
    logger.info("posted prediction %s for p%s t%s %s", prediction_id, p, t, v)
    return "posted"
