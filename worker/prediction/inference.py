"""One task at one model version: image -> cached target encoding -> per-label masks -> regions.

Which label gets which region is `worker.prediction.assignment` (`ASSIGN`, default split): one
brush region
per accepted instance, each with its own score; rejected proposals (candidates) are not painted
and are returned next to the stored prediction (`TaskResult.candidates`) for discovery. Abstaining
labels contribute no region; a task where nothing is kept gets an empty `result` with the mean
label score.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np

from backend.state.schemas import LabelConfigSummary, ReferenceSet, StoredPrediction, Tuning
from backend.state.settings import Settings
from backend.state.store import Store
from gfsam.assign import Assignment, Instance
from gfsam.assign.proposals import freeze
from gfsam.calibrate import ScoreMap
from gfsam.decoded import DecodedMasks
from gfsam.encodings import Reference, TargetEncoding
from gfsam.geometry import clean_regions
from gfsam.taskscore import region_estimate, task_estimate
from worker.labelstudio.shapes import shapes_to_result
from worker.prediction import decoded_masks, prefetch
from worker.prediction.assignment import assign, reject_counts
from worker.runtime import Runtime, geometry_params

logger = logging.getLogger(__name__)


def target_encoding(
    rt: Runtime, store: Store, image_bytes: bytes, sha: str | None = None, *, later: bool = False
) -> TargetEncoding:
    """The target encoding of an image, from the disk cache when the same bytes were seen.

    Args:
        rt: the runtime. store: for the counters. image_bytes: the image file.
        sha: sha256 hex of `image_bytes` when the caller has it already.
        later: a new encoding is written by the cache's writer thread (`TargetCache.put_later`)
            while the caller goes on; only for a job that `flush`es before it ends.
    """
    sha = sha or hashlib.sha256(image_bytes).hexdigest()
    blob = rt.targets.get(sha)
    if blob is not None:
        store.progress.incr_stat("target_cache_hit")
        return _frozen(rt.model.target_from_bytes(blob))
    started = time.perf_counter()
    target = prefetch.encode_target(rt, store, image_bytes, sha)  # batched when prefetched
    store.progress.incr_stat("target_encode")
    if later:
        rt.targets.put_later(sha, target.to_bytes)  # written while the job goes on
    else:
        rt.targets.put(sha, target.to_bytes())
    logger.debug("encoded target %s in %.2fs", sha[:12], time.perf_counter() - started)
    return _frozen(target)


def _frozen(target: TargetEncoding) -> TargetEncoding:
    """The target with read-only tokens: nothing in a job writes them, and the assignment's and
    discovery's token normalisation then recognise them without hashing them each time."""
    return replace(target, tokens=freeze(target.tokens))


def load_references(
    rt: Runtime, store: Store, refs: ReferenceSet, labels: list[str]
) -> dict[str, list[Reference]]:
    """Decoded references per label (labels of the config that have at least one shot)."""
    out: dict[str, list[Reference]] = {}
    for label in labels:
        shots = refs.shots.get(label) or []
        if shots:
            out[label] = [
                rt.references.get(s.ref, store.data.get_blob, rt.model.reference_from_bytes)
                for s in shots
            ]
    return out


@dataclass
class TaskResult:
    """What predicting one task gives: the LS prediction and the proposals it left unpainted.

    Attributes:
        prediction: stored and delivered as is (one region per accepted instance).
        candidates: rejected proposals (`gfsam.assign.Instance`: ``mask`` bool [H, W] original
            size, ``label`` the label it matched best, ``score``, ``similarity``,
            ``consistency``, ``source`` the label whose GF-SAM run proposed it); nothing of
            them goes to Label Studio. Empty under ``ASSIGN=argmax``.
    """

    prediction: StoredPrediction
    target: TargetEncoding  # the target encoding it was predicted on (discovery reuses it)
    candidates: list[Instance] = field(default_factory=list)
    sha: str = ""  # sha256 of the image bytes (the target cache key)
    decoded: DecodedMasks | None = None  # the target's mask store (discovery's region prompts)


