"""/predict's side of the delivery protocol: queue, wait up to a deadline, hand over the rest.

Exactly-once per (project, task, version) through the store's claim (see `worker/delivery.py`):
a result claimed here ("inline") is returned in the reply; one not ready by the deadline is left
to the worker, which posts it through the LS API, or to a `deliver` job when the result landed
while /predict was giving up.
"""

from __future__ import annotations

import time

from backend.jobs import Jobs, predict_job_id
from backend.schemas import DeliverJob, PredictJob, StoredPrediction

FINISHED_BADLY = ("failed", "canceled", "stopped")  # RQ job statuses that will not produce


def predict_and_wait(
    jobs: Jobs, p: int, version: str, tasks: list[tuple[int, str | None]], deadline: float
) -> list[StoredPrediction | None]:
    """Queue each task on the high queue and wait for the results until `deadline` (monotonic).

    Delivery is exactly-once per (p, task, version) through the store's claim: a result
    claimed here ("inline") is returned; one not ready by the deadline is left to the worker,
    which posts it through the LS API (or a `deliver` job does, if the result landed while we
    were giving up). Returns one entry per task, None where the reply carries no result.
    """
    out: list[StoredPrediction | None] = [None] * len(tasks)
    pending = start(jobs, p, version, tasks)
    try:
        wait(jobs, p, version, pending, out, deadline)
    finally:
        give_up(jobs, p, version, pending)
    return out


def start(jobs: Jobs, p: int, version: str, tasks: list[tuple[int, str | None]]) -> dict[int, int]:
    """Register as a waiter and queue every task (high queue). Returns task -> reply index."""
    ids = [t for t, _ in tasks]
    claims = jobs.store.delivery_claims(p, ids, version)
    ttl = int(jobs.settings.predict_deadline_s) + 60
    pending: dict[int, int] = {}
    for i, ((task, url), claim) in enumerate(zip(tasks, claims, strict=True)):
        if url is None:
            jobs.store.record_failure(p, f"task:{task}", "task data has no image URL")
            continue
        if task in pending:
            continue
        if claim is not None:  # delivered before: make sure LS has it, never send it twice
            delay = jobs.settings.inline_verify_delay_s if claim == "inline" else 0
            if claim == "api" or delay:
                jobs.enqueue_deliver(
                    DeliverJob(project=p, task=task, version=version), delay_s=delay
                )
            continue
        jobs.store.waiter_enter(p, task, version, ttl)
        pending[task] = i
        job = PredictJob(project=p, task=task, version=version, image_url=url, interactive=True)
        jobs.enqueue_predict(job, high=True)
    return pending


def wait(
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
        for task, pred in zip(tasks, jobs.store.get_predictions(p, tasks, version), strict=True):
            if pred is None:
                continue
            if jobs.store.claim_delivery(p, task, version, "inline"):
                out[pending[task]] = pred
                _verify_later(jobs, p, task, version)
            jobs.store.waiter_leave(p, task, version)
            del pending[task]
        if pending and time.monotonic() - last_check > 1.0:
            last_check = time.monotonic()
            if jobs.store.current_version(p) != version:
                return  # a re-fit landed: the new version is pre-annotated through the API
            _drop_failed(jobs, p, version, pending)
        if pending:
            time.sleep(jobs.settings.predict_poll_s)


def _drop_failed(jobs: Jobs, p: int, version: str, pending: dict[int, int]) -> None:
    tasks = list(pending)
    statuses = jobs.job_statuses([predict_job_id(p, t, version) for t in tasks])
    for task, status in zip(tasks, statuses, strict=True):
        if status in FINISHED_BADLY:
            jobs.store.waiter_leave(p, task, version)
            del pending[task]


def give_up(jobs: Jobs, p: int, version: str, pending: dict[int, int]) -> None:
    """Deadline protocol: leave as a waiter first, then pick up a result that raced us."""
    for task in list(pending):
        jobs.store.waiter_leave(p, task, version)
        if jobs.store.get_prediction(p, task, version) is None:
            continue  # the worker will find no waiter and post it itself
        if jobs.store.claim_delivery(p, task, version, "api"):
            jobs.enqueue_deliver(DeliverJob(project=p, task=task, version=version))


def _verify_later(jobs: Jobs, p: int, task: int, version: str) -> None:
    delay = jobs.settings.inline_verify_delay_s
    if delay > 0:
        jobs.enqueue_deliver(DeliverJob(project=p, task=task, version=version), delay_s=delay)
