"""Click -> mask: SAM prompts in the 1024 frame, and the rules that edit our own prediction.

Coordinates: the target encoding was made from the image squashed to 1024 x 1024 (no aspect
kept, `gfsam.image.to_frame`), so an original pixel (x, y) of a W x H image is the frame point
(x * 1024 / W, y * 1024 / H); a frame mask goes back with `gfsam.image.mask_from_frame`.

Refinement rules (README, "Interactive smart tools"), when the task has our prediction of the
clicked label at the current version; its instances are the 8-connected components of its mask:

1. a negative point on an instance removes that instance (no decoder call if that is all);
2. a positive point on an instance reshapes it: one decoder call with all points, the box, and
   the instance as SAM's mask prompt (its low-res logits, see `mask_prompt`), single-mask output;
   the result replaces the instance;
3. positive points only outside the prediction (or just a box) add the clicked object: one
   decoder call without a mask prompt, OR-ed with the prediction;
4. instances no point touches are kept unchanged;
5. positive points only (no box), every one on an instance, two or more instances hit: those
   fragments are one object: they are joined into one connected region (`join`), no decoder
   call ("merge").

Without such a prediction the answer is SAM's mask for the prompts alone. A single click (one
point, no box, no mask prompt) uses the multimask output, best by predicted IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from scipy import ndimage

from backend.state.prompts import PromptError, Prompts
from gfsam.image import mask_from_frame, mask_to_frame
from gfsam.types import FRAME, PromptDecoder

LOW_RES = FRAME // 4  # 256: side of SAM's low-res logits and of its mask prompt
# Logit magnitude of a mask prompt rebuilt from a stored binary mask: SAM's own low-res logits
# of confident masks sit around this size, and the sign is all a binary mask can tell.
PROMPT_LOGIT = 8.0


@dataclass
class Outcome:
    """mask bool [H, W] (natural size), score in [0, 1], the rule applied, decoder calls made."""

    mask: np.ndarray
    score: float
    rule: str  # "new", "add", "reshape", "remove", "merge"
    decoded: int


def frame_points(points: list[tuple[float, float]], size: tuple[int, int]) -> np.ndarray:
    """Original pixels -> 1024-frame pixels. size is (H, W). Returns float32 [N, 2] (x, y)."""
    h, w = size
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return (xy * np.array([FRAME / w, FRAME / h])).astype(np.float32)


def frame_box(box: tuple[float, float, float, float], size: tuple[int, int]) -> np.ndarray:
    """(x0, y0, x1, y1) original pixels -> float32 [4] frame pixels."""
    return frame_points([box[:2], box[2:]], size).reshape(4)


def mask_prompt(mask: np.ndarray) -> np.ndarray:
    """A stored mask as SAM's mask prompt: squashed to the frame as targets are (nearest),
    averaged over 4 x 4 cells, then mapped to +-PROMPT_LOGIT.

    Args:
        mask: bool [H, W] at natural size.

    Returns:
        float32 [256, 256] logits (positive inside).
    """
    framed = mask_to_frame(mask).numpy().astype(np.float32)  # (S, S)
    cells = framed.reshape(LOW_RES, 4, LOW_RES, 4).mean(axis=(1, 3))  # (256, 256)
    return ((cells * 2 - 1) * PROMPT_LOGIT).astype(np.float32)


def instances(mask: np.ndarray) -> np.ndarray:
    """8-connected components: int32 [H, W], 0 background, 1..n instances."""
    labels, _ = ndimage.label(mask, structure=np.ones((3, 3), dtype=bool))
    return np.asarray(labels, dtype=np.int32)


def join(fragments: np.ndarray) -> np.ndarray:
    """Fragments of one object as one connected region: closed with a growing disk, within
    their convex hull, until they touch (the hull itself past a tenth of the image side).

    Args:
        fragments: bool [H, W], two or more 8-connected pieces.

    Returns:
        bool [H, W] containing `fragments`, one 8-connected piece.
    """
    h, w = fragments.shape
    ys, xs = np.nonzero(fragments)
    hull = np.zeros((h, w), dtype=np.uint8)
    points = cv2.convexHull(np.stack([xs, ys], axis=1).astype(np.int32))
    cv2.fillPoly(hull, [points], 1)
    radius = 1
    while radius <= max(h, w) // 10:
        disk = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * radius + 1, 2 * radius + 1))
        closed = cv2.morphologyEx(fragments.astype(np.uint8), cv2.MORPH_CLOSE, disk)
        joined = fragments | (closed.astype(bool) & hull.astype(bool))
        if int(instances(joined).max()) == 1:
            return joined
        radius *= 2
    return fragments | hull.astype(bool)


def _pixel(point: tuple[float, float], size: tuple[int, int]) -> tuple[int, int]:
    h, w = size
    return min(int(point[1]), h - 1), min(int(point[0]), w - 1)  # (row, col)


def refine(
    decoder: PromptDecoder,
    embedding: np.ndarray,
    prompts: Prompts,
    size: tuple[int, int],
    prior: np.ndarray | None = None,
    prior_score: float = 0.0,
) -> Outcome:
    """Apply the click to SAM (and to our prediction `prior` of the label, if any).

    Args:
        decoder: SAM prompt decoding. embedding: the target's SAM embedding.
        prompts: points and box in original pixels (`backend.state.prompts`).
        size: (H, W) natural size of the image (the target encoding's `image_size`).
        prior: bool [H, W], our prediction of the clicked label, or None.
        prior_score: its score (the answer's score when the click only removes instances).

    Raises:
        PromptError: only negative points and none of them on a predicted instance.
    """
    labels = np.asarray(prompts.positive, dtype=np.int64)
    pts = frame_points(prompts.points, size) if prompts.points else None
    box = frame_box(prompts.box, size) if prompts.box is not None else None
    wants_object = prompts.box is not None or any(prompts.positive)

    def decode(mask_in: np.ndarray | None) -> tuple[np.ndarray, float]:
        multimask = prompts.single_click and mask_in is None
        m, iou, _ = decoder.decode_prompts(
            embedding, pts, labels if pts is not None else None, box, mask_in, multimask=multimask
        )
        return mask_from_frame(m, size), float(np.clip(iou, 0.0, 1.0))

    if prior is None or not prior.any():
        if not wants_object:
            raise PromptError("only negative points: add a positive point or a box")
        mask, score = decode(None)
        return Outcome(mask, score, "new", 1)
    comps = instances(prior)
    hit = [int(comps[_pixel(p, size)]) for p in prompts.points]
    grow = {c for c, pos in zip(hit, prompts.positive, strict=True) if c and pos}
    drop = {c for c, pos in zip(hit, prompts.positive, strict=True) if c and not pos} - grow
    keep = prior & ~np.isin(comps, list(grow | drop))
    if len(grow) >= 2 and prompts.box is None and all(prompts.positive) and all(hit):
        # positive points only, on two or more fragments: they are one object (issue 20)
        return Outcome(keep | join(np.isin(comps, list(grow))), prior_score, "merge", 0)
    if grow:
        mask, score = decode(mask_prompt(np.isin(comps, list(grow))))
        return Outcome(keep | mask, score, "reshape", 1)
    if wants_object:
        mask, score = decode(None)
        return Outcome(keep | mask, score, "add", 1)
    if not drop:
        raise PromptError("only negative points, none on a predicted instance of this label")
    return Outcome(keep, prior_score, "remove", 0)
