"""Re-fit: turn annotation changes into a project's new reference set and model version.

Rules (docs/architecture.md §2):

- Each label's brush in an annotation (regions of one label OR-ed, alpha >= 128) is a candidate
  shot. An empty brush is never a shot; a label outside the config is ignored.
- A label without references takes the candidate as its seed (the first annotated task).
- Otherwise the candidate becomes a correction shot unless our prediction for that task matched
  it (IoU >= `unchanged_iou`): an accepted prediction teaches nothing new.
- An annotation that already is a shot replaces its mask when it changes, and stops being a shot
  when its brush for that label is gone or the annotation is deleted.
- At most `max_shots` per label: the seed (oldest shot) stays, the oldest correction is dropped.
- New shots are encoded and their blobs stored *before* one atomic swap of set + version, under
  a per-project lock, so /setup never names a version that cannot predict yet.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.jobs import Jobs
from backend.schemas import (
    AcceptanceSample,
    DeliverJob,
    LabelConfigSummary,
    PredictJob,
    ReferenceSet,
    Shot,
)
from backend.store import Store
from worker.brush import BrushError, annotation_masks, mask_iou
from worker.labelstudio import LabelStudioError, LabelStudioUnavailable
from worker.models import Runtime

logger = logging.getLogger(__name__)

DELETED = "deleted"


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
    def from_ls(cls, ann: dict[str, Any], image_url: str | None) -> AnnotationState:
        cancelled = bool(ann.get("was_cancelled"))
        return cls(
            annotation=int(ann["id"]),
            task=int(ann.get("task") or 0),
            fingerprint=str(ann.get("updated_at") or ann.get("created_at") or ""),
            result=[] if cancelled else list(ann.get("result") or []),
            image_url=image_url,
            parent_prediction=ann.get("parent_prediction"),
        )

    @classmethod
    def deleted(cls, annotation: int) -> AnnotationState:
        return cls(annotation=annotation, task=0, fingerprint=DELETED, result=None)


def mask_digest(mask: np.ndarray) -> str:
    h = hashlib.sha256(f"{mask.shape}".encode())
    h.update(np.packbits(mask).tobytes())
    return h.hexdigest()[:24]


def apply_changes(
    rt: Runtime,
    store: Store,
    jobs: Jobs,
    p: int,
    changes: list[AnnotationState],
    tasks: list[dict[str, Any]] | None = None,
) -> str | None:
    """Apply annotation states; returns the new model version, or None when nothing changed."""
    cfg = store.config(p)
    if cfg is None:
        raise RuntimeError(f"project {p} has no label config yet (no /setup seen)")
    with store.project_lock(p):
        refs = store.reference_set(p)
        shots = {label: sorted(lst, key=lambda s: s.seq) for label, lst in refs.shots.items()}
        applied: list[AnnotationState] = []
        pending: dict[tuple[int, str], _Pending] = {}
        for ch in changes:
            if _superseded(store.annotation_fingerprint(p, ch.annotation), ch.fingerprint):
                continue
            _apply_one(rt, store, cfg, p, ch, shots, pending)
            applied.append(ch)
        for lst in shots.values():
            while len(lst) > rt.settings.max_shots:
                del lst[1]  # keep the seed, drop the oldest correction
        _encode_pending(rt, store, p, shots, pending)  # only the shots that survived the cap
        new = ReferenceSet(project=p, n=refs.n + 1, shots={k: v for k, v in shots.items() if v})
        changed = _signature(new) != _signature(refs)
        if changed:
            store.swap_reference_set(new, expected_n=refs.n)
            store.expire_blobs(_refs_of(refs) - _refs_of(new), keep=_refs_of(new))
            logger.info(
                "project %s: %s -> %s, shots %s", p, refs.version, new.version, new.shot_ids()
            )
        for ch in applied:
            store.set_annotation_fingerprint(p, ch.annotation, ch.fingerprint)
    if changed and new.ready:
        preannotate(rt, store, jobs, p, new.version, tasks)
    return new.version if changed else None


def bump_version(rt: Runtime, store: Store, jobs: Jobs, p: int) -> str | None:
    """New version with the same shots (e.g. after a label-config change), then pre-annotate.

    Returns the new version, or None when the project has no references (nothing to redo).
    """
    with store.project_lock(p):
        refs = store.reference_set(p)
        if not refs.ready:
            return None
        new = refs.model_copy(update={"n": refs.n + 1})
        store.swap_reference_set(new, expected_n=refs.n)
    logger.info("project %s: %s -> %s (label config changed)", p, refs.version, new.version)
    preannotate(rt, store, jobs, p, new.version)
    return new.version


def _superseded(applied: str | None, incoming: str) -> bool:
    """True when `incoming` (an annotation's updated_at, or DELETED) is not newer than what was
    applied: the same state, an older snapshot read before a later change (a sync racing an
    event on another worker), or any state of a deleted annotation (LS never reuses ids)."""
    if applied is None:
        return False
    if applied == DELETED:
        return True
    return incoming != DELETED and incoming <= applied  # ISO 8601 timestamps sort as text


def _refs_of(refs: ReferenceSet) -> set[str]:
    return {s.ref for shots in refs.shots.values() for s in shots}


def _signature(refs: ReferenceSet) -> dict[str, list[tuple[int, str]]]:
    return {k: [(s.annotation, s.ref) for s in v] for k, v in refs.shots.items() if v}


def _apply_one(
    rt: Runtime,
    store: Store,
    cfg: LabelConfigSummary,
    p: int,
    ch: AnnotationState,
    shots: dict[str, list[Shot]],
    pending: dict[tuple[int, str], _Pending],
) -> None:
    masks = _masks(store, cfg, p, ch)
    predicted = None if ch.result is None else _predicted(rt, store, cfg, p, ch)
    if predicted is not None and masks is not None:
        _record_acceptance(store, cfg, p, ch, masks, predicted)
    todo: list[tuple[str, np.ndarray, int | None]] = []
    for label in cfg.labels:
        lst = shots.setdefault(label, [])
        idx = next((i for i, s in enumerate(lst) if s.annotation == ch.annotation), None)
        mask = (masks or {}).get(label)
        if mask is None:
            if idx is not None:
                del lst[idx]
            continue
        if idx is not None:
            if lst[idx].mask != mask_digest(mask):
                todo.append((label, mask, idx))
            continue
        if lst and predicted is not None:
            pm = predicted[1].get(label, np.zeros_like(mask))
            if pm.shape == mask.shape and mask_iou(pm, mask) >= rt.settings.unchanged_iou:
                continue  # the annotator kept our prediction for this label
        todo.append((label, mask, None))
    seq = 1 + max((s.seq for lst in shots.values() for s in lst), default=0)
    for label, mask, idx in todo:  # placeholders (ref ""): encoded after the MAX_SHOTS trim
        previous = None if idx is None else shots[label][idx]
        shot = Shot(
            annotation=ch.annotation,
            task=ch.task,
            label=label,
            ref="",
            fingerprint=ch.fingerprint,
            seq=seq if previous is None else previous.seq,
            mask=mask_digest(mask),
        )
        if idx is None:
            shots[label].append(shot)
            seq += 1
        else:
            shots[label][idx] = shot
        pending[(ch.annotation, label)] = _Pending(ch, mask, previous)


def _masks(
    store: Store, cfg: LabelConfigSummary, p: int, ch: AnnotationState
) -> dict[str, np.ndarray] | None:
    if ch.result is None:
        return None
    store.mark_labeled(p, ch.task)
    try:
        masks = annotation_masks(ch.result, from_name=cfg.from_name)
    except BrushError as exc:
        store.record_failure(p, f"annotation:{ch.annotation}", f"bad brush: {exc}")
        return {}
    return {label: m for label, m in masks.items() if label in cfg.labels and m.any()}


def _predicted(
    rt: Runtime, store: Store, cfg: LabelConfigSummary, p: int, ch: AnnotationState
) -> tuple[str, dict[str, np.ndarray]] | None:
    """Our prediction the annotation started from: LS's `parent_prediction`, else our last one."""
    result, version = None, None
    if ch.parent_prediction:
        try:
            pred = rt.ls.get_prediction(int(ch.parent_prediction))
        except LabelStudioUnavailable:
            raise
        except LabelStudioError:
            pred = None
        if pred and str(pred.get("model_version", "")).startswith(f"gfsam-p{p}-v"):
            result, version = pred.get("result") or [], str(pred["model_version"])
    if result is None:
        version = store.last_delivered_version(p, ch.task)
        stored = store.get_prediction(p, ch.task, version) if version else None
        if stored is None:
            return None
        result = stored.result
    try:
        return str(version), annotation_masks(result, from_name=cfg.from_name)
    except BrushError:
        return None


def _record_acceptance(
    store: Store,
    cfg: LabelConfigSummary,
    p: int,
    ch: AnnotationState,
    masks: dict[str, np.ndarray],
    predicted: tuple[str, dict],
) -> None:
    version, pred = predicted
    shapes = {m.shape for m in [*masks.values(), *pred.values()]}
    if len(shapes) != 1:
        return
    shape = shapes.pop()
    empty = np.zeros(shape, dtype=bool)
    labels = [label for label in cfg.labels if label in masks or label in pred]
    iou = {label: mask_iou(pred.get(label, empty), masks.get(label, empty)) for label in labels}
    if iou:
        store.record_acceptance(
            p,
            AcceptanceSample(
                annotation=ch.annotation, task=ch.task, model_version=version, iou=iou
            ),
        )


@dataclass
class _Pending:
    """A shot waiting for its encoding: the annotation state, its mask, the shot it replaces."""

    ch: AnnotationState
    mask: np.ndarray
    previous: Shot | None


def _encode_pending(
    rt: Runtime,
    store: Store,
    p: int,
    shots: dict[str, list[Shot]],
    pending: dict[tuple[int, str], _Pending],
) -> None:
    """Encode the placeholder shots still in `shots` (one image download per annotation) and
    store their blobs before any swap. A shot that cannot be encoded is reverted (the shot it
    replaced comes back) and the failure recorded; LS being down propagates (job retried)."""
    survivors: dict[int, list[tuple[str, int]]] = {}
    for label, lst in shots.items():
        for i, shot in enumerate(lst):
            if not shot.ref:
                survivors.setdefault(shot.annotation, []).append((label, i))
    for annotation, places in survivors.items():
        ch = pending[(annotation, places[0][0])].ch
        image, error = _download(rt, ch)
        failed: list[tuple[str, int]] = []
        for label, i in places:
            try:
                if image is None:
                    raise ValueError(error)
                sha = _store_reference(rt, store, image, pending[(annotation, label)].mask)
                shots[label][i] = shots[label][i].model_copy(update={"ref": sha})
            except ValueError as exc:
                store.record_failure(p, f"annotation:{annotation}", f"{label}: {exc}")
                failed.append((label, i))
        for label, i in reversed(failed):  # revert: the previous shot, or none
            previous = pending[(annotation, label)].previous
            if previous is None:
                del shots[label][i]
            else:
                shots[label][i] = previous
        if not failed:
            store.clear_failure(p, f"annotation:{annotation}")


def _download(rt: Runtime, ch: AnnotationState) -> tuple[np.ndarray | None, str]:
    """The annotation's image, or (None, reason). LS unavailable propagates."""
    if not ch.image_url:
        return None, "task data has no image URL"
    try:
        return rt.model.load_image(rt.ls.download(ch.image_url, task_id=ch.task)), ""
    except LabelStudioUnavailable:
        raise
    except (LabelStudioError, ValueError) as exc:
        return None, f"image: {exc}"


def _store_reference(rt: Runtime, store: Store, image: np.ndarray, mask: np.ndarray) -> str:
    """Encode one shot and store its blob under its sha256 (shared by every worker)."""
    ref = rt.model.pipeline.encode_reference(image, mask)
    blob = ref.to_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    store.put_blob(sha, blob)
    store.incr_stat("reference_encode")
    rt.references.put(sha, ref)
    return sha


def preannotate(
    rt: Runtime,
    store: Store,
    jobs: Jobs,
    p: int,
    version: str,
    tasks: list[dict[str, Any]] | None = None,
) -> int:
    """Queue (batch) a prediction at `version` for every task without a human annotation."""
    cfg = store.config(p)
    if cfg is None or not store.reference_set(p).ready_for(cfg.labels):
        return 0  # no label of the current config has a reference: nothing to predict
    tasks = rt.ls.list_tasks(p) if tasks is None else tasks
    ids = [int(t["id"]) for t in tasks]
    claims, posted = store.delivery_claims(p, ids, version), store.posted(p, ids, version)
    queued = 0
    for task, claim, done in zip(tasks, claims, posted, strict=True):
        t = int(task["id"])
        if int(task.get("total_annotations") or 0) > 0:
            store.mark_labeled(p, t)
            continue
        store.mark_unlabeled(p, t)  # e.g. its only annotation was deleted
        url = (task.get("data") or {}).get(cfg.data_key)
        if claim == "api" and not done and store.get_prediction(p, t, version) is not None:
            jobs.enqueue_deliver(DeliverJob(project=p, task=t, version=version))  # POST failed
            continue
        if claim is not None or not isinstance(url, str):
            continue
        job = PredictJob(project=p, task=t, version=version, image_url=url)
        queued += jobs.enqueue_predict(job, high=False) in ("queued", "requeued")
    logger.info("project %s: queued %d pre-annotations at %s", p, queued, version)
    return queued
