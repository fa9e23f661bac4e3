"""The "teach" gesture (issue 20): the object a smart-tool click found becomes a reference of
its label, as a correction would, and the project is re-predicted.

The interactive worker answers the click (find all) and queues `teach_shot` on the batch queue;
this job reads the task's image from Label Studio, decodes the same prompts on its embedding
again (the target cache makes that a decoder call) and adds the mask as a **clicked** shot
(`Shot.clicked`, a negative annotation id: no LS annotation backs it, so a sync never deletes
it; it counts as a person's shot, replaces a promotion's provisional shots and is capped like
any correction). One new version; pre-annotation follows.
"""

from __future__ import annotations

import logging

from backend.state.jobs import Jobs
from backend.state.prompts import TeachJob
from backend.state.schemas import ReferenceSet, Shot
from backend.state.store import Store
from gfsam.shots import trim_shots
from worker import runtime
from worker.clicks.edit_rules import refine
from worker.correction.preannotate import preannotate
from worker.correction.references import store_reference
from worker.correction.shots import mask_digest
from worker.prediction.inference import target_encoding

logger = logging.getLogger(__name__)

CLICKED = "clicked"  # fingerprint of a clicked shot


def teach(rt: runtime.Runtime, store: Store, jobs: Jobs, payload: TeachJob) -> str | None:
    """Add the clicked object to its label's shots. Returns the new version, or None when the
    project is unknown or the label no longer in its config.

    Raises:
        ValueError: the task is in another project, has no image, or the prompts find nothing.
    """
    p, t, prompts = payload.project, payload.task, payload.prompts
    cfg = store.data.config(p)
    if cfg is None or prompts.label not in cfg.labels:
        return None
    task = rt.ls.get_task(t, p)
    if task.project is not None and task.project != p:
        raise ValueError(f"task {t} is not in project {p}")
    url = task.image_url(payload.data_key)
    if url is None:
        raise ValueError(f"task {t} has no image under {payload.data_key!r}")
    data = rt.ls.download(url, task_id=t)
    image = rt.model.load_image(data)
    target = target_encoding(rt, store, data)
    size = (int(target.image_size[0]), int(target.image_size[1]))
    mask = refine(rt.model.pipeline.sam, target.embedding, prompts, size).mask
    if not mask.any():
        raise ValueError("the taught prompts find no object")
    sha = store_reference(rt, store, image, mask)
    with store.coord.project_lock(p):
        refs = store.data.reference_set(p)
        seq = 1 + max((s.seq for lst in refs.shots.values() for s in lst), default=0)
        shot = Shot(
            annotation=-seq,
            task=t,
            label=prompts.label,
            ref=sha,
            fingerprint=CLICKED,
            seq=seq,
            mask=mask_digest(mask),
            clicked=True,
        )
        mine = [s for s in refs.shots.get(prompts.label, []) if not s.provisional] + [shot]
        shots = {**refs.shots, prompts.label: trim_shots(mine, rt.settings.max_shots)}
        new = ReferenceSet(project=p, n=refs.n + 1, shots=shots)
        store.data.swap_reference_set(new, expected_n=refs.n)
    logger.info("project %s: taught %r from task %s, %s", p, prompts.label, t, new.version)
    preannotate(rt, store, jobs, p, new.version)
    return new.version
