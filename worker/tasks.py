"""Every RQ entry point of the worker, enqueued by dotted path (`backend.state.jobspecs` declares
each job once) with a JSON payload validated here; one job context (`JobContext`) for all.

The entry points orchestrate; the work is done in the rooms (`worker.prediction`,
`worker.correction`, `worker.discovery`, `worker.clicks`; docs/architecture.md §0).

Failures: a transient error (LS down, Redis hiccup, a busy lock) propagates and RQ retries the
job (`Retry(max, interval)`). A permanent one (missing or corrupt image, bad brush, LS refusing
the request) is recorded on the project (`/projects/{id}` failures, `failed` count) and fails
the job without retries; the other tasks of the project are unaffected.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rq import get_current_job

from backend.state.jobs import Jobs, predict_job_id
from backend.state.prompts import ClickJob, TeachJob, WarmJob
from backend.state.schemas import (
    AnnotationJob,
    CalibrateJob,
    DeleteJob,
    DeliverJob,
    FeedJob,
    PredictJob,
    PromoteJob,
    SyncJob,
)
from backend.state.store import LockTimeout, Store
from backend.state.versions import project_versions
from worker import runtime
from worker.clicks import click as clicks
from worker.clicks import teach
from worker.correction import debounce
from worker.correction.preannotate import preannotate
from worker.correction.refit import apply_changes, bump_version
from worker.correction.shots import AnnotationState
from worker.discovery import candidates, promote
from worker.labelstudio.brush_rle import BrushError
from worker.labelstudio.errors import LabelStudioError, LabelStudioNotFound, LabelStudioUnavailable
from worker.labelstudio.project_config import refresh_config
from worker.labelstudio.replies import LSTask
from worker.prediction import decoded_masks, delivery, inference, prefetch
from worker.quality import measure

logger = logging.getLogger(__name__)

TRANSIENT = (LabelStudioUnavailable, LockTimeout, ConnectionError, TimeoutError)
PERMANENT = (LabelStudioError, BrushError, ValueError, KeyError)


@dataclass
class JobContext:
    """What every job runs with: this process's runtime, the store and the enqueue API on the
    job's Redis connection (the store's locks owned by the worker), and the job's id."""

    rt: runtime.Runtime
    store: Store
    jobs: Jobs
    job_id: str


def _context() -> JobContext:
    rt = runtime.get()
    job = get_current_job()
    if job is None:
        raise RuntimeError("worker.tasks functions run inside an RQ job")
    store = Store(job.connection, rt.settings, owner=job.worker_name or "worker")
    return JobContext(rt, store, Jobs(job.connection, rt.settings, store), job.id)


@contextmanager
def _recorded(store: Store, p: int, what: str) -> Iterator[None]:
    """Record a re-fit or sync that failed for good on the project (`/projects/{id}` failures);
    earlier attempts just raise, and RQ retries them."""
    try:
        yield
    except Exception as exc:
        job = get_current_job()
        if job is None or not job.retries_left:
            store.progress.record_failure(p, what, f"{type(exc).__name__}: {exc}")
        raise


def _failed(store: Store, p: int, job_id: str, what: str, exc: Exception) -> None:
    """Book a failed attempt: permanent errors are not retried; the last failure is recorded."""
    job = get_current_job()
    if isinstance(exc, PERMANENT) and not isinstance(exc, TRANSIENT) and job is not None:
        job.retries_left = 0  # RQ reads this right after the job raises
    retrying = bool(job is not None and job.retries_left)
    if not retrying:
        store.progress.record_failure(p, what, f"{type(exc).__name__}: {exc}")
    store.progress.job_ended(p, job_id, "failed", requeued=retrying)


def predict_task(raw: dict[str, Any]) -> str:
    """Predict one task at one version, store the result, deliver it (see
    `worker.prediction.delivery`)."""
    payload = PredictJob.model_validate(raw)
    ctx = _context()
    rt, store, jobs, job_id = ctx.rt, ctx.store, ctx.jobs, ctx.job_id
    p, t, v = payload.project, payload.task, payload.version
    store.progress.job_started(p, job_id)
    try:
        with store.progress.stats_held():  # its counters in one round trip at the end
            outcome = _predict(rt, store, jobs, payload)
    except Exception as exc:
        _failed(store, p, job_id, f"task:{t}", exc)
        raise
    finally:  # the target cache writes this job started (`put_later`) land before it ends
        rt.targets.flush()
        prefetch.forget_decoded()
    store.progress.job_ended(p, job_id, "stale" if outcome in ("stale", "skipped") else "done")
    logger.info("predict p%s t%s %s: %s", p, t, v, outcome)
    return outcome


