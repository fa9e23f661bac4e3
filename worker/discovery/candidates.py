"""Discovery after each prediction (issue 11): unlabelled objects of a task, grouped per project.

After `inference.predict_task`, on the same cached target encoding (no encoder pass; one SAM
decoder call per token region, at most `DiscoverParams.max_prompts`, none for a region prompt the
target's mask store already holds from an earlier version, `gfsam.decoded`): the area no
accepted region and no human annotation covers is clustered
(`gfsam.discover.discover_candidates`), the proposals the assignment rejected join the pool, and
the kept candidates are added to the project's groups (`gfsam.discover.CandidateGroups`) through
`Store.candidates.update`, a compare-and-set, so concurrent workers never lose an addition. Each
member keeps a small record (task, bbox, score, a 256 x 256 frame mask) and a JPEG crop with its
mask outlined, for the API's contact sheets.

With ``CANDIDATE_LABEL`` set and present in the BrushLabels control, the task's candidates are
also added to its prediction as regions of that label (group id in ``meta``, low score); the
prediction's score stays that of the real labels. Discovery never fails a prediction: an error
is logged and the prediction goes out without it.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import time
import zlib
from collections import OrderedDict

import numpy as np

from backend.state.candidates import MASK_SIDE, DiscoveryUpdate
from backend.state.schemas import (
    CandidateGroup,
    CandidateMember,
    LabelConfigSummary,
    ReferenceSet,
    StoredPrediction,
)
from backend.state.store import Store
from gfsam.assign import LabelCalibration, SplitParams
from gfsam.discover import (
    Candidate,
    CandidateGroups,
    GroupParams,
    discover_candidates,
    sam_prompt_fn,
)
from gfsam.encodings import Reference
from gfsam.geometry import mask_to_box
from gfsam.image import mask_from_frame, mask_to_frame
from gfsam.types import FRAME
from worker.labelstudio.brush_rle import BrushError
from worker.labelstudio.errors import LabelStudioError
from worker.labelstudio.shapes import annotation_masks, shapes_to_result
from worker.prediction import prefetch
from worker.prediction.assignment import calibration
from worker.prediction.inference import TaskResult, load_references
from worker.runtime import Runtime, geometry_params
from worker.thumbs import thumbnail_jpeg

logger = logging.getLogger(__name__)

# Per project: 32 groups x 48 members with a ~5 KiB crop each is at most ~8 MiB in Redis.
GROUP_PARAMS = GroupParams(max_groups=32, max_members=48)
CROP_PX = 96  # longest side of a member's crop
CROP_MARGIN = 0.15  # context around the mask's box, as a share of the box side
TASKS_SHOWN = 20  # tasks listed per group in the view


def after_predict(
    rt: Runtime,
    store: Store,
    p: int,
    cfg: LabelConfigSummary,
    refs: ReferenceSet,
    image_bytes: bytes,
    result: TaskResult,
) -> StoredPrediction:
    """Run discovery on a predicted task; returns the prediction to store (with candidate
    regions when ``CANDIDATE_LABEL`` is in the control)."""
    pred = result.prediction
    # ASSIGN=argmax paints every proposal: nothing is left to find.
    if not rt.settings.discover or rt.settings.assign != "split":
        return pred
    started = time.perf_counter()
    try:
        found = discover_task(rt, store, p, cfg, refs, image_bytes, result)
    except (LabelStudioError, BrushError, ValueError, RuntimeError) as exc:
        logger.warning("discovery p%s t%s skipped: %s", p, pred.task, exc)
        return pred
    store.progress.incr_stat("discover")
    logger.debug(
        "discovery p%s t%s: %d in %.2fs", p, pred.task, len(found), time.perf_counter() - started
    )
    return with_candidate_regions(rt, cfg, pred, found)


def discover_task(
    rt: Runtime,
    store: Store,
    p: int,
    cfg: LabelConfigSummary,
    refs: ReferenceSet,
    image_bytes: bytes,
    result: TaskResult,
) -> list[tuple[int, np.ndarray, float]]:
    """Discover on one predicted task and add its candidates to the project's groups.

    Returns:
        (group id, bool [H, W] original-size mask, score) per candidate kept in a group.
    """
    pipe = rt.model.pipeline
    target, task = result.target, result.prediction.task
    covered = _covered(rt, store, p, cfg, task, result)
    references = load_references(rt, store, refs, [lb for lb in cfg.labels if lb != _cand(rt)])
    cals = {lb: _calibration(rt, refs, lb, r) for lb, r in references.items()}
    protos = {
        lb: cals[lb].shot_prototypes(r, pipe.config, SplitParams()) for lb, r in references.items()
    }
    labels = [(protos[lb], cals[lb].match) for lb in references]
    decoded = result.decoded
    cands = discover_candidates(
        target.tokens,
        mask_to_frame(covered).numpy(),
        sam_prompt_fn(pipe.sam, target.embedding, decoded),  # region prompts decoded once
        rejected=[mask_to_frame(c.mask).numpy() for c in result.candidates],
        labels=labels,
        cfg=pipe.config,
    )
    if not cands:
        return []
    image = prefetch.decoded_image(
        rt, image_bytes, result.sha or hashlib.sha256(image_bytes).hexdigest()
    )
    members = [_member(task, c, target.image_size, image) for c in cands]
    gids: list[int] = []

    written: list[tuple[str, CandidateGroups]] = []

    def compute(state_text: str | None) -> DiscoveryUpdate:
        state = _PARSED.take(p, state_text)
        before = _member_keys(state)
        gids[:] = [state.add(m.key, c.feature) for (m, _, _), c in zip(members, cands, strict=True)]
        after = _member_keys(state)
        new = {
            m.key: (m.model_copy(update={"group": g}), png)
            for (m, png, _), g in zip(members, gids, strict=True)
            if m.key in after - before
        }
        written[:] = [(state.to_json(), state)]
        return DiscoveryUpdate(
            state=written[0][0],
            groups=groups_view(state, protos),
            members={k: m for k, (m, _) in new.items()},
            crops={k: png for k, (_, png) in new.items()},
            dropped=sorted(before - after),
        )

    if store.candidates.update(p, compute):
        _PARSED.keep(p, *written[0])
    return [(g, mask, c.score) for g, (_, _, mask), c in zip(gids, members, cands, strict=True)]


class ParsedStates:
    """The grouping state this process wrote last, per project, kept parsed: the next task of
    the project usually reads back that very text, and parsing it (JSON and base64 of up to
    32 groups x 8 embeddings) costs more than the grouping. Bounded to `projects` entries."""

    def __init__(self, projects: int = 4) -> None:
        self.projects = projects
        self._held: OrderedDict[int, tuple[str, CandidateGroups]] = OrderedDict()

    def take(self, p: int, text: str | None) -> CandidateGroups:
        """The state `text` parsed (a new state when None): the one kept when it is that text,
        handed over (an attempt that then loses the compare-and-set parses afresh)."""
        held = self._held.pop(p, None)
        if held is not None and text is not None and held[0] == text:
            return held[1]
        return CandidateGroups.from_json(text) if text else CandidateGroups(GROUP_PARAMS)

    def keep(self, p: int, text: str, state: CandidateGroups) -> None:
        """Remember `state`, just written as `text`."""
        self._held[p] = (text, state)
        self._held.move_to_end(p)
        while len(self._held) > self.projects:
            self._held.popitem(last=False)


_PARSED = ParsedStates()


def _cand(rt: Runtime) -> str:
    return rt.settings.candidate_label


def _covered(
    rt: Runtime, store: Store, p: int, cfg: LabelConfigSummary, task: int, result: TaskResult
) -> np.ndarray:
    """bool [H, W]: the accepted regions, plus every human annotation of a labelled task."""
    h, w = result.target.image_size
    covered = np.zeros((h, w), dtype=bool)
    results = [result.prediction.result]
    if store.data.is_labeled(p, task):
        results += [a.result or [] for a in rt.ls.list_annotations(task) if not a.was_cancelled]
    for res in results:
        for label, mask in annotation_masks(res, cfg).items():
            if label != _cand(rt) and mask.shape == covered.shape:
                covered |= mask
    return covered


def _calibration(
    rt: Runtime, refs: ReferenceSet, label: str, references: list[Reference]
) -> LabelCalibration:
    """The label's calibration (its ``match`` is the "already this label" level, its prototypes
    the shots'), from the calibration cache `worker.prediction.assignment` filled for this task."""
    shas = [s.ref for s in refs.shots[label]]
    return calibration(references, rt.model.pipeline.config, shas, model_key=rt.model.key)


