"""/predict's interactive side: a smart-tool click answered synchronously, nothing stored.

Label Studio sends one task with `params.context` (docs/labelstudio-protocol.md §2, §4.5). The
prompts are checked here (bad input: HTTP 422 with the reason, which LS hands to the browser as
`{"errors": [...]}`), queued on the interactive lane (`worker.tasks.click`, front of the
queue) and awaited up to `interactive_deadline_s` (LS gives up at 100 s), blocked on the job's
result (a notification from Redis, no polling). At most `interactive_max_waiters` clicks wait at
once; more answer 503 at once, nothing queued (issue 22). A click carries its deadline: past it,
the worker and recovery never run it. The answer is one
`brushlabels` region of the clicked label with the current model version; LS shows it as a
suggestion and stores no prediction. A task opened in the editor without references to predict
with gets its embedding warmed on the same lane (`warm`), so its first click is fast.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from fastapi import HTTPException

from backend.api.protocol import PredictItem, PredictRequest, PredictResponse
from backend.state.jobs import Jobs
from backend.state.labelconfig import LabelConfigError, parse_label_config
from backend.state.prompts import (
    ClickJob,
    PromptError,
    WarmJob,
    check_usable,
    is_prompt_context,
    parse_context,
)
from backend.state.schemas import LabelConfigSummary
from backend.state.settings import Settings
from backend.state.store import Store

logger = logging.getLogger(__name__)
UNPROCESSABLE = 422


def answer(
    body: PredictRequest,
    p: int,
    settings: Settings,
    store: Store,
    jobs: Jobs,
    waiters: threading.BoundedSemaphore,
) -> PredictResponse:
    """Answer one click (one task) with the clicked label's regions in its own control.

    Args:
        waiters: the clicks allowed to wait at once (`interactive_max_waiters` slots).

    Raises:
        HTTPException: 422 for unusable prompts, config or task image; 503 when
            `interactive_max_waiters` clicks wait already, or when no interactive worker
            answered within `interactive_deadline_s`.
    """
    cfg = _config(body, p, store)
    if len(body.tasks) != 1:
        raise HTTPException(UNPROCESSABLE, "an interactive call carries exactly one task")
    task = body.tasks[0].id
    context = body.params.context if body.params else None
    version = store.data.current_version(p)
    try:
        prompts = parse_context(
            context or {},
            cfg,
            max_points=settings.click_max_points,
            max_boxes=settings.click_max_boxes,
            find_all_suffix=settings.find_all_suffix,
            teach_suffix=settings.teach_suffix,
        )
        has = _has_prediction(store, cfg, p, task, version, prompts.label)
        refining = prompts.gesture == "click" and has
        check_usable(prompts, refining or prompts.gesture != "click")
    except PromptError as exc:
        raise HTTPException(UNPROCESSABLE, str(exc)) from None
    if not waiters.acquire(blocking=False):
        raise HTTPException(
            503,
            f"{settings.interactive_max_waiters} clicks are waiting for the interactive worker "
            "already (INTERACTIVE_MAX_WAITERS): try again in a moment",
        )
    try:
        job = ClickJob(
            project=p,
            task=task,
            version=version,
            from_name=cfg.from_name,
            to_name=cfg.to_name,
            data_key=cfg.data_key,
            prompts=prompts,
            deadline=time.time() + settings.interactive_deadline_s,
        )
        deadline = time.monotonic() + settings.interactive_deadline_s
        value = _wait(jobs, jobs.enqueue_click(job), deadline)
    finally:
        waiters.release()
    if "error" in value:
        raise HTTPException(UNPROCESSABLE, str(value["error"]))
    return PredictResponse(
        results=[
            PredictItem(
                result=value["result"], score=value["score"], model_version=value["model_version"]
            )
        ]
    )


def is_click(body: PredictRequest) -> bool:
    """A /predict call carrying smart-tool regions in `params.context`."""
    return is_prompt_context(body.params.context if body.params else None)


def warm(store: Store, jobs: Jobs, p: int, body: PredictRequest) -> None:
    """A task opened in the editor (one task, no references to predict with yet): encode its
    image on the interactive lane so the first click only runs the decoder."""
    cfg = store.data.config(p)
    if cfg is not None and len(body.tasks) == 1:
        jobs.enqueue_warm(WarmJob(project=p, task=body.tasks[0].id, data_key=cfg.data_key))


def _config(body: PredictRequest, p: int, store: Store) -> LabelConfigSummary:
    """The stored config, or (a project not synced yet: the first minute) the caller's, parsed
    only to shape this answer."""
    cfg = store.data.config(p)
    if cfg is not None:
        return cfg
    try:
        return parse_label_config(body.label_config or "")
    except LabelConfigError as exc:
        raise HTTPException(UNPROCESSABLE, str(exc)) from None


def _has_prediction(
    store: Store, cfg: LabelConfigSummary, p: int, task: int, version: str, label: str
) -> bool:
    pred = store.data.get_prediction(p, task, version)
    kind = cfg.control_of(label).result_type
    return pred is not None and any(
        label in ((r.get("value") or {}).get(kind) or []) for r in pred.result
    )


def _wait(jobs: Jobs, job_id: str, deadline: float) -> dict[str, Any]:
    status, value = jobs.await_click(job_id, deadline)
    if status == "finished" and isinstance(value, dict):
        return value
    if status != "waiting":
        logger.warning("click %s ended %s", job_id, status)
        raise HTTPException(503, f"the click job {status}: see the interactive worker's log")
    jobs.cancel_click(job_id)
    raise HTTPException(
        503,
        f"no interactive worker answered within {jobs.settings.interactive_deadline_s:.0f} s "
        "(is `python -m worker.main --interactive` running?)",
    )
