"""Pydantic models: Label Studio requests/responses, job payloads and stored state.

Label Studio sends many more fields than we read (protocol doc §1.3, §1.4, §3); unknown fields are
ignored (`extra="ignore"`), never indexed blindly. Job payloads are plain JSON (ids and URLs).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator


class LSModel(BaseModel):
    """Base of every model read from Label Studio: unknown fields are dropped."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


def project_id_of(project: str | int) -> int:
    """LS sends `project` as "<id>.<created_at timestamp>" in /setup and /predict (§1.3)."""
    head = str(project).split(".", 1)[0].strip()
    if not head.isdigit():
        raise ValueError(f"project must look like '<id>.<timestamp>', got {str(project)[:40]!r}")
    return int(head)


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
    id: int
    data: dict[str, Any] = {}
    project: int | None = None


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
    id: int


class WebhookProject(LSModel):
    id: int
    label_config: str | None = None


class WebhookTask(LSModel):
    id: int
    data: dict[str, Any] = {}


class WebhookAnnotation(LSModel):
    id: int
    task: int | None = None
    project: int | None = None
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


# --- stored state (backend/store.py) -----------------------------------------------------------


class LabelConfigSummary(BaseModel):
    """The BrushLabels/Image pair we predict for, found in a project's label config."""

    from_name: str
    to_name: str
    data_key: str  # task.data key of the image (the `$image` of <Image value="$image">)
    labels: list[str] = Field(min_length=1)


class Shot(BaseModel):
    """One reference of one label: a human brush mask, encoded and stored by content hash."""

    annotation: int
    task: int
    label: str
    ref: str  # sha256 hex of Reference.to_bytes(), key of the blob in the store
    fingerprint: str  # the annotation's updated_at when it was encoded
    seq: int  # arrival order within the project
    mask: str  # digest of the boolean mask (an unchanged brush is not re-encoded)


class ReferenceSet(BaseModel):
    """A project's current references and the model version they define."""

    project: int
    n: int = 0
    shots: dict[str, list[Shot]] = {}

    @property
    def version(self) -> str:
        return model_version(self.project, self.n)

    @property
    def ready(self) -> bool:
        return any(self.shots.values())

    def ready_for(self, labels: list[str]) -> bool:
        """True when some label of the current config has a shot (removed labels keep theirs,
        unused, in case they come back)."""
        return any(self.shots.get(label) for label in labels)

    def shot_ids(self) -> dict[str, list[int]]:
        return {label: [s.annotation for s in shots] for label, shots in self.shots.items()}


def model_version(project: int, n: int) -> str:
    return f"gfsam-p{project}-v{n}"


class StoredPrediction(BaseModel):
    """A computed prediction (what /predict returns inline or the worker POSTs)."""

    task: int
    result: list[dict[str, Any]]
    score: float
    model_version: str


class AcceptanceSample(BaseModel):
    annotation: int
    task: int
    model_version: str
    iou: dict[str, float]


class ProjectCounts(BaseModel):
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    stale: int = 0


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


# --- job payloads (worker/tasks.py) ------------------------------------------------------------


class PredictJob(BaseModel):
    project: int
    task: int
    version: str
    image_url: str
    interactive: bool = False  # queued by /predict (high queue) rather than by pre-annotation


class AnnotationJob(BaseModel):
    project: int
    annotation: int
    task: int
    image_url: str | None = None
    fingerprint: str = ""


class DeleteJob(BaseModel):
    project: int
    annotations: list[int] = Field(min_length=1)


class SyncJob(BaseModel):
    project: int


class DeliverJob(BaseModel):
    project: int
    task: int
    version: str