def _predict(rt: runtime.Runtime, store: Store, jobs: Jobs, payload: PredictJob) -> str:
    p, t, v = payload.project, payload.task, payload.version
    refs = store.data.reference_set(p)
    if refs.version != v:
        return "stale"  # a newer version exists; it re-predicts this task itself
    if (
        not payload.interactive
        and store.data.is_labeled(p, t)
        and not store.coord.has_waiter(p, t, v)
    ):
        return "skipped"  # annotated since it was queued for pre-annotation
    pred = store.data.get_prediction(p, t, v)
    if pred is None:  # computed by an earlier attempt: never compute twice
        cfg = store.data.config(p)
        if cfg is None:
            raise ValueError(f"project {p} has no label config")
        url = payload.image_url
        if payload.interactive or url is None:  # queued by /predict: its data is LS's, not theirs
            url = _task_of(rt, p, t).image_url(cfg.data_key)
        if url is None:
            raise ValueError(f"task {t} has no image URL under {cfg.data_key!r} in Label Studio")
        image = prefetch.download(rt, store, jobs, predict_job_id(p, t, v), t, url)
        found = inference.predict_task(rt, store, cfg, refs, t, image, later=True)
        try:
            pred = candidates.after_predict(rt, store, p, cfg, refs, image, found)  # issue 11
        finally:  # once, with discovery's region prompts (kept for a retry if it raised)
            if found.decoded is not None:
                decoded_masks.save(rt, store, found.sha, found.decoded, later=True)
        store.data.put_prediction(p, pred)
        store.progress.clear_failure(p, f"task:{t}")
    return delivery.deliver(rt, store, jobs, p, pred)  # the POST off this thread when enabled


def _task_of(rt: runtime.Runtime, p: int, t: int) -> LSTask:
    """Task `t` as Label Studio holds it, which must belong to project `p`.

    Raises:
        ValueError: the task is in another project. LabelStudioNotFound: no such task.
    """
    task = rt.ls.get_task(t, p)
    if task.project is not None and task.project != p:
        raise ValueError(f"task {t} is not in project {p}")
    return task


def deliver_prediction(raw: dict[str, Any]) -> str:
    """Post a stored prediction through the API unless LS already has it (deliver / verify)."""
    payload = DeliverJob.model_validate(raw)
    ctx = _context()
    rt, store = ctx.rt, ctx.store
    pred = store.data.get_prediction(payload.project, payload.task, payload.version)
    if pred is None:
        return "missing"
    return delivery.post_once(rt, store, payload.project, pred)


def apply_annotation(raw: dict[str, Any]) -> str | None:
    """Re-fit from one annotation's current state in LS (created or updated event); with a
    debounce window, the state joins the project's next debounced re-fit instead."""
    payload = AnnotationJob.model_validate(raw)
    ctx = _context()
    rt, store, jobs = ctx.rt, ctx.store, ctx.jobs
    p = payload.project
    if payload.fingerprint and store.data.annotation_fingerprint(p, payload.annotation) == (
        payload.fingerprint
    ):
        return None  # this state was applied already (e.g. by a sync)
    if rt.settings.refit_debounce_s > 0:  # a burst of corrections: one re-fit (debounce)
        return debounce.schedule_refit(rt, store, jobs, p, payload.annotation, payload.fingerprint)
    with _recorded(store, p, f"annotation:{payload.annotation}"):
        state = debounce.annotation_state(rt, store, p, payload.annotation, payload.task)
        return apply_changes(rt, store, jobs, p, [state])


def delete_annotations(raw: dict[str, Any]) -> str | None:
    """ANNOTATIONS_DELETED: the annotations stop being shots (one version bump at most)."""
    payload = DeleteJob.model_validate(raw)
    ctx = _context()
    rt, store, jobs = ctx.rt, ctx.store, ctx.jobs
    if store.data.config(payload.project) is None:
        return None  # a project we never registered: nothing to remove (not retried)
    with _recorded(store, payload.project, "delete"):
        # An event only says "look": an annotation LS still has is not deleted.
        gone = [a for a in payload.annotations if rt.ls.get_annotation(a) is None]
        states = [AnnotationState.deleted(a) for a in gone]
        return apply_changes(rt, store, jobs, payload.project, states) if states else None


def sync_project(raw: dict[str, Any]) -> str:
    """Reconcile with LS: apply annotations not seen (missed webhooks, a backend connected to an
    annotated project), drop shots whose annotation is gone, pre-annotate what is missing."""
    payload = SyncJob.model_validate(raw)
    ctx = _context()
    rt, store, jobs = ctx.rt, ctx.store, ctx.jobs
    p = payload.project
    with _recorded(store, p, "sync"):
        return _sync(rt, store, jobs, p)


