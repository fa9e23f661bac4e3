"""Re-fit: turn annotation changes into a project's new reference set and model version.

Under the project's lock: apply each state with the shot rules (`worker.correction.shots`), cap each
label's shots (`gfsam.shots.trim_shots`), encode the surviving new shots
(`worker.correction.references`),
then one atomic swap of set + version; pre-annotation follows (`worker.correction.preannotate`).
The rules
and the ordering are in docs/architecture.md §2.
"""

from __future__ import annotations

import logging

from backend.state.jobs import Jobs
from backend.state.schemas import ReferenceSet
from backend.state.store import Store
from gfsam.shots import trim_shots
from worker.correction.acceptance import record_acceptance, replaced_prediction
from worker.correction.preannotate import preannotate
from worker.correction.references import encode_pending
from worker.correction.shots import (
    AnnotationState,
    PendingShot,
    apply_state,
    label_masks,
    policy,
    superseded,
)
from worker.labelstudio.replies import LSTask
from worker.runtime import Runtime

logger = logging.getLogger(__name__)


def apply_changes(
    rt: Runtime,
    store: Store,
    jobs: Jobs,
    p: int,
    changes: list[AnnotationState],
    tasks: list[LSTask] | None = None,
) -> str | None:
    """Apply annotation states; returns the new model version, or None when nothing changed."""
    cfg = store.data.config(p)
    if cfg is None:
        raise RuntimeError(f"project {p} has no label config yet (no /setup seen)")
    shot_policy = policy(rt.settings)
    with store.coord.project_lock(p):
        refs = store.data.reference_set(p)
        shots = {label: sorted(lst, key=lambda s: s.seq) for label, lst in refs.shots.items()}
        applied: list[AnnotationState] = []
        pending: dict[tuple[int, str], PendingShot] = {}
        for state in changes:
            if superseded(
                store.data.annotation_fingerprint(p, state.annotation), state.fingerprint
            ):
                continue
            shapes = label_masks(store, cfg, p, state)
            predicted = replaced_prediction(rt.ls, store, cfg, p, state)
            if predicted is not None and shapes is not None:
                masks = {label: shape.mask for label, shape in shapes.items()}
                record_acceptance(store, cfg, p, state, masks, predicted)
            apply_state(state, shapes, predicted, shots, pending, cfg, shot_policy)
            applied.append(state)
        shots = {label: trim_shots(lst, shot_policy.max_shots) for label, lst in shots.items()}
        encode_pending(rt, store, p, shots, pending)  # only the shots that survived the cap
        new = ReferenceSet(project=p, n=refs.n + 1, shots={k: v for k, v in shots.items() if v})
        changed = _signature(new) != _signature(refs)
        if changed:
            store.data.swap_reference_set(new, expected_n=refs.n)
            store.data.expire_blobs(_refs_of(refs) - _refs_of(new), keep=_refs_of(new))
            logger.info(
                "project %s: %s -> %s, shots %s", p, refs.version, new.version, new.shot_ids()
            )
        for state in applied:
            store.data.set_annotation_fingerprint(p, state.annotation, state.fingerprint)
    if changed and new.ready:
        preannotate(rt, store, jobs, p, new.version, tasks)
    return new.version if changed else None


def bump_version(rt: Runtime, store: Store, jobs: Jobs, p: int) -> str | None:
    """New version with the same shots (e.g. after a label-config change), then pre-annotate.

    Returns the new version, or None when the project has no references (nothing to redo).
    """
    with store.coord.project_lock(p):
        refs = store.data.reference_set(p)
        if not refs.ready:
            return None
        new = refs.model_copy(update={"n": refs.n + 1})
        store.data.swap_reference_set(new, expected_n=refs.n)
    logger.info("project %s: %s -> %s (label config changed)", p, refs.version, new.version)
    preannotate(rt, store, jobs, p, new.version)
    return new.version


def _refs_of(refs: ReferenceSet) -> set[str]:
    return {s.ref for shots in refs.shots.values() for s in shots}


def _signature(refs: ReferenceSet) -> dict[str, list[tuple[int, str]]]:
    return {k: [(s.annotation, s.ref) for s in v] for k, v in refs.shots.items() if v}
