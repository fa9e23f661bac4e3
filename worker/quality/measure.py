"""A version measured on the project's own annotations, its thresholds tuned and its scores
calibrated (issue 19; the rules are `gfsam.calibrate`'s, the flow is here).

`calibrate_project` runs on the calibrate queue, which every pre-annotation worker listens to
last, after each new version (`worker.correction.preannotate` queues it):

1. the ``CALIBRATE_TASKS`` most recently updated annotations (the store's applied annotation
   fingerprints, newest first; one per task) are read back from Label Studio; their masks per
   label are the truth;
2. each task is predicted with references that exclude its own shots
   (`gfsam.calibrate.loo_references`: leave-one-out over the shots; a task that never was a
   shot uses them all), from its cached target encoding and stored SAM masks, exactly as a
   prediction runs (`worker.prediction`), assigned by the worker's own `assign` under offsets
   added to each label's default threshold;
3. `gfsam.calibrate.tune`: per label the held-out counts at the default and at the offsets chosen
   on the other tasks, the offset later predictions use (at least ``CALIBRATE_MIN_TASKS`` tasks
   holding the label, else the default), the score map task estimate -> posted score;
4. the report is stored per version (`p:{p}:quality`) with the tuning predictions apply
   (`p:{p}:tuning`), unless a newer version was measured meanwhile (checked in the same
   transaction, `backend.state.quality.Quality.put_report`).

Only a measurement that scored every task it read is stored: one stopped for waiting
predictions stores nothing (the tuning in force stays) and is queued again (`STOPPED`). A
version is not measured again on the same annotation states (`_basis`, `MEASURED`). A task
whose image cannot be read (gone, refused, too large, not an image) is skipped and listed in
the report's ``skipped``.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from backend.state.schemas import (
    LabelConfigSummary,
    LabelQuality,
    LabelTuning,
    PreviousQuality,
    QualityReport,
    ReferenceSet,
    ScoreCalibration,
    Shot,
    Tuning,
)
from backend.state.store import Store
from backend.state.versions import version_number
from gfsam.assign import MODES, Assignment
from gfsam.calibrate import Counts, TaskCase, label_counts, loo_references, spearman, tune
from gfsam.encodings import Reference, TargetEncoding
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from worker.labelstudio.shapes import annotation_masks
from worker.prediction import decoded_masks, inference
from worker.prediction.assignment import assign, default_thresholds
from worker.runtime import Runtime

logger = logging.getLogger(__name__)

STOPPED = "stopped early"  # a prediction waited: nothing stored, the job is queued again
MEASURED = "measured already"  # this version was measured on the same annotation states
# A task whose image cannot be had or read (gone, refused, too large, not an image): skipped,
# the measurement goes on. Label Studio unavailable propagates (RQ retries the whole job), and
# when every task read was skipped the last error does too (a cause common to all, e.g. a
# revoked token, fails the job visibly instead of measuring nothing).
UNREADABLE = (LabelStudioError, ValueError)


def _truth(
    rt: Runtime, store: Store, cfg: LabelConfigSummary, p: int
) -> list[tuple[int, dict[str, np.ndarray]]]:
    """(task, label -> bool [H, W]) of the most recent annotations, one per task, newest first."""
    out: list[tuple[int, dict[str, np.ndarray]]] = []
    seen: set[int] = set()
    skip = store.settings.candidate_label
    for a in store.data.recent_annotations(p):
        if len(out) >= store.settings.calibrate_tasks:
            break
        ann = rt.ls.get_annotation(a)
        if ann is None or ann.was_cancelled or ann.task is None or ann.task in seen:
            continue
        seen.add(ann.task)
        try:
            masks = annotation_masks(list(ann.result or []), cfg)
        except ValueError:
            continue  # an unreadable region: recorded by the re-fit, not scored here
        out.append(
            (ann.task, {lb: m for lb, m in masks.items() if lb in cfg.labels and lb != skip})
        )
    return out


def _basis(store: Store, p: int) -> str:
    """What a measurement of the project reads now: a digest of its most recent annotation
    states (ids and fingerprints, twice `CALIBRATE_TASKS` of them: some may be cancelled or of
    the same task). The same version with the same basis is not measured again."""
    states = store.data.recent_annotation_states(p)[: 2 * store.settings.calibrate_tasks]
    return hashlib.sha1(repr(states).encode(), usedforsecurity=False).hexdigest()


def _target(
    rt: Runtime, store: Store, cfg: LabelConfigSummary, p: int, task: int
) -> tuple[TargetEncoding, str] | None:
    """Task `task`'s cached target encoding and image sha (None: no image)."""
    url = rt.ls.get_task(task, p).image_url(cfg.data_key)
    if url is None:
        return None
    image = rt.ls.download(url, task_id=task)
    sha = hashlib.sha256(image).hexdigest()
    return inference.target_encoding(rt, store, image, sha), sha


