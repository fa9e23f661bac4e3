"""Wire models of Label Studio's calls to the backend (/setup, /predict, /webhook) and of our
HTTP replies (docs/labelstudio-protocol.md §1.3, §1.4, §3).

Label Studio sends many more fields than we read; unknown fields are ignored
(`extra="ignore"`), never indexed blindly.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from backend.state.schemas import (
    AcceptanceSample,
    LabelConfigSummary,
    ProjectCounts,
    QualityReport,
    Tuning,
    VersionRejects,
)


class LSModel(BaseModel):
    """Base of every model read from Label Studio: unknown fields are dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# LS ids are positive database integers; anything larger is refused, not stored (issue 7).
MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


# "<id>.<timestamp>" with id in 1..MAX_ID (2147483647) and no leading zero: the OpenAPI schema
# states exactly what `project_id_of` accepts (issue 22).
_ID_1_TO_MAX = (
    r"(?:[1-9][0-9]{0,8}|1[0-9]{9}|20[0-9]{8}|21[0-3][0-9]{7}|214[0-6][0-9]{6}"
    r"|2147[0-3][0-9]{5}|21474[0-7][0-9]{4}|214748[0-2][0-9]{3}|2147483[0-5][0-9]{2}"
    r"|21474836[0-3][0-9]|214748364[0-7])"
)
PROJECT_PATTERN = rf"^{_ID_1_TO_MAX}(?:\.[0-9]+)*\.?$"
_PROJECT = re.compile(PROJECT_PATTERN)


def project_id_of(project: str | int) -> int:
    """LS sends `project` as "<id>.<created_at timestamp>" in /setup and /predict (§1.3).

    Raises:
        ValueError: not `PROJECT_PATTERN` (an id in 1..MAX_ID, optionally followed by '.' and a
            timestamp).
    """
    text = str(project)
    if not _PROJECT.fullmatch(text):
        raise ValueError(f"project must look like '<id>.<timestamp>', got {text[:40]!r}")
    return int(text.partition(".")[0])


class ErrorResponse(BaseModel):
    """Every error reply: 400, 401, 404, 413, 422 and 503 carry one message string."""

    detail: str


# Error replies every route may give, documented in the OpenAPI schema (one shape: `detail`).
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": what}
    for code, what in (
        (400, "invalid input (label config, project, label)"),
        (401, "missing or wrong credentials"),
        (404, "unknown project or object"),
        (409, "conflicts with the current state (e.g. the label exists)"),
        (413, "request body over MAX_BODY_BYTES"),
        (422, "request does not match the schema"),
        (503, "backend store (Redis) unavailable"),
    )
}


# --- /health, /setup, /versions ----------------------------------------------------------------


class HealthResponse(BaseModel):
    status: Literal["UP"] = "UP"
    model_class: str
    random_weights: bool
    redis: bool


class SetupRequest(LSModel):
    project: str = Field(pattern=PROJECT_PATTERN)
    label_config: str = Field(alias="schema", min_length=1)
    hostname: str | None = None
    access_token: SecretStr | None = None
    extra_params: Any = None  # free-form JSON typed by the user in LS; unused

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def project_id(self) -> int:
        return project_id_of(self.project)


class SetupResponse(BaseModel):
    model_version: str


class VersionsResponse(BaseModel):
    versions: list[str]


# --- /predict ----------------------------------------------------------------------------------


class PredictTask(LSModel):
    id: Id
    data: dict[str, Any] = {}  # answered from LS's copy of the task, never from this one
    project: Id | None = None


class PredictParams(LSModel):
    context: dict[str, Any] | None = None


class PredictRequest(LSModel):
    tasks: list[PredictTask] = Field(min_length=1)
    project: str = Field(pattern=PROJECT_PATTERN)  # LS always sends it (§1.3)
    label_config: str | None = None
    params: PredictParams | None = None

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: object) -> object:
        return str(value) if isinstance(value, int) and not isinstance(value, bool) else value

    def resolve_project(self) -> int:
        """The project id."""
        return project_id_of(self.project)


