"""The worker's side of the exactly-once delivery protocol: inline /predict reply or LS API,
never both (docs/architecture.md §3, "Delivery", steps 2, 4 and 6)."""

from __future__ import annotations

import logging

from backend.state.jobs import Jobs
from backend.state.schemas import DeliverJob, StoredPrediction
from backend.state.store import Store
from worker.models import Runtime

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
