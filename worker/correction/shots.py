"""Shot rules: what one annotation state does to a project's shots (docs/architecture.md §2).

The decisions themselves (seed, correction or accepted; the cap) are `gfsam.shots`, shared with
the evaluation harness's replay; this module applies them to Label Studio annotations: it reads
an annotation's brush per label, finds the prediction the annotator started from, and turns the
outcome into placeholder shots that `worker.correction.references` encodes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from backend.state.schemas import LabelConfigSummary, Shot
from backend.state.settings import Settings
from backend.state.store import Store
from gfsam.shots import ShotPolicy, becomes_shot
from worker.labelstudio.brush_rle import BrushError
from worker.labelstudio.replies import LSAnnotation
from worker.labelstudio.shapes import Box, LabelShape, annotation_shapes

DELETED = "deleted"  # fingerprint of a deleted annotation (a tombstone; LS never reuses ids)


@dataclass
class AnnotationState:
    """What LS says an annotation is now (result None: deleted)."""

    annotation: int
    task: int
    fingerprint: str
    result: list[dict[str, Any]] | None
    image_url: str | None = None
    parent_prediction: int | None = None

    @classmethod
    def from_ls(cls, ann: LSAnnotation, image_url: str | None, task: int) -> AnnotationState:
        """The state of an LS annotation; `task` is used when the reply names none. A cancelled
        (skipped) annotation has an empty result: it holds no shots."""
        return cls(
            annotation=ann.id,
            task=ann.task or task,
            fingerprint=ann.updated_at or ann.created_at or "",
            result=[] if ann.was_cancelled else list(ann.result or []),
            image_url=image_url,
            parent_prediction=ann.parent_prediction,
        )

    @classmethod
    def deleted(cls, annotation: int) -> AnnotationState:
        return cls(annotation=annotation, task=0, fingerprint=DELETED, result=None)


@dataclass
class PendingShot:
    """A shot waiting for its encoding: the annotation state, its mask, the shot it replaces,
    and the boxes it was drawn as (a rectangle control: the mask to encode is SAM's for them)."""

    state: AnnotationState
    mask: np.ndarray
    previous: Shot | None
    boxes: list[Box] = field(default_factory=list)


Predicted = tuple[str, dict[str, np.ndarray]]  # (model version, label -> bool [H, W])


def policy(settings: Settings) -> ShotPolicy:
    """The shot policy configured by MAX_SHOTS and UNCHANGED_IOU."""
    return ShotPolicy(max_shots=settings.max_shots, unchanged_iou=settings.unchanged_iou)


def mask_digest(mask: np.ndarray) -> str:
    """Digest of a bool mask: an unchanged brush is not re-encoded."""
    h = hashlib.sha256(f"{mask.shape}".encode())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:24]


def superseded(applied: str | None, incoming: str) -> bool:
    """True when `incoming` (an annotation's updated_at, or DELETED) is not newer than what was
    applied: the same state, an older snapshot read before a later change (a sync racing an
    event on another worker), or any state of a deleted annotation (LS never reuses ids)."""
    if applied is None:
        return False
    if applied == DELETED:
        return True
    return incoming != DELETED and incoming <= applied  # ISO 8601 timestamps sort as text


def label_masks(
    store: Store, cfg: LabelConfigSummary, p: int, state: AnnotationState
) -> dict[str, LabelShape] | None:
    """The annotation's non-empty shape per label of the config, read from each label's control
    (brush, polygon or rectangle; None when it is deleted; {} when a region is unreadable,
    which is recorded as a failure). Marks the task labeled."""
    if state.result is None:
        return None
    store.data.mark_labeled(p, state.task)
    try:
        shapes = annotation_shapes(state.result, cfg)
    except BrushError as exc:
        store.progress.record_failure(p, f"annotation:{state.annotation}", f"bad region: {exc}")
        return {}
    skip = store.settings.candidate_label  # discovery's display label is never a shot
    return {
        lb: shape
        for lb, shape in shapes.items()
        if lb in cfg.labels and lb != skip and shape.mask.any()
    }


def apply_state(
    state: AnnotationState,
    shapes: dict[str, LabelShape] | None,
    predicted: Predicted | None,
    shots: dict[str, list[Shot]],
    pending: dict[tuple[int, str], PendingShot],
    cfg: LabelConfigSummary,
    shot_policy: ShotPolicy,
) -> None:
    """Apply one annotation state to `shots` in place (label -> shots, oldest first).

    A label erased from the annotation (or a deleted annotation) loses the annotation's shot; a
    changed brush replaces it; a new brush becomes a shot when `gfsam.shots.becomes_shot` says
    so. New and replaced shots are placeholders (``ref == ""``) listed in `pending`, encoded
    after the cap (`gfsam.shots.trim_shots`) so that dropped shots are never encoded.
    """
    todo: list[tuple[str, np.ndarray, int | None]] = []
    for label in cfg.labels:
        lst = shots.setdefault(label, [])
        idx = next((i for i, s in enumerate(lst) if s.annotation == state.annotation), None)
        shape = (shapes or {}).get(label)
        mask = None if shape is None else shape.mask
        if mask is None:
            if idx is not None:
                del lst[idx]
        elif idx is not None:
            if lst[idx].mask != mask_digest(mask):
                todo.append((label, mask, idx))
        else:
            ours = None if predicted is None else predicted[1].get(label, np.zeros_like(mask))
            human = any(not s.provisional for s in lst)  # provisional shots: see below
            if becomes_shot(mask, has_shots=human, predicted=ours, policy=shot_policy):
                todo.append((label, mask, None))
    seq = 1 + max((s.seq for lst in shots.values() for s in lst), default=0)
    for label, mask, idx in todo:
        previous = None if idx is None else shots[label][idx]
        boxes = (shapes or {})[label].boxes
        shot = Shot(
            annotation=state.annotation,
            task=state.task,
            label=label,
            ref="",
            fingerprint=state.fingerprint,
            seq=seq if previous is None else previous.seq,
            mask=mask_digest(mask),
            box_derived=bool(boxes),
        )
        if idx is None:
            # A label's first human shot replaces the provisional ones of a promotion (issue 11).
            shots[label] = [s for s in shots[label] if not s.provisional] + [shot]
            seq += 1
        else:
            shots[label][idx] = shot
        pending[(state.annotation, label)] = PendingShot(state, mask, previous, boxes)