def _references(
    rt: Runtime, store: Store, shots: Mapping[str, Sequence[Shot]]
) -> tuple[dict[str, list[Reference]], dict[str, list[str]]]:
    """label -> its shots' references (the worker's reference cache), and their shas."""
    references = {
        lb: [
            rt.references.get(x.ref, store.data.get_blob, rt.model.reference_from_bytes) for x in s
        ]
        for lb, s in shots.items()
    }
    return references, {lb: [x.ref for x in s] for lb, s in shots.items()}


def _case(
    rt: Runtime,
    store: Store,
    cfg: LabelConfigSummary,
    refs: ReferenceSet,
    task: int,
    truth: Mapping[str, np.ndarray],
    encoded: tuple[TargetEncoding, str],
) -> TaskCase | None:
    """Task `task` predicted without its own shots, ready to be assigned at any thresholds
    (and, per label, any mode)."""
    pairs = {label: [(s.task, s) for s in shots] for label, shots in refs.shots.items()}
    kept = {lb: s for lb, s in loo_references(pairs, task).items() if lb in cfg.labels}
    if not kept:
        return None
    target, sha = encoded
    references, shas = _references(rt, store, kept)
    preds, point_masks, _ = decoded_masks.predict_labels(rt, store, sha, target, references)
    config = rt.model.pipeline.config
    defaults = default_thresholds(config, references, shas, model_key=rt.model.key)
    shape = tuple(target.image_size)
    if any(m.shape != shape for m in truth.values()):
        logger.warning("task %s: annotation size differs from the image's: not scored", task)
        return None
    full = {lb: truth.get(lb, np.zeros(shape, dtype=bool)) for lb in references}

    def assign_at(
        thresholds: Mapping[str, float], modes: Mapping[str, str] | None = None
    ) -> Assignment:
        offsets = {lb: thresholds[lb] - defaults[lb] for lb in defaults}
        asg = assign(
            rt.settings.assign,
            config,
            target,
            preds,
            references,
            shas,
            cfg.labels,
            model_key=rt.model.key,
            point_masks=point_masks,
            offsets=offsets,
            modes=modes,
        )
        return inference.cleaned_assignment(asg, rt.settings)  # scored as it would be posted

    return TaskCase(task, assign_at, defaults, full, None)


def _floors(
    rt: Runtime, store: Store, cfg: LabelConfigSummary, refs: ReferenceSet
) -> dict[str, float]:
    """label -> the default presence floor of the version's whole shot set (what predictions
    add the chosen offset to)."""
    shots = {lb: s for lb, s in refs.shots.items() if lb in cfg.labels and s}
    references, shas = _references(rt, store, shots)
    return default_thresholds(rt.model.pipeline.config, references, shas, model_key=rt.model.key)


def _choice(
    label: str, summary: dict[str, object], offset: float, floors: Mapping[str, float]
) -> LabelTuning:
    floor = floors.get(label)
    return LabelTuning.model_validate(
        summary | {"floor_default": floor, "floor": None if floor is None else floor + offset}
    )


def _previous(
    store: Store, p: int, refs: ReferenceSet
) -> tuple[ReferenceSet | None, PreviousQuality | None]:
    """The reference set measured before `refs` (to score on the same tasks), or why not."""
    prev = store.quality.measured_before(p, refs.n)  # also when `refs` is measured again
    if prev is None:
        return None, None  # the first measurement: nothing to compare with
    gone = [s.ref for shots in prev.shots.values() for s in shots if not store.data.has_blob(s.ref)]
    if gone:
        why = f"its shots are no longer stored ({len(gone)} expired after the re-fit)"
        return None, PreviousQuality(version=prev.version, n=prev.n, reason=why)
    return prev, None


