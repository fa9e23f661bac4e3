"""Promote a candidate group to a new label (issue 11; POST /projects/{id}/candidates/{g}/promote).

The job, in order: add ``<Label value=.../>`` to the project's BrushLabels control in Label
Studio (`PATCH /api/projects/{id}/`; only a label is added, so every existing annotation stays
valid); re-read the config; encode the group's most central members (`Settings.promote_shots`)
as **provisional** shots of the label (negative annotation ids, replaced by the label's first
human shot, `worker.correction.shots.apply_state`); one atomic swap of set + version n + 1 under the
project's lock; drop the group from discovery; pre-annotate at the new version.
"""

from __future__ import annotations

import logging
import re
from xml.etree import ElementTree
from xml.sax.saxutils import quoteattr

from backend.state.candidates import DiscoveryUpdate
from backend.state.jobs import Jobs
from backend.state.schemas import CandidateMember, PromoteJob, ReferenceSet, Shot
from backend.state.store import Store
from gfsam.assign import SplitParams, shot_prototypes
from gfsam.discover import CandidateGroups
from worker import runtime
from worker.correction.preannotate import preannotate
from worker.correction.references import store_reference
from worker.correction.shots import mask_digest
from worker.discovery.candidates import groups_view, unpack_mask
from worker.labelstudio.project_config import refresh_config
from worker.labelstudio.replies import LSProject
from worker.prediction.inference import load_references

logger = logging.getLogger(__name__)

PROVISIONAL = "provisional"  # fingerprint of a provisional shot


class PromoteError(ValueError):
    """The label cannot be added to the project's config (permanent)."""


TAGS = ("BrushLabels", "PolygonLabels", "RectangleLabels")  # the controls we predict into


def add_label(xml: str, control: str, label: str) -> str:
    """The label config with ``<Label value=label/>`` appended to the output control `control`
    (a BrushLabels, PolygonLabels or RectangleLabels).

    Only text is inserted (the rest of the config stays byte for byte); unchanged when the
    control has the label already.

    Raises:
        PromoteError: no such control, or the result does not parse.
    """
    tag, labels = _labels_of(xml, control)
    if label in labels:
        return xml
    opening = re.search(rf"<{tag}\b[^>]*\bname\s*=\s*([\"']){re.escape(control)}\1[^>]*>", xml)
    if opening is None or opening.group(0).endswith("/>"):
        raise PromoteError(f"no <{tag} name={control!r}> element with labels")
    closing = xml.find(f"</{tag}>", opening.end())
    if closing < 0:
        raise PromoteError(f"<{tag} name={control!r}> is not closed")
    out = f"{xml[:closing]}<Label value={quoteattr(label)}/>{xml[closing:]}"
    if label not in _labels_of(out, control)[1]:
        raise PromoteError(f"label {label!r} could not be added to {control!r}")
    return out


def _labels_of(xml: str, control: str) -> tuple[str, list[str]]:
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise PromoteError(f"label config does not parse: {exc}") from exc
    for tag in TAGS:
        for el in root.iter(tag):
            if el.get("name") == control:
                return tag, [str(lb.get("value")) for lb in el.iter("Label")]
    raise PromoteError(
        f"no output control (BrushLabels, PolygonLabels, RectangleLabels) {control!r}"
    )


def promote(rt: runtime.Runtime, store: Store, jobs: Jobs, payload: PromoteJob) -> str:
    """Promote group `payload.group` of `payload.project` to label `payload.label`."""
    p, gid, label = payload.project, payload.group, payload.label
    group = store.candidates.group(p, gid)
    cfg = store.data.config(p)
    if group is None or cfg is None:
        return "unknown-group"
    project: LSProject = rt.ls.get_project(p)
    xml = add_label(project.label_config, cfg.from_name, label)
    if xml != project.label_config:
        rt.ls.update_label_config(p, xml)
        logger.info("project %s: label %r added to %s", p, label, cfg.from_name)
    cfg, _ = refresh_config(rt.ls, store, p)
    if cfg is None or label not in cfg.labels:
        raise PromoteError(f"Label Studio's config of project {p} lacks {label!r} after the change")
    keys = (group.central or group.members)[: rt.settings.promote_shots]
    seeds = [
        (m, _seed(rt, store, p, cfg.data_key, m)) for m in store.candidates.members(p, keys) if m
    ]
    with store.coord.project_lock(p):
        refs = store.data.reference_set(p)
        if any(not s.provisional for s in refs.shots.get(label, [])):
            return "labelled-already"  # a person seeded it meanwhile: that shot wins
        seq = 1 + max((s.seq for lst in refs.shots.values() for s in lst), default=0)
        shots = [
            Shot(
                annotation=-(seq + i),
                task=m.task,
                label=label,
                ref=sha,
                fingerprint=PROVISIONAL,
                seq=seq + i,
                mask=digest,
                provisional=True,
            )
            for i, (m, (sha, digest)) in enumerate(seeds)
        ]
        new = ReferenceSet(project=p, n=refs.n + 1, shots={**refs.shots, label: shots})
        store.data.swap_reference_set(new, expected_n=refs.n)
    _drop_group(rt, store, p, gid, new)
    logger.info(
        "project %s: group %s -> %r (%d provisional shots), %s",
        p,
        gid,
        label,
        len(shots),
        new.version,
    )
    preannotate(rt, store, jobs, p, new.version)
    return new.version


def _seed(
    rt: runtime.Runtime, store: Store, p: int, data_key: str, m: CandidateMember
) -> tuple[str, str]:
    """Encode one member as a reference; returns (blob sha, mask digest)."""
    url = rt.ls.get_task(m.task, p).image_url(data_key)  # via the task list (never GET /tasks/{id})
    if url is None:
        raise PromoteError(f"task {m.task} has no image under {data_key!r}")
    image = rt.model.load_image(rt.ls.download(url, task_id=m.task))
    mask = unpack_mask(m.mask, image.shape[:2])
    return store_reference(rt, store, image, mask), mask_digest(mask)


def _drop_group(rt: runtime.Runtime, store: Store, p: int, gid: int, refs: ReferenceSet) -> None:
    """Remove the promoted group (and its members' data) from discovery's state."""
    cfg = store.data.config(p)
    labels = [lb for lb in (cfg.labels if cfg else []) if lb != rt.settings.candidate_label]
    references = load_references(rt, store, refs, labels)
    config = rt.model.pipeline.config
    protos = {lb: shot_prototypes(r, config, SplitParams()) for lb, r in references.items()}

    def compute(text: str | None) -> DiscoveryUpdate | None:
        state = CandidateGroups.from_json(text) if text else None
        if state is None or gid not in state.groups:
            return None
        gone = state.groups.pop(gid)
        return DiscoveryUpdate(state.to_json(), groups_view(state, protos), dropped=gone.members)

    store.candidates.update(p, compute)
