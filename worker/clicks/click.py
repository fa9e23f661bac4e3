"""The interactive lane: smart-tool clicks and editor warm-ups (architecture §3, "Interactive").

Run by `python -m worker.main --interactive`, a worker that listens only to the interactive
queue, so a click never waits behind pre-annotation. A click needs only SAM's prompt decoder:
the target encoding comes from this process's memory (last `interactive_targets_in_memory`
tasks), else from the shared disk cache that pre-annotation fills, and only else from the
encoders: the mask engine alone for a plain click (`encode_mask_engine`: a cold click pays no
feature engine), both for find all, teach and warm-ups (counted: `stats` `click`,
`click_encoded`, with `target_encode` / `target_cache_hit`).
Nothing is stored: the answer goes back to the waiting /predict as the job's return value.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np

from backend.state.jobs import Jobs
from backend.state.prompts import (
    ClickJob,
    PromptError,
    Prompts,
    TeachJob,
    WarmJob,
    check_usable,
)
from backend.state.schemas import LabelConfigSummary
from backend.state.store import Store
from gfsam.encodings import TargetEncoding
from gfsam.find_all import FindAllParams, find_similar
from gfsam.image import mask_from_frame, mask_to_frame
from worker import runtime
from worker.clicks.edit_rules import instances, refine
from worker.labelstudio.brush_rle import BrushError, mask_to_rle
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from worker.labelstudio.shapes import annotation_masks, shapes_to_result
from worker.prediction.inference import clean_geometry
from worker.runtime import geometry_params

logger = logging.getLogger(__name__)

# (project, task) -> target encoding; this process only (one interactive worker
# holds its annotators' open tasks). Bounded by settings.interactive_targets_in_memory.
_memory: OrderedDict[tuple[int, int], TargetEncoding | MaskOnly] = OrderedDict()
MAX_FOUND = 50  # instances one "find all" answers at most (a person reviews each)


@dataclass(frozen=True)
class MaskOnly:
    """What a plain click needs of an image: the mask engine's embedding float32 [E', 64, 64]
    and the image's (H, W) (`SegmentationModel.encode_mask_engine`: no feature engine pass)."""

    embedding: np.ndarray
    image_size: tuple[int, int]


def _target(
    rt: runtime.Runtime, store: Store, p: int, t: int, data_key: str, *, tokens: bool = True
) -> tuple[TargetEncoding | MaskOnly, bool]:
    """The task's encoding and whether this call ran an encoder. From this process's memory,
    else the shared target cache, else the encoders: both (`tokens`: find all, teach, a
    warm-up; the encoding is cached for everyone) or the mask engine alone (a plain click: its
    embedding is kept in memory only, the cache holds whole encodings).

    Raises:
        LabelStudioError: no such task, or its image cannot be fetched. ValueError: the task is
            in another project, has no image, or the image cannot be decoded.
    """
    memo = (p, t)
    known = _memory.get(memo)
    if known is not None and (not tokens or isinstance(known, TargetEncoding)):
        _memory.move_to_end(memo)
        store.progress.incr_stat("target_memory_hit")
        return known, False
    task = rt.ls.get_task(t, p)
    if task.project is not None and task.project != p:
        raise ValueError(f"task {t} is not in project {p}")
    url = task.image_url(data_key)
    if url is None:
        raise ValueError(f"task {t} has no image under data key {data_key!r}")
    image = rt.ls.download(url, task_id=t)
    sha = hashlib.sha256(image).hexdigest()
    blob = rt.targets.get(sha)
    target: TargetEncoding | MaskOnly
    if blob is not None:  # pre-annotation (or a warm-up) encoded it: decoder only
        store.progress.incr_stat("target_cache_hit")
        target = rt.model.target_from_bytes(blob)
    else:
        started = time.perf_counter()
        pixels = rt.model.load_image(image)
        if tokens:
            target = rt.model.pipeline.encode_target(pixels)
            rt.targets.put(sha, target.to_bytes())
        else:
            size = (int(pixels.shape[0]), int(pixels.shape[1]))
            precision = rt.settings.interactive_precision
            target = MaskOnly(
                rt.model.pipeline.encode_mask_engine(pixels, precision=precision), size
            )
        store.progress.incr_stat("target_encode")
        logger.info(
            "interactive: encoded p%s t%s in %.2fs%s",
            p,
            t,
            time.perf_counter() - started,
            "" if tokens else " (mask engine only)",
        )
    _memory[memo] = target
    _memory.move_to_end(memo)
    while len(_memory) > rt.settings.interactive_targets_in_memory:
        _memory.popitem(last=False)
    return target, blob is None