def _member_keys(state: CandidateGroups) -> set[str]:
    return {k for g in state.groups.values() for k in g.members}


def _member(
    task: int, cand: Candidate, size: tuple[int, int], image: np.ndarray
) -> tuple[CandidateMember, bytes, np.ndarray]:
    """A candidate's record (group filled in later), its JPEG crop and its original-size mask."""
    mask = mask_from_frame(cand.mask, size)
    h, w = size
    packed = pack_mask(cand.mask)
    digest = hashlib.sha1(packed.encode()).hexdigest()[:10]
    box = mask_to_box(mask)
    if box is None:  # squashed away at the original size: keep the frame's box
        ys, xs = np.nonzero(cand.mask)
        ys, xs = ys * h // FRAME, xs * w // FRAME
        box = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    x0, y0, x1, y1 = box
    bbox = [100 * x0 / w, 100 * y0 / h, 100 * (x1 - x0) / w, 100 * (y1 - y0) / h]
    member = CandidateMember(
        key=f"{task}-{digest}",
        task=task,
        group=-1,
        bbox=[round(v, 3) for v in bbox],
        width=w,
        height=h,
        score=round(float(cand.score), 4),
        origin=cand.origin,
        mask=packed,
    )
    return member, crop_jpeg(image, mask, (x0, y0, x1, y1)), mask


