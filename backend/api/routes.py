"""HTTP endpoints: the Label Studio ML-backend protocol plus progress and metrics.

Handlers are plain `def` (Redis and RQ are synchronous; FastAPI runs them in its thread pool),
parse with `schemas.py`, call `jobs.py`/`store.py`, and shape the reply. /health, /setup and
/webhook touch Redis only: no model work, no media I/O.

Trust (issue 7): a request body never becomes state that is written to Label Studio. A label
config in /setup, /predict or an event is parsed only to answer the caller; it queues a job that
reads the project's config from LS. /predict queues tasks by id; the worker reads their data and
project from LS. Events only queue work.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Any

from fastapi import APIRouter, Body, HTTPException, Path, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from backend.api import inline
from backend.api import interactive as clicks
from backend.api.deps import BasicAuth, JobsDep, SettingsDep, StoreDep, WebhookAuth
from backend.api.protocol import (
    ERROR_RESPONSES,
    MAX_ID,
    AnnotationEventBody,
    DeletedEventBody,
    HealthResponse,
    OtherEventBody,
    PredictItem,
    PredictRequest,
    PredictResponse,
    ProjectQuality,
    ProjectStatus,
    SetupRequest,
    SetupResponse,
    VersionsResponse,
    WebhookBody,
    WebhookResponse,
)
from backend.state.jobs import Jobs
from backend.state.labelconfig import LabelConfigError, config_digest, parse_label_config
from backend.state.schemas import AnnotationJob, DeleteJob
from backend.state.store import Store

logger = logging.getLogger(__name__)
router = APIRouter(responses=ERROR_RESPONSES)
MAX_FAILURES_SHOWN = 100  # /projects/{id} lists this many failure reasons, then a count

SYNC_ACTIONS = ("START_TRAINING", "TASKS_CREATED", "ANNOTATIONS_CREATED")


def register_config(store: Store, jobs: Jobs, p: int, config: str | None) -> None:
    """A caller's label config is a hint, never state: until a sync with LS has completed for
    the project (a new project, or LS was unreachable), queue one; a config other than the one
    stored queues a config check. Both jobs read the project's config from Label Studio (the
    project is registered once LS confirms it); a material change gets a new model version.

    Raises:
        LabelConfigError: no usable BrushLabels/Image pair (-> HTTP 400 with the reason).
    """
    digest = config_digest(config) if config else None
    if digest is not None and store.data.config_digest(p) != digest:
        parse_label_config(config or "")  # the caller hears why its config is unusable
    if not store.data.synced(p):
        if jobs.enqueue_sync(p):
            logger.info("project %s not synced with Label Studio yet: sync queued", p)
    elif digest is not None and store.data.config_digest(p) != digest:
        jobs.enqueue_config_change(p, digest, store.data.reference_set(p).n)


@router.get("/health", response_model=HealthResponse, dependencies=[BasicAuth])
def health(settings: SettingsDep, store: StoreDep) -> HealthResponse:
    """Liveness for LS (1 s budget): one Redis PING, no model work."""
    return HealthResponse(
        model_class=settings.model_class, random_weights=settings.random_weights, redis=store.ping()
    )


@router.post("/setup", response_model=SetupResponse, dependencies=[BasicAuth])
def setup(body: SetupRequest, store: StoreDep, jobs: JobsDep) -> SetupResponse:
    """Check the label config, remember the project, return its current model version."""
    register_config(store, jobs, body.project_id, body.label_config)
    return SetupResponse(model_version=store.data.current_version(body.project_id))


@router.post(
    "/predict",
    response_model=PredictResponse,
    response_model_exclude_none=True,
    dependencies=[BasicAuth],
)
def predict(
    body: PredictRequest, request: Request, settings: SettingsDep, store: StoreDep, jobs: JobsDep
) -> PredictResponse:
    """One item per task, in order; results inline when ready before the deadline."""
    deadline = time.monotonic() + settings.predict_deadline_s
    p = _project(body)
    if body.label_config:
        register_config(store, jobs, p, body.label_config)
    if clicks.is_click(body):  # smart tools (issue 9): answered on the interactive lane
        return clicks.answer(body, p, settings, store, jobs, request.app.state.click_waiters)
    refs, cfg = store.data.reference_set(p), store.data.config(p)
    preds: list[Any] = [None] * len(body.tasks)
    interactive = bool(body.params and body.params.context)
    if (
        cfg is not None and refs.ready_for(cfg.labels) and not interactive
    ):  # interactive results are not stored
        tasks = [t.id for t in body.tasks]  # their data and project are read from LS
        waiters = request.app.state.predict_waiters
        if request.app.state.predict_wait_allowed and waiters.acquire(blocking=False):
            try:
                preds = inline.predict_and_wait(store, jobs, p, refs.version, tasks, deadline)
            finally:
                waiters.release()
        else:  # too many waiting: queue, answer now; results are posted through the LS API
            preds = inline.predict_and_wait(store, jobs, p, refs.version, tasks, time.monotonic())
    elif not interactive:  # nothing to predict yet: warm the embedding for the first click
        clicks.warm(store, jobs, p, body)
    version = store.data.current_version(p)
    return PredictResponse(
        results=[
            PredictItem(result=x.result, score=x.score, model_version=version)
            if x is not None and x.model_version == version
            else PredictItem(model_version=version)
            for x in preds
        ]
    )


def _project(body: PredictRequest) -> int:
    return body.resolve_project()  # `project` is validated by the request model


@router.post("/webhook", response_model=WebhookResponse, dependencies=[WebhookAuth])
def webhook(
    store: StoreDep, jobs: JobsDep, body: Annotated[WebhookBody, Body()]
) -> WebhookResponse:
    """Validate, deduplicate and queue an LS event; answers at once (1 s LS timeout)."""
    if isinstance(body, AnnotationEventBody):
        queued = _annotation_event(store, jobs, body)
    elif isinstance(body, DeletedEventBody):
        queued = _deleted_event(body, jobs)
    elif body.action in SYNC_ACTIONS and body.project is not None:
        _register_from_event(store, jobs, body)
        queued = [jobs.enqueue_sync(body.project.id)]
    else:
        return WebhookResponse(status="ignored")
    return WebhookResponse(status="ok", queued=[q for q in queued if q])


def _register_from_event(
    store: Store, jobs: Jobs, event: AnnotationEventBody | OtherEventBody
) -> None:
    """An event's config says that the config may have changed: queue a sync or a config check
    (they read it from LS). A first event may precede any /setup."""
    if event.project is not None and event.project.label_config:
        try:
            register_config(store, jobs, event.project.id, event.project.label_config)
        except LabelConfigError:  # not a brush project: nothing of ours to do
            logger.info("project %s: config without BrushLabels/Image", event.project.id)


def _deleted_event(event: DeletedEventBody, jobs: Jobs) -> list[str | None]:
    ids = [a.id for a in event.annotations]
    return [jobs.enqueue_delete(DeleteJob(project=event.project.id, annotations=ids))]


def _annotation_event(store: Store, jobs: Jobs, event: AnnotationEventBody) -> list[str | None]:
    p = event.project.id
    _register_from_event(store, jobs, event)
    if store.data.config(p) is None:  # unknown project: a sync (LS confirms it) sorts it out
        return [jobs.enqueue_sync(p)]
    # Only ids and the fingerprint (dedup) come from the event; the worker reads the annotation,
    # its task and image from LS (and marks the task labeled from LS's answer).
    job = AnnotationJob(
        project=p,
        annotation=event.annotation.id,
        task=event.task.id,
        fingerprint=(event.annotation.updated_at or event.action)[:64],
    )
    return [jobs.enqueue_annotation(job)]


@router.get("/versions", response_model=VersionsResponse, dependencies=[BasicAuth])
def versions(store: StoreDep) -> VersionsResponse:
    """Current model version of every known project (LS sends no project with this GET)."""
    return VersionsResponse(versions=[store.data.current_version(p) for p in store.data.projects()])


@router.get("/projects/{project}", response_model=ProjectStatus, dependencies=[BasicAuth])
def project_status(
    project: Annotated[int, Path(ge=1, le=MAX_ID)], store: StoreDep
) -> ProjectStatus:
    """Version, shots per label, job counts, acceptance IoU and failures of one project."""
    if store.data.config(project) is None:
        raise HTTPException(404, f"project {project} is unknown (no /setup or event seen)")
    refs, hist = store.data.reference_set(project), store.progress.acceptance_histogram(project)
    count = hist.get("count", 0.0)
    return ProjectStatus(
        project=project,
        model_version=refs.version,
        ready=refs.ready,
        config=store.data.config(project),
        shots=refs.shot_ids(),
        counts=store.progress.counts(project),
        acceptance_mean_iou=hist["sum"] / count if count else None,
        acceptance=store.progress.acceptance_samples(project),
        failures=dict(list(store.progress.failures(project).items())[:MAX_FAILURES_SHOWN]),
        rejects=store.progress.rejects(project),
    )


@router.get("/projects/{project}/quality", response_model=ProjectQuality, dependencies=[BasicAuth])
def project_quality(
    project: Annotated[int, Path(ge=1, le=MAX_ID)], store: StoreDep
) -> ProjectQuality:
    """How good the predictions are on this project's own annotations, per version and label
    (held out: a task is never scored with its own shots), and the tuning in use (issue 19)."""
    if store.data.config(project) is None:
        raise HTTPException(404, f"project {project} is unknown (no /setup or event seen)")
    return ProjectQuality(
        project=project,
        model_version=store.data.reference_set(project).version,
        versions=store.quality.reports(project),
        tuning=store.quality.tuning(project),
    )


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
def metrics(request: Request) -> Response:
    """Prometheus text: per-project progress and versions, acceptance IoU, cache counters."""
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE_LATEST)
