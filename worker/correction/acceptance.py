"""Acceptance: which prediction of ours an annotation replaced, and how much of it it kept.

The IoU per label between that prediction and the annotation is the project's acceptance
(`/projects/{id}`, `/metrics`); the same prediction decides whether the annotation is a
correction (`worker.correction.shots`).
"""

from __future__ import annotations

import numpy as np

from backend.state.schemas import AcceptanceSample, LabelConfigSummary
from backend.state.store import Store
from backend.state.versions import parse_version
from gfsam.shots import mask_iou
from worker.correction.shots import AnnotationState, Predicted
from worker.labelstudio.brush_rle import BrushError
from worker.labelstudio.client import LabelStudioClient
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from worker.labelstudio.shapes import annotation_masks


def replaced_prediction(
    ls: LabelStudioClient, store: Store, cfg: LabelConfigSummary, p: int, state: AnnotationState
) -> Predicted | None:
    """Our prediction the annotation started from: LS's `parent_prediction` when it is one of
    ours, else the last one we delivered for the task; None when there is none.

    Raises:
        LabelStudioUnavailable: LS is down (the job is retried).
    """
    if state.result is None:
        return None
    result, version = None, None
    if state.parent_prediction:
        try:
            pred = ls.get_prediction(int(state.parent_prediction))
        except LabelStudioUnavailable:
            raise
        except LabelStudioError:
            pred = None
        parsed = parse_version(pred.model_version or "") if pred is not None else None
        if pred is not None and parsed is not None and parsed[0] == p:
            result, version = pred.result or [], pred.model_version
    if result is None:
        version = store.data.last_delivered_version(p, state.task)
        stored = store.data.get_prediction(p, state.task, version) if version else None
        if stored is None:
            return None
        result = stored.result
    try:
        return str(version), annotation_masks(result, cfg)
    except BrushError:
        return None


def record_acceptance(
    store: Store,
    cfg: LabelConfigSummary,
    p: int,
    state: AnnotationState,
    masks: dict[str, np.ndarray],
    predicted: Predicted,
) -> None:
    """Record the per-label IoU between the replaced prediction and the annotation (once per
    annotation and version; skipped when their sizes disagree)."""
    version, pred = predicted
    shapes = {m.shape for m in [*masks.values(), *pred.values()]}
    if len(shapes) != 1:
        return
    empty = np.zeros(shapes.pop(), dtype=bool)
    labels = [label for label in cfg.labels if label in masks or label in pred]
    iou = {label: mask_iou(pred.get(label, empty), masks.get(label, empty)) for label in labels}
    if iou:
        sample = AcceptanceSample(
            annotation=state.annotation, task=state.task, model_version=version, iou=iou
        )
        store.progress.record_acceptance(p, sample)
