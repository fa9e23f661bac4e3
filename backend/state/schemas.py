"""Data models shared by the service and the workers: stored state and job payloads.

Job payloads are plain JSON (ids and URLs, never pixels); stored models are what
`backend.state.store` keeps in Redis (docs/architecture.md §2, §3).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, model_validator

from backend.state.versions import model_version

ControlKind = Literal["brush", "polygon", "rectangle"]
CONTROL_TAGS: dict[str, ControlKind] = {
    "BrushLabels": "brush",
    "PolygonLabels": "polygon",
    "RectangleLabels": "rectangle",
}
RESULT_TYPES: dict[ControlKind, str] = {
    "brush": "brushlabels",
    "polygon": "polygonlabels",
    "rectangle": "rectanglelabels",
}


class OutputControl(BaseModel):
    """One labeling control we read shots from and predict into."""

    name: str  # the control's name (a result region's `from_name`)
    kind: ControlKind
    labels: list[str] = Field(min_length=1)

    @property
    def result_type(self) -> str:
        """The `type` of its result regions (`brushlabels`, `polygonlabels`...)."""
        return RESULT_TYPES[self.kind]


class LabelConfigSummary(BaseModel):
    """The controls on one Image we predict for, found in a project's label config.

    `controls`: every BrushLabels, PolygonLabels and RectangleLabels control on the Image (a
    smart RectangleLabels beside a brush or polygon control is a prompt tool, not an output).
    `labels`: every label, in config order; a label in several controls belongs to the first.
    `from_name`: the first control's name (kept for summaries stored before `controls`).
    `box_prompts`: smart RectangleLabels controls (prompt tools) on the same Image.
    """

    from_name: str
    to_name: str
    data_key: str  # task.data key of the image (the `$image` of <Image value="$image">)
    labels: list[str] = Field(min_length=1)
    controls: list[OutputControl] = []
    # Smart RectangleLabels beside an output control: prompt tools; a rectangle of theirs in an
    # annotation seeds its label (a SAM box prompt) when the label has no other region there.
    box_prompts: list[OutputControl] = []

    @model_validator(mode="after")
    def _one_brush_control_by_default(self) -> LabelConfigSummary:
        if not self.controls:  # a summary stored by an earlier version: one brush control
            self.controls = [OutputControl(name=self.from_name, kind="brush", labels=self.labels)]
        return self

    def control_of(self, label: str) -> OutputControl:
        """The control a label is read from and predicted into.

        Raises:
            KeyError: the label is in no control.
        """
        for control in self.controls:
            if label in control.labels:
                return control
        raise KeyError(label)

    def control_named(self, name: str) -> OutputControl | None:
        return next((c for c in self.controls if c.name == name), None)


class Shot(BaseModel):
    """One reference of one label: a human brush mask, encoded and stored by content hash."""

    annotation: int
    task: int
    label: str
    ref: str  # sha256 hex of Reference.to_bytes(), key of the blob in the store
    fingerprint: str  # the annotation's updated_at when it was encoded
    seq: int  # arrival order within the project
    mask: str  # digest of the boolean mask (an unchanged brush is not re-encoded)
    # Seeded from a promoted candidate group (issue 11), not from an annotation: `annotation`
    # is negative, and the label's first human shot replaces all its provisional ones.
    provisional: bool = False
    # Drawn as rectangles (issue 20): the shot is SAM's mask for each box on its image.
    box_derived: bool = False
    # Taught by a smart-tool "teach" gesture (issue 20), not an annotation: `annotation` is
    # negative; it counts as a person's shot (a correction) but no LS annotation backs it.
    clicked: bool = False


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
        """Annotation ids of the shots backed by LS annotations, per label (provisional and
        clicked shots have none)."""
        return {
            label: [s.annotation for s in shots if not (s.provisional or s.clicked)]
            for label, shots in self.shots.items()
        }


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


# --- operator's view (status page, issue 13) ---------------------------------------------------


class VersionProgress(ProjectCounts):
    """Predict jobs of one model version, and the acceptance IoU measured against it."""

    n: int
    version: str
    acceptance_count: int = 0
    acceptance_mean_iou: float | None = None


class LabelRejects(BaseModel):
    """What one label's GF-SAM runs found on a version's tasks and what the split / label-gate
    reject left unpainted (instances and original-size pixels; issue 18)."""

    label: str
    found_instances: int = 0
    found_pixels: int = 0
    rejected_instances: int = 0
    rejected_pixels: int = 0
    rejected_share: float | None = None  # rejected_pixels / found_pixels (None: nothing found)
    warning: bool = False  # the reject removed more than REJECT_WARN_SHARE of the pixels

    def add(self, other: LabelRejects) -> None:
        """Accumulate another task's counts of the same label."""
        self.found_instances += other.found_instances
        self.found_pixels += other.found_pixels
        self.rejected_instances += other.rejected_instances
        self.rejected_pixels += other.rejected_pixels


class VersionRejects(BaseModel):
    """Per-label reject counts of one model version over the tasks predicted at it."""

    n: int
    version: str
    tasks: int
    labels: list[LabelRejects]


class FailureRecord(BaseModel):
    """One permanent failure as it happened (`what`: "task:{t}", "annotation:{a}", "sync"...)."""

    what: str
    reason: str
    at: float  # Unix time
    current: bool = True  # still the standing failure of `what` (not cleared since)


class CandidateGroup(BaseModel):
    """A group of similar unlabeled regions proposed by discovery (written by discovery)."""

    name: str
    size: int = 0  # regions or tasks in the group
    tasks: list[int] = []  # a few example task ids
    thumbs: list[str] = []  # shas of `thumb:{sha}` images to show, if any
    # Written by `worker.discovery.candidates` (issue 11):
    id: int = -1  # stable group id (`gfsam.discover.CandidateGroups`)
    members: list[str] = []  # member keys `{task}-{digest}` (`p:{p}:members`), arrival order
    central: list[str] = []  # the members closest to the group's mean, closest first
    similarity: dict[str, float] = {}  # label -> cosine of the group's mean to its shots