def _prior(
    store: Store,
    cfg: LabelConfigSummary,
    p: int,
    t: int,
    version: str,
    label: str,
    size: tuple[int, int],
) -> tuple[np.ndarray | None, float]:
    """Our stored prediction of `label` for the task at `version`, read from the label's control:
    bool [H, W] and its score."""
    pred = store.data.get_prediction(p, t, version)
    if pred is None:
        return None, 0.0
    h, w = size
    kind = cfg.control_of(label).result_type
    mine = [
        r
        for r in pred.result
        if r.get("type") == kind
        and label in ((r.get("value") or {}).get(kind) or [])
        and (r.get("original_width"), r.get("original_height")) == (w, h)  # else: not ours
    ]
    mask = annotation_masks(mine, cfg).get(label)
    if mask is None or not mask.any():
        return None, 0.0
    return mask, max(float(r.get("score") or pred.score) for r in mine)


def _config(store: Store, payload: ClickJob, label: str) -> LabelConfigSummary:
    """The project's stored config; before its first sync, a brush control named by the call."""
    cfg = store.data.config(payload.project)
    if cfg is not None and label in cfg.labels:
        return cfg
    return LabelConfigSummary(
        from_name=payload.from_name,
        to_name=payload.to_name,
        data_key=payload.data_key,
        labels=[label],
    )


def click(rt: runtime.Runtime, store: Store, jobs: Jobs, payload: ClickJob) -> dict[str, Any]:
    """Answer one click: {"result", "score", "model_version", "rule"} or {"error": reason}.

    ``click``: the rules of `edit_rules.refine` on our prediction of the label. ``find_all``
    and ``teach``: the clicked object, then every object like it in the image (`find_all`),
    one region per instance; ``teach`` also queues the object as a reference of the label.
    """
    p, t, prompts = payload.project, payload.task, payload.prompts
    if payload.deadline is not None and time.time() > payload.deadline:
        logger.info("click p%s t%s: past its deadline, its caller has given up: skipped", p, t)
        return {"error": "the click expired before it could run"}
    started = time.perf_counter()
    store.progress.incr_stat("click")
    try:
        tokens = prompts.gesture != "click"  # find all and teach read the feature tokens
        target, encoded = _target(rt, store, p, t, payload.data_key, tokens=tokens)
    except LabelStudioUnavailable:
        raise
    except (LabelStudioError, ValueError) as exc:  # missing or undecodable task image
        return {"error": f"task {t}: cannot use its image: {exc}"}
    if encoded:
        store.progress.incr_stat("click_encoded")
    size = (int(target.image_size[0]), int(target.image_size[1]))
    prompts = _in_image_pixels(prompts, size)
    cfg = _config(store, payload, prompts.label)
    sam = rt.model.pipeline.sam
    try:
        if prompts.gesture == "click":
            prior, prior_score = _prior(store, cfg, p, t, payload.version, prompts.label, size)
            check_usable(prompts, prior is not None)
            outcome = refine(sam, target.embedding, prompts, size, prior, prior_score)
            masks, score, rule = [outcome.mask], outcome.score, outcome.rule
        else:
            if not isinstance(target, TargetEncoding):  # `tokens` asked for the whole one
                raise RuntimeError("find all needs the image's feature tokens")
            clicked = refine(sam, target.embedding, prompts, size)
            masks, score = find_all(rt, target, clicked.mask), clicked.score
            rule = prompts.gesture
        result = _regions(rt, cfg, payload.to_name, prompts, masks, score)
    except (PromptError, BrushError, ValueError) as exc:
        return {"error": str(exc)}
    if prompts.gesture == "teach":
        jobs.enqueue_teach(TeachJob(project=p, task=t, data_key=payload.data_key, prompts=prompts))
    logger.info(
        "click p%s t%s %s: %s in %.0f ms%s",
        p,
        t,
        prompts.label,
        rule,
        1000 * (time.perf_counter() - started),
        " (encoded)" if encoded else "",
    )
    return {
        "result": result,
        "score": score,
        "model_version": store.data.current_version(p),
        "rule": rule,
    }


