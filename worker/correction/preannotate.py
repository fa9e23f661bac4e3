"""Pre-annotation: queue a prediction at the current version for every unlabeled task."""

from __future__ import annotations

import logging

from backend.state.jobs import Jobs
from backend.state.schemas import CalibrateJob, DeliverJob, FeedJob, PredictJob
from backend.state.store import Store
from worker.labelstudio.replies import LSTask
from worker.runtime import Runtime

logger = logging.getLogger(__name__)


def preannotate(
    rt: Runtime, store: Store, jobs: Jobs, p: int, version: str, tasks: list[LSTask] | None = None
) -> int:
    """Queue a prediction at `version` for every task without a human annotation: the first
    `lookahead_tasks` in Label Studio's order at once (batch queue), the rest through the
    background feed (`worker.correction.debounce`); a prediction claimed for the API but never
    posted is
    delivered again; the version's measurement (`worker.quality`) goes to the calibrate queue.
    Returns the number of predictions queued or fed."""
    cfg = store.data.config(p)
    if cfg is None or not store.data.reference_set(p).ready_for(cfg.labels):
        return 0  # no label of the current config has a reference: nothing to predict
    tasks = rt.ls.list_tasks(p) if tasks is None else tasks
    ids = [task.id for task in tasks]
    claims = store.coord.delivery_claims(p, ids, version)
    posted = store.coord.posted(p, ids, version)
    queued, later = 0, []
    for task, claim, done in zip(tasks, claims, posted, strict=True):
        t = task.id
        if task.annotated:
            store.data.mark_labeled(p, t)
            continue
        store.data.mark_unlabeled(p, t)  # e.g. its only annotation was deleted
        if claim == "api" and not done and store.data.get_prediction(p, t, version) is not None:
            jobs.enqueue_deliver(DeliverJob(project=p, task=t, version=version))  # POST failed
            continue
        url = task.image_url(cfg.data_key)
        if claim is not None or url is None:
            continue
        job = PredictJob(project=p, task=t, version=version, image_url=url)
        lookahead = rt.settings.lookahead_tasks
        if lookahead is not None and queued >= lookahead:
            later.append(job)  # fed from the background queue (worker.correction.debounce)
            continue
        queued += jobs.enqueue_predict(job, high=False) in ("queued", "requeued")
    start_feed(rt, store, jobs, p, version, later)
    jobs.enqueue_calibrate(CalibrateJob(project=p, version=version))  # issue 19, queued last
    logger.info(
        "project %s: queued %d pre-annotations at %s, %d more fed later",
        p,
        queued,
        version,
        len(later),
    )
    return queued + len(later)


def start_feed(
    rt: Runtime, store: Store, jobs: Jobs, p: int, version: str, entries: list[PredictJob]
) -> None:
    """Leave `entries` (in Label Studio's order) to the background feed of `version`
    (`worker.tasks.feed_predictions`)."""
    if not entries:
        return
    store.data.put_feed(p, version, [e.model_dump_json() for e in entries])
    jobs.enqueue_feed(FeedJob(project=p, version=version, chunk=0))