def predict_task(
    rt: Runtime,
    store: Store,
    cfg: LabelConfigSummary,
    refs: ReferenceSet,
    task: int,
    image_bytes: bytes,
    *,
    later: bool = False,
) -> TaskResult:
    """Predict every label that has references; assign instances; keep the candidates.

    The caller saves the target's mask store (`TaskResult.decoded`, `decoded_masks.save`)
    once its discovery has added region prompts; when this raises after decoding, it is saved
    here. ``later``: cache writes go through `TargetCache.put_later` (a job that `flush`es).

    The item score is the raw value of `gfsam.taskscore.task_estimate` (its expected IoU, from
    the regions' area x matching score over what they paint plus half the rejected candidates
    that came near their label's floor, times 1 - the share of the image expected to need
    correcting; 1 when nothing is painted and nothing came near, then `result` is empty), each
    region's its matching score. Once the project has been measured (issue 19,
    `worker.quality`), its tuned offsets are added to the thresholds (and a label tuned to
    another assignment mode uses it) and every score posted is the project's score map of the
    estimate (`gfsam.calibrate.ScoreMap`: the IoU measured on held-out annotations for that
    raw value; a region's: of its estimate were it the task's only region,
    `gfsam.taskscore.region_estimate`).
    """
    sha = hashlib.sha256(image_bytes).hexdigest()
    target = target_encoding(rt, store, image_bytes, sha, later=later)
    references = load_references(rt, store, refs, cfg.labels)
    # stored SAM masks reused
    preds, point_masks, decoded = decoded_masks.predict_labels(
        rt, store, sha, target, references, keep=True
    )  # saved once the job's discovery added its region prompts (`decoded_masks.save`)
    try:  # a failure from here on still keeps what was decoded, for the retry
        store.progress.incr_stat("predict")
        shas = {label: [s.ref for s in refs.shots[label]] for label in references}
        tuning = store.quality.tuning(refs.project) if rt.settings.calibrate else None
        asg = assign(
            rt.settings.assign,
            rt.model.pipeline.config,
            target,
            preds,
            references,
            shas,
            cfg.labels,
            model_key=rt.model.key,
            point_masks=point_masks,
            offsets=tuning.offsets if tuning is not None else None,
            modes=tuning.modes if tuning is not None else None,
        )
        if rt.settings.assign != "argmax":
            store.progress.record_rejects(refs.project, refs.version, task, reject_counts(asg))
        posted = cleaned_assignment(asg, rt.settings)
        regions = [
            (i.label, i.mask, i.score) for lb in cfg.labels for i in posted.accepted.get(lb, [])
        ]
        shape = tuple(target.image_size)
        expected = score_map(tuning)  # estimates: `gfsam.taskscore` (issue 19)
        if expected.fitted:  # measured: a region's posted score were it the task's only region
            regions_out = [(lb, m, expected(region_estimate(m, s, shape))) for lb, m, s in regions]
        else:  # unmeasured: its matching score, as before
            regions_out = regions
        result = shapes_to_result(regions_out, cfg, geometry_params(rt.settings))
        estimate = task_estimate([(m, s) for _, m, s in regions], shape, asg.candidates)
        prediction = StoredPrediction(
            task=task, result=result, score=expected(estimate), model_version=refs.version
        )
        return TaskResult(prediction, target, asg.candidates, sha, decoded)

    except BaseException:
        decoded_masks.save(rt, store, sha, decoded, later=later)
        raise


def score_map(tuning: Tuning | None) -> ScoreMap:
    """The project's task estimate -> posted score map (issue 19); unfitted until measured."""
    if tuning is None or not tuning.score_map.x:
        return ScoreMap()
    return ScoreMap.from_json(tuning.score_map.model_dump())


def _clean_label(masks: list[np.ndarray], settings: Settings) -> list[tuple[int, np.ndarray]]:
    """(index, cleaned bool [H, W]) of one label's regions that remain (`clean_regions` on
    copies; `masks` untouched)."""
    cleaned = [m.copy() for m in masks]
    return [(k, cleaned[k]) for k in clean_regions(cleaned, geometry_params(settings))]


def cleaned_assignment(asg: Assignment, settings: Settings) -> Assignment:
    """`asg` as a prediction posts it: each label's accepted instances cleaned like
    `clean_geometry` (masks cleaned, nested duplicates merged into their host, emptied ones
    dropped; instances keep their scores), the candidates as they were. The self-measurement
    (`worker.quality`) scores this, so it measures what a person sees."""
    if not settings.geometry_clean:
        return asg
    accepted = {
        label: [
            replace(insts[k], mask=m) for k, m in _clean_label([i.mask for i in insts], settings)
        ]
        for label, insts in asg.accepted.items()
    }
    return Assignment(accepted=accepted, candidates=list(asg.candidates))


def clean_geometry(
    regions: list[tuple[str, np.ndarray, float]], settings: Settings
) -> list[tuple[str, np.ndarray, float]]:
    """(label, bool [H, W], score) regions without specks, slivers, small holes or nested
    duplicates (`gfsam.geometry.clean_regions`, per label; a region that absorbs a duplicate
    keeps its own score). Off with ``GEOMETRY_CLEAN=false``."""
    if not settings.geometry_clean:
        return regions
    out: list[tuple[str, np.ndarray, float]] = []
    for label in dict.fromkeys(lb for lb, _, _ in regions):
        mine = [(m, s) for lb, m, s in regions if lb == label]
        out += [(label, m, mine[k][1]) for k, m in _clean_label([m for m, _ in mine], settings)]
    return out
