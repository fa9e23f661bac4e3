"""Reference encoding: placeholder shots become encoded, content-addressed blobs in Redis.

Blobs are stored before any reference-set swap names them (docs/architecture.md §2), so a
version is never visible before every worker can load its references.
"""

from __future__ import annotations

import hashlib

import numpy as np

from backend.state.schemas import Shot
from backend.state.store import Store
from gfsam.geometry import box_to_mask
from gfsam.image import mask_from_frame
from gfsam.types import FRAME
from worker.correction.shots import AnnotationState, PendingShot
from worker.labelstudio.errors import LabelStudioError, LabelStudioUnavailable
from worker.labelstudio.shapes import Box
from worker.runtime import Runtime
from worker.thumbs import thumbnail_png


def encode_pending(
    rt: Runtime,
    store: Store,
    p: int,
    shots: dict[str, list[Shot]],
    pending: dict[tuple[int, str], PendingShot],
) -> None:
    """Encode the placeholder shots still in `shots` (one image download per annotation) and
    store their blobs. A shot that cannot be encoded is reverted (the shot it replaced comes
    back) and the failure recorded; LS being down propagates (the job is retried)."""
    places_of: dict[int, list[tuple[str, int]]] = {}
    for label, lst in shots.items():
        for i, shot in enumerate(lst):
            if not shot.ref:
                places_of.setdefault(shot.annotation, []).append((label, i))
    for annotation, places in places_of.items():
        image, error = _download(rt, pending[(annotation, places[0][0])].state)
        failed: list[tuple[str, int]] = []
        for label, i in places:
            try:
                if image is None:
                    raise ValueError(error)
                todo = pending[(annotation, label)]
                mask = box_prompt_mask(rt, image, todo.boxes) if todo.boxes else todo.mask
                sha = store_reference(rt, store, image, mask)
                shots[label][i] = shots[label][i].model_copy(update={"ref": sha})
            except ValueError as exc:
                store.progress.record_failure(p, f"annotation:{annotation}", f"{label}: {exc}")
                failed.append((label, i))
        for label, i in reversed(failed):  # revert: the previous shot, or none
            previous = pending[(annotation, label)].previous
            if previous is None:
                del shots[label][i]
            else:
                shots[label][i] = previous
        if not failed:
            store.progress.clear_failure(p, f"annotation:{annotation}")


def _download(rt: Runtime, state: AnnotationState) -> tuple[np.ndarray | None, str]:
    """The annotation's image, or (None, reason). LS unavailable propagates."""
    if not state.image_url:
        return None, "task data has no image URL"
    try:
        return rt.model.load_image(rt.ls.download(state.image_url, task_id=state.task)), ""
    except LabelStudioUnavailable:
        raise
    except (LabelStudioError, ValueError) as exc:
        return None, f"image: {exc}"


def box_prompt_mask(rt: Runtime, image: np.ndarray, boxes: list[Box]) -> np.ndarray:
    """A rectangle shot's mask: SAM's mask for each box (a box prompt on the image's own
    embedding), clipped to its box and OR-ed. bool [H, W].

    Raises:
        ValueError: SAM finds nothing in any box (no object to learn from).
    """
    height, width = image.shape[:2]
    target = rt.model.pipeline.encode_target(image)
    scale = np.array([FRAME / width, FRAME / height, FRAME / width, FRAME / height])
    mask = np.zeros((height, width), dtype=bool)
    for box in boxes:
        framed, _, _ = rt.model.pipeline.sam.decode_prompts(
            target.embedding, box_xyxy=np.asarray(box, dtype=np.float64) * scale
        )
        mask |= mask_from_frame(framed, (height, width)) & box_to_mask(box, height, width)
    if not mask.any():
        raise ValueError("SAM found no object in the rectangle(s)")
    return mask


def store_reference(rt: Runtime, store: Store, image: np.ndarray, mask: np.ndarray) -> str:
    """Encode one shot and store its blob under its sha256 (shared by every worker)."""
    ref = rt.model.pipeline.encode_reference(image, mask)
    blob = ref.to_bytes()
    sha = hashlib.sha256(blob).hexdigest()
    store.data.put_blob(sha, blob)
    store.data.put_thumbnail(sha, thumbnail_png(image, mask))  # for the status page
    store.progress.incr_stat("reference_encode")
    rt.references.put(sha, ref)
    return sha