class PredictItem(BaseModel):
    """One per task. Without `result`, LS skips the item and stores nothing (§1.4)."""

    result: list[dict[str, Any]] | None = None
    score: float | None = None
    model_version: str


class PredictResponse(BaseModel):
    results: list[PredictItem]


# --- /webhook ----------------------------------------------------------------------------------


class IdRef(LSModel):
    id: Id


class WebhookProject(LSModel):
    id: Id
    label_config: str | None = None  # a hint that it changed; the worker reads it from LS


class WebhookTask(LSModel):
    id: Id
    data: dict[str, Any] = {}  # unused: the worker reads the task from LS


class WebhookAnnotation(LSModel):
    id: Id
    task: Id | None = None
    project: Id | None = None
    updated_at: str | None = None
    was_cancelled: bool = False


# The webhook's body as the OpenAPI schema states it (issue 22): the two annotation events and
# ANNOTATIONS_DELETED with what we read of them, any other action with nothing required. The
# route dispatches on the model the body validated as (LS sends many more fields: ignored).
ANNOTATION_ACTIONS = ("ANNOTATION_CREATED", "ANNOTATION_UPDATED")
DELETED_ACTION = "ANNOTATIONS_DELETED"


class AnnotationEventBody(LSModel):
    """ANNOTATION_CREATED / ANNOTATION_UPDATED (§3)."""

    action: Literal["ANNOTATION_CREATED", "ANNOTATION_UPDATED"]
    project: WebhookProject
    annotation: WebhookAnnotation
    task: WebhookTask


class DeletedEventBody(LSModel):
    """ANNOTATIONS_DELETED carries ids only (§3)."""

    action: Literal["ANNOTATIONS_DELETED"]
    project: WebhookProject
    annotations: list[IdRef] = Field(min_length=1)


class OtherEventBody(LSModel):
    """Any other action (START_TRAINING, PROJECT_UPDATED, ...): queues a sync or is ignored."""

    action: str = Field(
        min_length=1, json_schema_extra={"not": {"enum": [*ANNOTATION_ACTIONS, DELETED_ACTION]}}
    )
    project: WebhookProject | None = None

    @field_validator("action")
    @classmethod
    def _other(cls, value: str) -> str:
        if value in (*ANNOTATION_ACTIONS, DELETED_ACTION):
            raise ValueError(f"{value} needs its own fields (see the schema)")
        return value


WebhookBody = AnnotationEventBody | DeletedEventBody | OtherEventBody


class WebhookResponse(BaseModel):
    # Never a "job" key: LS would record an MLBackendTrainJob for it (§1.2).
    status: Literal["ok", "ignored"]
    queued: list[str] = []


class ProjectQuality(BaseModel):
    """`GET /projects/{id}/quality` (issue 19): each measured version's report, oldest first,
    and the tuning predictions apply now. Per report and label: ``default`` (n, IoU,
    precision, recall, false paint at the default thresholds, each task predicted without its
    own shots), ``tuned`` (each task at the offsets or modes chosen on the other tasks),
    ``choices`` (offset, mode, how: tuned | default | too-few | unconfirmed | unchecked, the
    evidence),
    ``previous`` (the version measured before, predicted again on the same tasks with the same
    leave-one-out at its defaults: compare with ``default`` to see whether the last correction
    helped)."""

    project: int
    model_version: str
    versions: list[QualityReport]
    tuning: Tuning | None


class ProjectStatus(BaseModel):
    project: int
    model_version: str
    ready: bool
    config: LabelConfigSummary | None
    shots: dict[str, list[int]]
    counts: ProjectCounts
    acceptance_mean_iou: float | None
    acceptance: list[AcceptanceSample]
    failures: dict[str, str]
    # per label, what the assignment's reject removed at the last versions (newest first)
    rejects: list[VersionRejects] = []
