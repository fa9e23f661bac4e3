"""Corrections at project scale (docs/architecture.md §3, "Scale"): debounced re-fits and the
pre-annotation feed.

- A burst of corrections yields one re-fit: each annotation event adds its state to the
  project's pending set; the first event of a window schedules `refit_project`
  `refit_debounce_s` later, which applies every pending state in one `apply_changes`.
- After a re-fit, `preannotate` queues the next `lookahead_tasks` unlabeled tasks (Label
  Studio's order) at once and leaves the rest to `feed_predictions`: a background-queue job
  that queues `feed_chunk` more predictions each time the queues in front of it are empty, and
  stops when a newer version exists. A task opened before its turn is served by /predict.
"""

from __future__ import annotations

import json
import logging

from backend.state.jobs import Jobs
from backend.state.schemas import FeedJob, PredictJob
from backend.state.store import Store
from worker import runtime
from worker.correction.refit import apply_changes
from worker.correction.shots import AnnotationState
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable

logger = logging.getLogger(__name__)


def schedule_refit(
    rt: runtime.Runtime, store: Store, jobs: Jobs, p: int, annotation: int, fingerprint: str
) -> str:
    """Add one annotation state to the project's pending set; the first state of a window
    schedules the re-fit. Returns "scheduled" or "pending"."""
    store.data.add_pending(p, annotation, fingerprint)
    delay = rt.settings.refit_debounce_s
    window_ttl = int(delay + rt.settings.refit_job_timeout_s)
    if store.coord.open_refit_window(p, window_ttl):
        jobs.enqueue_refit(p, delay_s=delay)
        return "scheduled"
    return "pending"


def annotation_state(
    rt: runtime.Runtime, store: Store, p: int, annotation: int, task_hint: int
) -> AnnotationState:
    """What Label Studio says an annotation is now: its result, task and image come from LS,
    never from the event (a deleted annotation is a tombstone).

    Raises:
        ValueError: the annotation's task belongs to another project. LabelStudioNotFound: its
            task is gone.
    """
    ann = rt.ls.get_annotation(annotation)
    if ann is None:
        return AnnotationState.deleted(annotation)
    task = rt.ls.get_task(ann.task or task_hint, p)
    if task.project is not None and task.project != p:
        raise ValueError(f"task {task.id} is not in project {p}")
    cfg = store.data.config(p)
    url = task.image_url(cfg.data_key) if cfg is not None else None
    if not ann.was_cancelled:  # a skipped task is still unlabeled
        store.data.mark_labeled(p, task.id)
    return AnnotationState.from_ls(ann, url, task.id)


def refit_project(rt: runtime.Runtime, store: Store, jobs: Jobs, p: int) -> str | None:
    """The debounced re-fit: every pending annotation state of the project, one new version."""
    store.coord.close_refit_window(p)  # events from now on open the next window
    members = store.data.pending(p)
    latest = sorted({m.annotation for m in members})  # LS's current state of each, read once
    states = []
    for annotation in latest:
        try:
            states.append(annotation_state(rt, store, p, annotation, 0))
        except LabelStudioUnavailable:
            raise  # transient: the whole re-fit is retried
        except (LabelStudioError, ValueError) as exc:  # permanent: this annotation only
            store.progress.record_failure(p, f"annotation:{annotation}", f"{exc}")
            store.data.drop_pending(p, [m for m in members if m.annotation == annotation])
            logger.warning(
                "project %s: annotation %s left out of the re-fit: %s", p, annotation, exc
            )
    version = apply_changes(rt, store, jobs, p, states) if states else None
    store.data.drop_pending(p, members)
    logger.info("project %s: debounced re-fit of %d annotation(s) -> %s", p, len(states), version)
    return version


def feed_predictions(rt: runtime.Runtime, store: Store, jobs: Jobs, payload: FeedJob) -> str:
    """Queue the next chunk of a version's feed on the batch queue, then queue itself again
    behind it (background queue); stop, dropping the feed, once a newer version exists."""
    p, version, chunk = payload.project, payload.version, payload.chunk
    if store.data.current_version(p) != version:
        store.data.drop_feed(p, version)
        return "superseded"
    # Entries leave the feed only once queued: a retried job (Redis hiccup) re-queues them
    # (ids collapse), it never skips them.
    taken, left = store.data.peek_feed(p, version, rt.settings.feed_chunk)
    queued = 0
    for entry in taken:
        job = PredictJob.model_validate(json.loads(entry))
        if store.data.is_labeled(p, job.task):
            continue
        queued += jobs.enqueue_predict(job, high=False) in ("queued", "requeued")
    store.data.drop_feed_head(p, version, len(taken))
    if left:
        jobs.enqueue_feed(FeedJob(project=p, version=version, chunk=chunk + 1))
    return f"queued {queued}, {left} left"