def crop_jpeg(image: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int]) -> bytes:
    """The mask's box with some context, at most `CROP_PX`, mask tinted and outlined (JPEG)."""
    x0, y0, x1, y1 = box
    h, w = mask.shape
    mx, my = int((x1 - x0) * CROP_MARGIN) + 2, int((y1 - y0) * CROP_MARGIN) + 2
    x0, y0, x1, y1 = max(0, x0 - mx), max(0, y0 - my), min(w, x1 + mx), min(h, y1 + my)
    return thumbnail_jpeg(image[y0:y1, x0:x1], mask[y0:y1, x0:x1], CROP_PX)


def pack_mask(frame_mask: np.ndarray) -> str:
    """bool [S, S] frame mask -> `MASK_SIDE`-square, bit-packed, zlib, base64 text.

    A block is set when at least half its pixels are (integer counts). Only the blocks meeting
    the mask's box are counted (the others are empty): a candidate's box is usually a small
    part of the frame.
    """
    f = FRAME // MASK_SIDE
    pixels = np.ascontiguousarray(frame_mask, dtype=bool).view(np.uint8)  # (S, S) 0/1
    small = np.zeros((MASK_SIDE, MASK_SIDE), dtype=bool)  # (M, M)
    box = mask_to_box(frame_mask)
    if box is not None:
        px0, py0, px1, py1 = box  # pixels
        y0, y1, x0, x1 = py0 // f, -(-py1 // f), px0 // f, -(-px1 // f)  # the blocks it meets
        counts = _block_counts(pixels[f * y0 : f * y1, f * x0 : f * x1], f)  # (y1-y0, x1-x0)
        small[y0:y1, x0:x1] = 2 * counts >= f * f
    return base64.b64encode(zlib.compress(np.packbits(small).tobytes(), 9)).decode()


def _block_counts(pixels: np.ndarray, f: int) -> np.ndarray:
    """uint8 0/1 [f*m, f*n] -> int32 [m, n]: set pixels of each f x f block (integer sums of
    strided slices: faster than a reshaped sum over two axes)."""
    m, n = pixels.shape[0] // f, pixels.shape[1] // f
    rows = pixels.reshape(m, f, f * n)  # (m, f, f*n): the f rows of each block row
    per_row = sum((rows[:, i].astype(np.int32) for i in range(f)), np.zeros(1, np.int32))
    blocks = per_row.reshape(m, n, f)  # (m, n, f): column sums within a block
    return sum((blocks[..., j] for j in range(f)), np.zeros(1, np.int32))  # (m, n)


def unpack_mask(text: str, size: tuple[int, int]) -> np.ndarray:
    """Inverse of `pack_mask`, resized to the original (H, W): bool [H, W]."""
    bits = np.unpackbits(np.frombuffer(zlib.decompress(base64.b64decode(text)), dtype=np.uint8))
    small = bits[: MASK_SIDE * MASK_SIDE].reshape(MASK_SIDE, MASK_SIDE).astype(bool)
    f = FRAME // MASK_SIDE
    return mask_from_frame(np.repeat(np.repeat(small, f, 0), f, 1), size)


def groups_view(state: CandidateGroups, protos: dict[str, np.ndarray]) -> list[CandidateGroup]:
    """The groups as the API and the status page read them, largest first."""
    sims = state.label_similarity(protos) if protos else {}
    out = []
    for gid, g in state.groups.items():
        tasks = list(dict.fromkeys(int(k.split("-", 1)[0]) for k in g.members))
        out.append(
            CandidateGroup(
                name=f"group {gid}",
                size=g.count,
                tasks=tasks[:TASKS_SHOWN],
                id=gid,
                members=list(g.members),
                central=state.central(gid, len(g.reps)),
                similarity={lb: round(v, 4) for lb, v in sims.get(gid, {}).items()},
            )
        )
    return sorted(out, key=lambda g: (-g.size, g.id))


def with_candidate_regions(
    rt: Runtime,
    cfg: LabelConfigSummary,
    pred: StoredPrediction,
    found: list[tuple[int, np.ndarray, float]],
) -> StoredPrediction:
    """`pred` plus one region of ``CANDIDATE_LABEL`` per candidate (group id in ``meta``), when
    the label is in the control; the item score stays the real labels'."""
    label = _cand(rt)
    found = [f for f in found if f[1].any()]
    if not label or label not in cfg.labels or not found:
        return pred
    scale, params = rt.settings.candidate_score, geometry_params(rt.settings)
    regions = []
    for gid, mask, score in found:  # in the label's own control (a polygon per piece...)
        for region in shapes_to_result([(label, mask, scale * score)], cfg, params):
            region["meta"] = {"text": [f"candidate group {gid}"], "group": gid}
            regions.append(region)
    return pred.model_copy(update={"result": pred.result + regions})