def _sync(rt: runtime.Runtime, store: Store, jobs: Jobs, p: int) -> str:
    try:
        cfg, changed = refresh_config(rt.ls, store, p)
    except LabelStudioNotFound:
        return "unknown-project"  # LS does not confirm it: nothing registered, not retried
    if cfg is None:
        return "no-config"
    if changed:
        bump_version(rt, store, jobs, p)
    _version_floor(rt, store, p)
    tasks = rt.ls.list_tasks(p)
    states, present = [], set()
    for task in tasks:
        if task.total_annotations + task.cancelled_annotations:
            url = task.image_url(cfg.data_key)
            for ann in rt.ls.list_annotations(task.id):
                state = AnnotationState.from_ls(ann, url, task.id)
                present.add(state.annotation)
                if store.data.annotation_fingerprint(p, state.annotation) != state.fingerprint:
                    states.append(state)
    shot_ids = {a for ids in store.data.reference_set(p).shot_ids().values() for a in ids}
    states += [AnnotationState.deleted(a) for a in sorted(shot_ids - present)]
    version = apply_changes(rt, store, jobs, p, states, tasks) if states else None
    if version is None:
        refs = store.data.reference_set(p)
        if refs.ready:
            preannotate(rt, store, jobs, p, refs.version, tasks)
    store.data.mark_synced(p)
    return f"applied {len(states)} change(s); version {version or 'unchanged'}"


def apply_config_change(raw: dict[str, Any]) -> str | None:
    """The label config changed: same shots, new version, unlabeled tasks predicted again."""
    payload = SyncJob.model_validate(raw)
    ctx = _context()
    rt, store, jobs = ctx.rt, ctx.store, ctx.jobs
    try:
        _, changed = refresh_config(rt.ls, store, payload.project)
    except LabelStudioNotFound:
        return None  # not a project of this Label Studio
    return bump_version(rt, store, jobs, payload.project) if changed else None


def _version_floor(rt: runtime.Runtime, store: Store, p: int) -> None:
    """Never reuse a version LS already holds (this Redis was wiped or replaced): the counter
    moves past every `gfsam-p{p}-v{n}` in LS before any change is applied."""
    seen = project_versions(p, list(rt.ls.model_versions(p)))
    if seen and store.data.raise_version_floor(p, max(seen)):
        logger.warning(
            "project %s: Label Studio holds versions up to v%d; continuing after them", p, max(seen)
        )


# --------------------------------------------------------------------------- scale (issue 12)


def refit_project(raw: dict[str, Any]) -> str | None:
    """The debounced re-fit of a project (`worker.correction.debounce`)."""
    payload = SyncJob.model_validate(raw)
    ctx = _context()
    return debounce.refit_project(ctx.rt, ctx.store, ctx.jobs, payload.project)


def calibrate_project(raw: dict[str, Any]) -> str:
    """Measure a version on the project's annotations and tune it (`worker.quality`, issue 19)."""
    payload = CalibrateJob.model_validate(raw)
    ctx = _context()
    jobs = ctx.jobs

    def busy() -> bool:  # a prediction waits: let the worker take it
        return jobs.high.count > 0 or jobs.batch.count > 0

    with _recorded(ctx.store, payload.project, "calibrate"):
        done = measure.calibrate_project(ctx.rt, ctx.store, payload.project, payload.version, busy)
    if done == measure.STOPPED:  # again once the predictions are served (calibrate queue: last)
        nxt = payload.model_copy(update={"attempt": payload.attempt + 1})
        if jobs.enqueue_calibrate(nxt) is None:
            logger.warning(
                "project %s: %s not queued again (attempt %d)",
                payload.project,
                payload.version,
                nxt.attempt,
            )
    return done


def feed_predictions(raw: dict[str, Any]) -> str:
    """One chunk of a version's pre-annotation feed (`worker.correction.debounce`)."""
    payload = FeedJob.model_validate(raw)
    ctx = _context()
    return debounce.feed_predictions(ctx.rt, ctx.store, ctx.jobs, payload)


# --------------------------------------------------------------------------- clicks (issue 9)


def click(raw: dict[str, Any]) -> dict[str, Any]:
    """One smart-tool click (`worker.clicks.click`); the answer is the job's return value."""
    payload = ClickJob.model_validate(raw)
    ctx = _context()
    return clicks.click(ctx.rt, ctx.store, ctx.jobs, payload)


def warm_target(raw: dict[str, Any]) -> str:
    """Encode a task opened in the editor so that its first click is fast."""
    payload = WarmJob.model_validate(raw)
    ctx = _context()
    return clicks.warm_target(ctx.rt, ctx.store, payload)


# --------------------------------------------------------------------------- discovery (issue 11)


def promote_group(raw: dict[str, Any]) -> str:
    """Turn a candidate group into a new label (`worker.discovery.promote`)."""
    payload = PromoteJob.model_validate(raw)
    ctx = _context()
    return promote.promote(ctx.rt, ctx.store, ctx.jobs, payload)


def teach_shot(raw: dict[str, Any]) -> str | None:
    """The object a "teach" gesture clicked becomes a reference of its label (`worker.clicks
    .teach`): a new version, and the project is pre-annotated again."""
    payload = TeachJob.model_validate(raw)
    ctx = _context()
    return teach.teach(ctx.rt, ctx.store, ctx.jobs, payload)
