"""Wire models of Label Studio's calls to the backend (/setup, /predict, /webhook) and of our
HTTP replies (docs/labelstudio-protocol.md §1.3, §1.4, §3).

Label Studio sends many more fields than we read; unknown fields are ignored
(`extra="ignore"`), never indexed blindly.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from backend.state.schemas import AcceptanceSample, LabelConfigSummary, ProjectCounts


class LSModel(BaseModel):
    """Base of every model read from Label Studio: unknown fields are dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# LS ids are positive database integers; anything larger is refused, not stored (issue 7).
MAX_ID = 2**31 - 1
Id = Annotated[int, Field(ge=1, le=MAX_ID)]


def project_id_of(project: str | int) -> int:
    """LS sends `project` as "<id>.<created_at timestamp>" in /setup and /predict (§1.3).

    Raises:
        ValueError: not ASCII digits (optionally followed by '.' and a timestamp), or an id
            outside 1..MAX_ID.
    """
    head, _, tail = str(project).strip().partition(".")
    ok = head.isascii() and head.isdigit() and len(head) <= 10 and 1 <= int(head) <= MAX_ID
    if not ok or (tail and not (tail.isascii() and tail.replace(".", "").isdigit())):
        raise ValueError(f"project must look like '<id>.<timestamp>', got {str(project)[:40]!r}")
    return int(head)


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
    project: str
    label_config: str = Field(alias="schema", min_length=1)
    hostname: str | None = None
    access_token: SecretStr | None = None
    extra_params: Any = None  # free-form JSON typed by the user in LS; unused

    @field_validator("project", mode="before")
    @classmethod
    def _project(cls, value: object) -> str:
        project_id_of(str(value))
        return str(value)

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
    project: str | None = None
    label_config: str | None = None
    params: PredictParams | None = None

    def resolve_project(self) -> int:
        """The project id, from `project` or, failing that, the tasks' own `project` field."""
        if self.project is not None:
            return project_id_of(self.project)
        ids = {t.project for t in self.tasks if t.project is not None}
        if len(ids) != 1:
            raise ValueError("request names no project: send 'project' or tasks[].project")
        return ids.pop()


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


class WebhookEvent(LSModel):
    """Common envelope; `routes` parses per-action fields only where the action needs them."""

    action: str = Field(min_length=1)
    project: WebhookProject | None = None


class AnnotationEvent(WebhookEvent):
    """ANNOTATION_CREATED / ANNOTATION_UPDATED (§3)."""

    annotation: WebhookAnnotation
    task: WebhookTask


class AnnotationsDeletedEvent(WebhookEvent):
    """ANNOTATIONS_DELETED carries ids only (§3)."""

    annotations: list[IdRef] = Field(min_length=1)


class WebhookResponse(BaseModel):
    # Never a "job" key: LS would record an MLBackendTrainJob for it (§1.2).
    status: Literal["ok", "ignored"]
    queued: list[str] = []


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
