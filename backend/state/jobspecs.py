"""Every RQ job, declared once: entry point, id template, queue, timeout, result TTL, retries and
payload schema (docs/architecture.md §3 has the same table; `tests/test_architecture.py` checks
both ways). The enqueue API (`backend.state.jobs`) reads its specs from here; every entry point
is a function of `worker.tasks`, enqueued by dotted path so the HTTP side never imports `worker`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel

from backend.state import prompts, schemas
from backend.state.settings import Settings

QueueName = Literal["high", "batch", "background", "interactive", "calibrate"]

# A delivery is one LS check and one POST: two LS timeouts with room to spare.
DELIVER_JOB_TIMEOUT_S = 120
KEEP_NO_RESULT = 0  # result_ttl of jobs that must not collapse with a finished run
CLICK_RESULT_TTL_S = 60  # a click's answer is read by its /predict within its deadline


@dataclass(frozen=True)
class JobSpec:
    """One kind of job.

    Attributes:
        func: dotted path of its entry point (`worker.tasks.<name>`).
        id_template: its RQ job id (RQ allows [A-Za-z0-9_-]); ``a | b`` lists two forms.
        queue: the queue it goes to by default (`Jobs` may pick high for a /predict).
        timeout: seconds, or the name of the `Settings` field that holds them.
        result_ttl: seconds to keep a finished job (and so collapse a repeat on its id); None:
            `Settings.result_ttl_s`.
        failure_ttl: seconds to keep a failed one; None: `Settings.failure_ttl_s`.
        retry: transient failures are retried (`Settings.retry_max`, `retry_intervals_s`).
        payload: the schema of its one argument (validated by the worker, dumped as JSON).
    """

    func: str
    id_template: str
    queue: QueueName
    timeout: int | str
    result_ttl: int | None
    failure_ttl: int | None
    retry: bool
    payload: type[BaseModel]

    def timeout_s(self, settings: Settings) -> int:
        value = self.timeout if isinstance(self.timeout, int) else getattr(settings, self.timeout)
        return int(value)


def _spec(
    name: str,
    id_template: str,
    queue: QueueName,
    timeout: int | str,
    payload: type[BaseModel],
    *,
    result_ttl: int | None = None,
    failure_ttl: int | None = None,
    retry: bool = True,
) -> JobSpec:
    func = f"worker.tasks.{name}"
    return JobSpec(func, id_template, queue, timeout, result_ttl, failure_ttl, retry, payload)


JOBS: dict[str, JobSpec] = {
    "predict": _spec(
        "predict_task", "predict-{p}-{t}-{n}", "batch", "predict_job_timeout_s", schemas.PredictJob
    ),
    "annotation": _spec(
        "apply_annotation", "ann-{p}-{a}-{h}", "batch", "refit_job_timeout_s", schemas.AnnotationJob
    ),
    "delete": _spec(
        "delete_annotations", "del-{p}-{h}", "batch", "refit_job_timeout_s", schemas.DeleteJob
    ),
    "sync": _spec(
        "sync_project",
        "sync-{p}",
        "batch",
        "sync_job_timeout_s",
        schemas.SyncJob,
        result_ttl=KEEP_NO_RESULT,
    ),
    "config": _spec(
        "apply_config_change", "cfg-{p}-{n}-{h}", "batch", "sync_job_timeout_s", schemas.SyncJob
    ),
    "deliver": _spec(
        "deliver_prediction",
        "deliver-{p}-{t}-{n} | verify-{p}-{t}-{n}",
        "high",
        DELIVER_JOB_TIMEOUT_S,
        schemas.DeliverJob,
        result_ttl=KEEP_NO_RESULT,
    ),
    "refit": _spec(
        "refit_project", "refit-{p}-{w}", "batch", "refit_job_timeout_s", schemas.SyncJob
    ),
    "feed": _spec(
        "feed_predictions", "feed-{p}-{n}-{k}", "background", "sync_job_timeout_s", schemas.FeedJob
    ),
    "calibrate": _spec(
        "calibrate_project",
        "calibrate-{p}-{n} | calibrate-{p}-{n}-{attempt}",
        "calibrate",
        "sync_job_timeout_s",
        schemas.CalibrateJob,
    ),
    "click": _spec(
        "click",
        "click-{p}-{t}-{r}",
        "interactive",
        "interactive_job_timeout_s",
        prompts.ClickJob,
        result_ttl=CLICK_RESULT_TTL_S,
        failure_ttl=CLICK_RESULT_TTL_S,
        retry=False,
    ),
    "warm": _spec(
        "warm_target",
        "warm-{p}-{t}",
        "interactive",
        "predict_job_timeout_s",
        prompts.WarmJob,
        result_ttl=KEEP_NO_RESULT,
    ),
    "teach": _spec(
        "teach_shot", "teach-{p}-{t}-{h}", "batch", "refit_job_timeout_s", prompts.TeachJob
    ),
    "promote": _spec(
        "promote_group",
        "promote-{p}-{g}-{h}",
        "batch",
        "sync_job_timeout_s",
        schemas.PromoteJob,
        result_ttl=KEEP_NO_RESULT,
    ),
}

# Entry point -> id template (docs/architecture.md §3's table, checked by the architecture test).
JOB_IDS: dict[str, str] = {spec.func: spec.id_template for spec in JOBS.values()}
