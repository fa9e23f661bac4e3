"""One task at one model version: image -> cached target encoding -> per-label masks -> regions.

Overlaps between labels: a pixel claimed by several labels goes to the label with the highest
prediction score (ties: the label listed first in the labeling config). Abstaining labels
contribute no region; a task where every label abstains gets an empty `result` with its score.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import numpy as np

from backend.state.schemas import LabelConfigSummary, ReferenceSet, StoredPrediction
from backend.state.store import Store
from worker.brush import masks_to_result
from worker.models import Runtime

logger = logging.getLogger(__name__)


def target_encoding(rt: Runtime, store: Store, image_bytes: bytes) -> Any:
    """The target encoding of an image, from the disk cache when the same bytes were seen."""
    sha = hashlib.sha256(image_bytes).hexdigest()
    blob = rt.targets.get(sha)
    if blob is not None:
        store.progress.incr_stat("target_cache_hit")
        return rt.model.target_from_bytes(blob)
    started = time.perf_counter()
    target = rt.model.pipeline.encode_target(rt.model.load_image(image_bytes))
    store.progress.incr_stat("target_encode")
    rt.targets.put(sha, target.to_bytes())
    logger.debug("encoded target %s in %.2fs", sha[:12], time.perf_counter() - started)
    return target


def load_references(
    rt: Runtime, store: Store, refs: ReferenceSet, labels: list[str]
) -> dict[str, list[Any]]:
    """Decoded references per label (labels of the config that have at least one shot)."""
    out: dict[str, list[Any]] = {}
    for label in labels:
        shots = refs.shots.get(label) or []
        if shots:
            out[label] = [
                rt.references.get(s.ref, store.data.get_blob, rt.model.reference_from_bytes)
                for s in shots
            ]
    return out


def resolve_overlaps(
    masks: dict[str, np.ndarray], scores: dict[str, float], order: list[str]
) -> dict[str, np.ndarray]:
    """Give every pixel to at most one label: highest score first, config order on ties.

    Args:
        masks: label -> bool [H, W], all the same shape.
        scores: label -> score in [0, 1].
        order: labels in config order (tie-break).

    Returns:
        label -> bool [H, W], pairwise disjoint; labels left empty are dropped.
    """
    ranked = sorted(masks, key=lambda label: (-scores.get(label, 0.0), order.index(label)))
    out: dict[str, np.ndarray] = {}
    claimed: np.ndarray | None = None
    for label in ranked:
        mask = masks[label] if claimed is None else masks[label] & ~claimed
        claimed = mask.copy() if claimed is None else claimed | mask
        if mask.any():
            out[label] = mask
    return out


def predict(
    rt: Runtime,
    store: Store,
    cfg: LabelConfigSummary,
    refs: ReferenceSet,
    task: int,
    image_bytes: bytes,
) -> StoredPrediction:
    """Predict every label of the config that has references, as one LS prediction.

    The item score is the mean score of the labels that produced a region, or the mean of all
    label scores when every label abstained (then `result` is empty).
    """
    target = target_encoding(rt, store, image_bytes)
    references = load_references(rt, store, refs, cfg.labels)
    preds = rt.model.pipeline.predict_labels(target, references)
    store.progress.incr_stat("predict")
    scores = {label: float(p.score) for label, p in preds.items()}
    masks = {label: np.asarray(p.mask, dtype=bool) for label, p in preds.items() if not p.abstained}
    kept = resolve_overlaps(masks, scores, cfg.labels)
    result = masks_to_result(
        kept,
        from_name=cfg.from_name,
        to_name=cfg.to_name,
        scores={label: scores[label] for label in kept},
    )
    used = [scores[label] for label in kept] or list(scores.values()) or [0.0]
    return StoredPrediction(
        task=task, result=result, score=float(np.mean(used)), model_version=refs.version
    )