class CandidateMember(BaseModel):
    """One discovered region of one task (a member of a candidate group)."""

    key: str
    task: int
    group: int
    bbox: list[float]  # x, y, width, height in percent of the image (LS convention)
    width: int  # original image size in pixels
    height: int
    score: float
    origin: str  # "cluster" (token cluster refined by SAM) or "rejected" (assignment)
    # The mask at `MASK_SIDE` x `MASK_SIDE` of the 1024 SAM frame: bit-packed, zlib, base64.
    mask: str


# --- self-measurement and tuning (issue 19; backend/state/quality.py) -------------------------


class LabelQuality(BaseModel):
    """One label's held-out figures at one version (`gfsam.calibrate.Counts.summary`)."""

    n: int = 0  # scored tasks holding the label
    tasks: int = 0  # scored tasks
    iou: float | None = None
    precision: float | None = None
    recall: float | None = None
    false_paint: float | None = None  # share of scored tasks without the label it painted on


class LabelTuning(BaseModel):
    """The threshold offset chosen for one label (`gfsam.calibrate.Choice.summary`)."""

    offset: float = 0.0  # added to the default threshold; higher = stricter
    # the presence floors of the version's whole shot set (what predictions start from) before
    # and after the offset; None in reports stored before 2026-12-06
    floor_default: float | None = None
    floor: float | None = None
    mode: str | None = None  # the assignment mode chosen instead of ASSIGN (None: ASSIGN)
    how: str = "default"  # tuned | default | too-few | unconfirmed | unchecked
    n: int = 0
    iou_default: float | None = None
    iou_chosen: float | None = None
    candidates: list[float] = []
    modes_tried: list[str] = []  # other assignment modes that competed
    ious: dict[str, float | None] = {}  # each setting tried -> its IoU (the evidence)


class PreviousQuality(BaseModel):
    """The version measured before, scored on the same tasks (same leave-one-out, default
    thresholds and mode on both sides): the comparison with ``QualityReport.default`` says
    whether the last correction helped. ``reason`` set: that version (``version``) could not be
    measured again, and why; no figures."""

    version: str = ""
    n: int = 0  # its version counter
    tasks: int = 0  # tasks scored (those where it could predict some label)
    default: dict[str, LabelQuality] = {}
    reason: str = ""  # why it was not measured ("" when it was)


class ScoreCalibration(BaseModel):
    """A task's estimate -> posted score (`gfsam.calibrate.ScoreMap`): knots over the raw value
    of `form` (`gfsam.calibrate.SCORE_FORM`); empty, or of another form (1: fitted before
    2026-12-05 on another raw score): unfitted, the raw value is posted."""

    x: list[float] = []
    y: list[float] = []
    n: int = 0
    form: int = 1


class QualityReport(BaseModel):
    """A version measured on the project's own annotations (leave-one-out, `worker.quality`).

    ``default``: every label at the default thresholds; ``tuned``: each task at the offsets
    chosen on the other tasks (never on itself); ``choices``: what later predictions use.
    """

    project: int
    version: str
    n: int  # the version counter
    tasks: list[int] = []  # the tasks scored, most recent first
    default: dict[str, LabelQuality] = {}
    tuned: dict[str, LabelQuality] = {}
    choices: dict[str, LabelTuning] = {}
    score_map: ScoreCalibration = ScoreCalibration()
    score_iou_spearman: float | None = None  # on the scored tasks (the fit's own data)
    previous: PreviousQuality | None = None  # the version measured before, on these tasks
    mode: str = "split"
    skipped: list[int] = []  # annotated tasks not scored: image gone or unreadable
    basis: str = ""  # digest of the annotation states read (`worker.quality.measure._basis`)
    wall_s: float = 0.0
    at: float = 0.0  # Unix time


class Tuning(BaseModel):
    """What predictions apply (`p:{p}:tuning`): the latest measured version's choices."""

    version: str = ""  # the version it was measured on
    offsets: dict[str, float] = {}
    modes: dict[str, str] = {}  # label -> the assignment mode it uses instead of ASSIGN
    score_map: ScoreCalibration = ScoreCalibration()


# --- job payloads (worker/tasks.py) ------------------------------------------------------------


class PredictJob(BaseModel):
    project: int
    task: int
    version: str
    # From LS's task list (pre-annotation); None when queued by /predict: the worker reads the
    # task from LS (issue 7: never the caller's copy).
    image_url: str | None = None
    interactive: bool = False  # queued by /predict (high queue) rather than by pre-annotation


class AnnotationJob(BaseModel):
    project: int
    annotation: int
    task: int
    image_url: str | None = None  # unused: the worker reads the task from LS (kept for old jobs)
    fingerprint: str = ""


class DeleteJob(BaseModel):
    project: int
    annotations: list[int] = Field(min_length=1)


class SyncJob(BaseModel):
    project: int


class FeedJob(BaseModel):
    """One chunk of a version's pre-annotation feed (`p:{p}:feed:{v}`)."""

    project: int
    version: str
    chunk: int = Field(ge=0)


class PromoteJob(BaseModel):
    project: int
    group: int
    label: str = Field(min_length=1, max_length=100)


class CalibrateJob(BaseModel):
    """Measure and tune `version` of a project on its annotations (issue 19)."""

    project: int
    version: str
    attempt: int = 0  # queued again after stopping for waiting predictions (its own job id)


class DeliverJob(BaseModel):
    project: int
    task: int
    version: str