def calibrate_project(
    rt: Runtime, store: Store, p: int, version: str, busy: Callable[[], bool] | None = None
) -> str:
    """Measure `version` of project `p`, tune it, store the report (see the module docstring).

    Between two tasks: a newer version ends the job without a report (``"stale"``: it has its
    own job); then `busy()` true (a prediction waits on the high or batch queue) ends it
    without a report either (`STOPPED`: the caller queues it again), so the job never holds a
    worker more than one task's measurement past the arrival of other work, and a tuning
    measured on fewer tasks never replaces the one in force.
    """
    started = time.perf_counter()
    refs = store.data.reference_set(p)
    cfg = store.data.config(p)
    if refs.version != version:
        return "stale"  # a newer version has its own job
    if cfg is None or not refs.ready:
        return "nothing to measure"
    basis = _basis(store, p)
    if any(r.version == version and r.basis == basis for r in store.quality.reports(p)):
        return MEASURED  # queued again by a later sync: same version, same annotations
    cases: list[TaskCase] = []
    scored: list[int] = []
    skipped: list[int] = []
    last_error: Exception | None = None
    truths = _truth(rt, store, cfg, p)
    prev, previous = _previous(store, p, refs)
    before: dict[str, Counts] = {}  # the previous version on the same tasks, at its defaults
    before_tasks = 0
    for task, truth in truths:
        if store.data.current_version(p) != version:
            return "stale"
        if cases and busy is not None and busy():
            return STOPPED
        try:
            encoded = _target(rt, store, cfg, p, task)
        except LabelStudioUnavailable:
            raise
        except UNREADABLE as exc:  # deleted meanwhile, or an image that cannot be read
            logger.warning("project %s: task %s not scored: %s", p, task, exc)
            skipped.append(task)
            last_error = exc
            continue
        case = None if encoded is None else _case(rt, store, cfg, refs, task, truth, encoded)
        if case is not None and prev is not None and encoded is not None:
            old = _case(rt, store, cfg, prev, task, truth, encoded)
            if old is not None:
                before_tasks += 1
                for lb, c in label_counts(old, old.assign_at(old.defaults)).items():
                    before[lb] = before.get(lb, Counts()) + c
        if case is not None:
            cases.append(case)
            scored.append(task)
    if not cases:
        if last_error is not None and len(skipped) == len(truths):  # every task was skipped
            raise last_error
        return "no annotated task to score"
    if prev is not None:
        previous = PreviousQuality(
            version=prev.version,
            n=prev.n,
            tasks=before_tasks,
            default={lb: LabelQuality(**c.summary()) for lb, c in sorted(before.items())},
        )
    others = [m for m in MODES if m != rt.settings.assign]  # `Settings.assign`'s values
    modes = others if rt.settings.calibrate_modes else []
    found = tune(cases, min_tasks=rt.settings.calibrate_min_tasks, modes=modes)
    outs = list(found.outcomes.values())
    sm = found.score_map
    floors = _floors(rt, store, cfg, refs)
    report = QualityReport(
        project=p,
        version=version,
        n=version_number(version),
        tasks=scored,
        default={lb: LabelQuality(**c.summary()) for lb, c in sorted(found.default.items())},
        tuned={lb: LabelQuality(**c.summary()) for lb, c in sorted(found.held_out.items())},
        choices={
            lb: _choice(lb, ch.summary(), ch.offset, floors)
            for lb, ch in sorted(found.choices.items())
        },
        score_map=ScoreCalibration(**sm.to_json()),
        score_iou_spearman=spearman([sm(o.estimate) for o in outs], [o.iou for o in outs]),
        previous=previous,
        mode=rt.settings.assign,
        skipped=skipped,
        basis=basis,
        wall_s=round(time.perf_counter() - started, 3),
        at=time.time(),
    )
    tuning = Tuning(
        version=version, offsets=found.offsets(), modes=found.modes(), score_map=report.score_map
    )
    applied = store.quality.put_report(report, tuning, refs)  # tuning: unless a newer one is in
    logger.info(
        "project %s: measured %s on %d task(s) in %.1fs; offsets %s%s",
        p,
        version,
        len(cases),
        report.wall_s,
        {lb: round(o, 4) for lb, o in found.offsets().items() if o},
        "" if applied else " (not applied: a newer version's tuning is in force)",
    )
    return f"measured {len(cases)} task(s)" + (f", {len(skipped)} skipped" if skipped else "")
