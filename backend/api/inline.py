"""/predict's side of the exactly-once delivery protocol: queue, wait up to a deadline, hand
over the rest (docs/architecture.md §3, "Delivery", steps 1, 3 and 5)."""

from __future__ import annotations

import time

from backend.state.jobs import Jobs, predict_job_id
from backend.state.schemas import DeliverJob, PredictJob, StoredPrediction
from backend.state.store import Store

FINISHED_BADLY = ("failed", "canceled", "stopped")  # RQ job statuses that will not produce


def predict_and_wait(
    store: Store,
    jobs: Jobs,
    p: int,
    version: str,
    tasks: list[int],
    deadline: float,
) -> list[StoredPrediction | None]:
    """Queue each task on the high queue and wait for the results until `deadline` (monotonic).

    Tasks go by id only: the worker reads their data and project from Label Studio, so a
    result is always LS's task's image, whatever the caller sent (issue 7).

    Returns one entry per task: the result claimed here ("inline"), or None where the reply
    carries no result (left to the worker or a `deliver` job).
    """
    out: list[StoredPrediction | None] = [None] * len(tasks)
    pending = start(store, jobs, p, version, tasks)
    try:
        wait(store, jobs, p, version, pending, out, deadline)
    finally:
        give_up(store, jobs, p, version, pending)
    return out


def start(store: Store, jobs: Jobs, p: int, version: str, tasks: list[int]) -> dict[int, int]:
    """Register as a waiter and queue every task (high queue). Returns task -> reply index."""
    claims = store.coord.delivery_claims(p, tasks, version)
    ttl = int(store.settings.predict_deadline_s) + 60
    pending: dict[int, int] = {}
    for i, (task, claim) in enumerate(zip(tasks, claims, strict=True)):
        if task in pending:
            continue
        if claim is not None:  # delivered before: make sure LS has it, never send it twice
            delay = store.settings.inline_verify_delay_s if claim == "inline" else 0
            if claim == "api" or delay:
                jobs.enqueue_deliver(
                    DeliverJob(project=p, task=task, version=version), delay_s=delay
                )
            continue
        store.coord.waiter_enter(p, task, version, ttl)
        pending[task] = i
        job = PredictJob(project=p, task=task, version=version, interactive=True)
        jobs.enqueue_predict(job, high=True)
    return pending


def wait(
    store: Store,
    jobs: Jobs,
    p: int,
    version: str,
    pending: dict[int, int],
    out: list[StoredPrediction | None],
    deadline: float,
) -> None:
    """Claim results as they land; stop early if the version changes or a job fails for good."""
    last_check = time.monotonic()
    while pending and time.monotonic() < deadline:
        tasks = list(pending)
        for task, pred in zip(tasks, store.data.get_predictions(p, tasks, version), strict=True):
            if pred is None:
                continue
            if store.coord.claim_delivery(p, task, version, "inline"):
                out[pending[task]] = pred
                _verify_later(store, jobs, p, task, version)
            store.coord.waiter_leave(p, task, version)
            del pending[task]
        if pending and time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            if store.data.current_version(p) != version:
                return  # a re-fit landed: the new version is pre-annotated through the API
            _drop_failed(store, jobs, p, version, pending)
        if pending:
            time.sleep(store.settings.predict_poll_s)


def _drop_failed(store: Store, jobs: Jobs, p: int, version: str, pending: dict[int, int]) -> None:
    tasks = list(pending)
    statuses = jobs.job_statuses([predict_job_id(p, t, version) for t in tasks])
    for task, status in zip(tasks, statuses, strict=True):
        if status in FINISHED_BADLY:
            store.coord.waiter_leave(p, task, version)
            del pending[task]


def give_up(store: Store, jobs: Jobs, p: int, version: str, pending: dict[int, int]) -> None:
    """Deadline protocol: leave as a waiter first, then pick up a result that raced us."""
    for task in list(pending):
        store.coord.waiter_leave(p, task, version)
        if store.data.get_prediction(p, task, version) is None:
            continue  # the worker will find no waiter and post it itself
        if store.coord.claim_delivery(p, task, version, "api"):
            jobs.enqueue_deliver(DeliverJob(project=p, task=task, version=version))


def _verify_later(store: Store, jobs: Jobs, p: int, task: int, version: str) -> None:
    delay = store.settings.inline_verify_delay_s
    if delay > 0:
        jobs.enqueue_deliver(DeliverJob(project=p, task=task, version=version), delay_s=delay)
