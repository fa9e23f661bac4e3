"""Shot policy of the correction loop: which human masks become references (pure functions).

The worker applies these rules to Label Studio annotations (`worker/correction/shots.py`); the
evaluation
harness's replay (`gfsam.eval`) applies the very same functions to ground-truth masks, so what
it measures is the backend's policy, not a copy of it.

Rules:
- an empty mask is never a shot;
- a label without shots takes the mask as its **seed**;
- otherwise the mask becomes a **correction** unless our prediction for that image matched it
  (IoU >= ``unchanged_iou``): an accepted prediction teaches nothing new. No prediction of ours
  for the image at all: it is a correction;
- at most ``max_shots`` per label: the seed stays, the oldest correction is dropped (the seed
  anchors the class; recent corrections show what the model still gets wrong).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

T = TypeVar("T")


@dataclass(frozen=True)
class ShotPolicy:
    """How many shots a label keeps and when a human mask counts as new information."""

    # Shots per label (GF-SAM's few-shot setting; 5 is the largest the paper evaluates).
    max_shots: int = 5
    # A human mask this close to our prediction was "accepted", not corrected: no new shot.
    unchanged_iou: float = 0.99

    def __post_init__(self) -> None:
        if self.max_shots < 1:
            raise ValueError(f"max_shots must be >= 1, got {self.max_shots}")
        if not 0.0 <= self.unchanged_iou <= 1.0:
            raise ValueError(f"unchanged_iou must be in [0, 1], got {self.unchanged_iou}")


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks; 1.0 when both are empty.

    Args:
        a: bool [H, W].
        b: bool [H, W].

    Raises:
        ValueError: the shapes differ.
    """
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    union = int(np.count_nonzero(a | b))
    if union == 0:
        return 1.0
    return int(np.count_nonzero(a & b)) / union


def becomes_shot(
    mask: np.ndarray, *, has_shots: bool, predicted: np.ndarray | None, policy: ShotPolicy
) -> bool:
    """Whether a human mask of one label on one image becomes a new shot of that label.

    Args:
        mask: bool [H, W], the human mask of the label (all its regions OR-ed).
        has_shots: the label already has at least one shot.
        predicted: bool [H, W], our prediction of the label on that image (empty where we
            predicted nothing for the label), or None when we predicted nothing for the image.
        policy: uses ``unchanged_iou``.

    Returns:
        True for a seed (no shots yet) or a correction; False for an empty mask or an accepted
        prediction.
    """
    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        return False
    if not has_shots or predicted is None or np.shape(predicted) != mask.shape:
        return True
    return mask_iou(predicted, mask) < policy.unchanged_iou


def trim_shots(shots: Sequence[T], max_shots: int) -> list[T]:
    """Keep at most `max_shots`, given in arrival order: the seed (first) stays, the oldest
    corrections (right after it) go.

    Args:
        shots: one label's shots, oldest first.
        max_shots: the cap (>= 1).

    Returns:
        A new list of at most `max_shots` shots, order kept.
    """
    if max_shots < 1:
        raise ValueError(f"max_shots must be >= 1, got {max_shots}")
    out = list(shots)
    while len(out) > max_shots:
        del out[1]
    return out
