"""The interactive lane: smart-tool clicks and editor warm-ups (architecture §3, "Interactive").

Run by `python -m worker.main --interactive`, a worker that listens only to the interactive
queue, so a click never waits behind pre-annotation. A click needs only SAM's prompt decoder:
the target encoding comes from this process's memory (last `interactive_targets_in_memory`
tasks), else from the shared disk cache that pre-annotation fills, and only else from the
encoders (counted: `stats` `click`, `click_encoded`, with `target_encode` / `target_cache_hit`).
Nothing is stored: the answer goes back to the waiting /predict as the job's return value.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from backend.state.prompts import ClickJob, PromptError, Prompts, WarmJob, check_usable
from backend.state.store import Store
from worker import runtime
from worker.clicks.edit_rules import refine
from worker.labelstudio.brush_rle import BrushError, mask_to_rle, masks_to_result, rle_to_mask
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable

logger = logging.getLogger(__name__)

# (project, task) -> target encoding; this process only (one interactive worker
# holds its annotators' open tasks). Bounded by settings.interactive_targets_in_memory.
_memory: OrderedDict[tuple[int, int], Any] = OrderedDict()


def _target(rt: runtime.Runtime, store: Store, p: int, t: int, data_key: str) -> tuple[Any, bool]:
    """The task's target encoding and whether this call ran the image encoders.

    Raises:
        LabelStudioError: no such task, or its image cannot be fetched. ValueError: the task is
            in another project, has no image, or the image cannot be decoded.
    """
    memo = (p, t)
    if memo in _memory:
        _memory.move_to_end(memo)
        store.progress.incr_stat("target_memory_hit")
        return _memory[memo], False
    task = rt.ls.get_task(t, p)
    if task.project is not None and task.project != p:
        raise ValueError(f"task {t} is not in project {p}")
    url = task.image_url(data_key)
    if url is None:
        raise ValueError(f"task {t} has no image under data key {data_key!r}")
    image = rt.ls.download(url, task_id=t)
    sha = hashlib.sha256(image).hexdigest()
    blob = rt.targets.get(sha)
    if blob is not None:  # pre-annotation (or a warm-up) encoded it: decoder only
        store.progress.incr_stat("target_cache_hit")
        target = rt.model.target_from_bytes(blob)
    else:
        started = time.perf_counter()
        target = rt.model.pipeline.encode_target(rt.model.load_image(image))
        store.progress.incr_stat("target_encode")
        rt.targets.put(sha, target.to_bytes())
        logger.info("interactive: encoded p%s t%s in %.2fs", p, t, time.perf_counter() - started)
    _memory[memo] = target
    while len(_memory) > rt.settings.interactive_targets_in_memory:
        _memory.popitem(last=False)
    return target, blob is None


def _prior(
    store: Store, p: int, t: int, version: str, label: str, size: tuple[int, int]
) -> tuple[np.ndarray | None, float]:
    """Our stored prediction of `label` for the task at `version`: bool [H, W] and its score."""
    pred = store.data.get_prediction(p, t, version)
    if pred is None:
        return None, 0.0
    h, w = size
    mask, score = np.zeros((h, w), dtype=bool), 0.0
    for region in pred.result:
        value = region.get("value") or {}
        if region.get("type") != "brushlabels" or label not in (value.get("brushlabels") or []):
            continue
        if (region.get("original_width"), region.get("original_height")) != (w, h):
            continue  # made for another size (image replaced): not ours to edit
        mask |= rle_to_mask(value["rle"], w, h)
        score = max(score, float(region.get("score") or pred.score))
    return (mask if mask.any() else None), score


def click(rt: runtime.Runtime, store: Store, payload: ClickJob) -> dict[str, Any]:
    """Answer one click: {"result", "score", "model_version", "rule"} or {"error": reason}."""
    p, t, prompts = payload.project, payload.task, payload.prompts
    if payload.deadline is not None and time.time() > payload.deadline:
        logger.info("click p%s t%s: past its deadline, its caller has given up: skipped", p, t)
        return {"error": "the click expired before it could run"}
    started = time.perf_counter()
    store.progress.incr_stat("click")
    try:
        target, encoded = _target(rt, store, p, t, payload.data_key)
    except LabelStudioUnavailable:
        raise
    except (LabelStudioError, ValueError) as exc:  # missing or undecodable task image
        return {"error": f"task {t}: cannot use its image: {exc}"}
    if encoded:
        store.progress.incr_stat("click_encoded")
    size = (int(target.image_size[0]), int(target.image_size[1]))
    prompts = _in_image_pixels(prompts, size)
    prior, prior_score = _prior(store, p, t, payload.version, prompts.label, size)
    try:
        check_usable(prompts, prior is not None)
        outcome = refine(rt.model.pipeline.sam, target.embedding, prompts, size, prior, prior_score)
        result = _region(
            payload.from_name, payload.to_name, prompts.label, outcome.mask, outcome.score
        )
    except (PromptError, BrushError) as exc:
        return {"error": str(exc)}
    logger.info(
        "click p%s t%s %s: %s in %.0f ms%s",
        p,
        t,
        prompts.label,
        outcome.rule,
        1000 * (time.perf_counter() - started),
        " (encoded)" if encoded else "",
    )
    return {
        "result": result,
        "score": outcome.score,
        "model_version": store.data.current_version(p),
        "rule": outcome.rule,
    }


def warm_target(rt: runtime.Runtime, store: Store, payload: WarmJob) -> str:
    """Encode a task's image (if the cache lacks it) so that its first click is fast."""
    _, encoded = _target(rt, store, payload.project, payload.task, payload.data_key)
    return "encoded" if encoded else "cached"


def _region(
    from_name: str, to_name: str, label: str, mask: np.ndarray, score: float
) -> list[dict[str, Any]]:
    """One brushlabels region of natural size, also for an empty mask (all instances removed)."""
    regions = masks_to_result(
        {label: mask}, from_name=from_name, to_name=to_name, scores={label: score}
    )
    if regions:
        return regions
    h, w = mask.shape
    return [
        {
            "id": f"empty-{label}",
            "from_name": from_name,
            "to_name": to_name,
            "type": "brushlabels",
            "original_width": int(w),
            "original_height": int(h),
            "image_rotation": 0,
            "value": {"format": "rle", "rle": mask_to_rle(mask), "brushlabels": [label]},
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