def find_all(
    rt: runtime.Runtime,
    target: TargetEncoding,
    clicked: np.ndarray,
    params: FindAllParams | None = None,
) -> list[np.ndarray]:
    """Every object of the image like the clicked one (`gfsam.find_all.find_similar`: one box
    prompt per region of similar cells, batched; at most `FIND_ALL_MAX_DECODES` masks decoded),
    the clicked object first as SAM decoded it; at most `MAX_FOUND` instances, most similar
    first. `params`: the defaults with the settings' decode budget unless given (benchmarks).

    Returns:
        bool [H, W] instance masks, the clicked object's first.
    """
    if not clicked.any():
        raise PromptError("the click found no object to look for")
    framed = mask_to_frame(clicked).numpy()  # (S, S)
    if not framed.any():
        raise PromptError("the clicked object is too small to look for")
    sam, embedding = rt.model.pipeline.sam, target.embedding

    def decode(points: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return sam.decode_boxes(embedding, points, boxes)

    params = params or FindAllParams(max_decodes=rt.settings.find_all_max_decodes)
    result = find_similar(target.tokens, framed, decode, rt.model.pipeline.config, params)
    logger.debug("find all: %d found, %d decodes", len(result.found), result.decodes)
    found = [mask_from_frame(f.mask, target.image_size) & ~clicked for f in result.found]
    return [clicked] + [m for m in found[: MAX_FOUND - 1] if m.any()]


def warm_target(rt: runtime.Runtime, store: Store, payload: WarmJob) -> str:
    """Encode a task's image (if the cache lacks it) so that its first click is fast."""
    _, encoded = _target(rt, store, payload.project, payload.task, payload.data_key)
    return "encoded" if encoded else "cached"


def _regions(
    rt: runtime.Runtime,
    cfg: LabelConfigSummary,
    to_name: str,
    prompts: Prompts,
    masks: list[np.ndarray],
    score: float,
) -> list[dict[str, Any]]:
    """The answer's regions in the label's control, geometry cleaned as predictions are, except
    that a piece holding a positive click is never dropped (a small object clicked on purpose):
    one region for a click (a polygon per piece), one per instance for find all; a brush answer
    with nothing left is one empty region (every instance removed)."""
    label = prompts.label
    kept = [m for _, m, _ in clean_geometry([(label, m, score) for m in masks], rt.settings)]
    h, w = masks[0].shape
    at = [
        (min(int(y), h - 1), min(int(x), w - 1))
        for (x, y), positive in zip(prompts.points, prompts.positive, strict=True)
        if positive
    ]
    for mask in masks:
        pieces = instances(mask)
        for k in {int(pieces[r, c]) for r, c in at} - {0}:
            piece = pieces == k
            if not any((piece & m).any() for m in kept):
                kept.insert(0, piece)  # the clicked object stays first
    if prompts.gesture == "click" and kept:  # one object edited: one region, as LS expects
        kept = [np.logical_or.reduce(kept)]
    regions = [(label, m, score) for m in kept]
    result = shapes_to_result(regions, cfg, geometry_params(rt.settings), to_name=to_name)
    control = cfg.control_of(label)
    if result or control.kind != "brush":
        return result
    empty = np.zeros((h, w), dtype=bool)
    return [
        {
            "id": f"empty-{label}",
            "from_name": control.name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(empty), "brushlabels": [label]},
            "score": float(score),
        }
    ]


def _in_image_pixels(prompts: Prompts, size: tuple[int, int]) -> Prompts:
    """Points and box from the regions' original_width/height to the decoded image's (H, W)
    (they agree unless the frontend saw another orientation; percentages are what LS means)."""
    h, w = size
    if (prompts.width, prompts.height) == (w, h):
        return prompts
    sx, sy = w / prompts.width, h / prompts.height
    box = prompts.box
    return prompts.model_copy(
        update={
            "points": [(x * sx, y * sy) for x, y in prompts.points],
            "box": None if box is None else (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy),
            "width": w,
            "height": h,
        }
    )
