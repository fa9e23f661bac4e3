"""Shared types of the GF-SAM library: the configuration and the token-level result.

Dimension glossary (used in every docstring and shape comment of `gfsam`):

- ``G``: side of the feature engine's patch grid, fixed at 37 (`GRID`) for every engine: the
  token-level stages (PNA, point selection, prompts, PMC, both gates, discovery) are written
  for it. A feature engine is sized to give it (``EncoderSpec.grid`` = input / patch): DINOv2
  518 px / patch 14, DINOv3 592 px / patch 16; `GFSAM` refuses any other.
- ``T``: number of grid cells, ``G * G`` = 1369. Cell ``(x, y)`` (x = column) has flat index
  ``y * G + x`` (row-major, as DINOv2 and DINOv3 emit their patch tokens).
- ``C``: token channels (1024 for ViT-L, 384 for ViT-S; anything in tests).
- ``E'``: channels of a mask engine's stored image embedding on its 64 x 64 map: SAM 256;
  SAM 2.1 1024 (its image embedding and two high-resolution maps, packed; see
  `gfsam.encoders.sam2_hiera`).
- ``K``: reference shots. ``P``: selected points (= prompts = SAM masks), ``P <= max_points``.
- ``L``: clusters of points. ``S``: side of the square working frame, 1024 px (SAM's input).
- ``H, W``: pixels of an original image.

Coordinates are always ``(x, y)``: grid cells in ``[0, G)``, prompt pixels in ``[0, S)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

GRID = 37
TOKENS = GRID * GRID
FRAME = 1024


@runtime_checkable
class PromptDecoder(Protocol):
    """A mask engine's prompt decoder over a cached image embedding (`SamEncoder.decode_prompts`,
    `Sam2Encoder.decode_prompts`): the one interface of clicks, discovery and the worker's model
    contract.

    Args of `decode_prompts`: embedding float32 [E', 64, 64] (or [1, E', 64, 64]) as the
    engine's ``embed`` made it (SAM: E' = 256; SAM 2.1: 1024, packed); points_xy
    float [N, 2] (x, y) in the S frame with point_labels int [N] (1 positive, 0 negative; None:
    all positive); box_xyxy float [4] frame pixels; mask_logits float32 [256, 256] (SAM's mask
    prompt); multimask: SAM's three-mask output, best by predicted IoU. Returns (mask bool
    [S, S], predicted IoU, low-res logits float32 [256, 256]).

    `decode_boxes(embedding, points_xy float [B, 2], boxes_xyxy float [B, 4])`: one mask per
    (positive point, box) pair, all pairs in one decoder call ("find all like this",
    `gfsam.find_all`). Returns (masks bool [B, S, S], predicted IoU float32 [B]).
    """

    def decode_prompts(
        self,
        embedding: np.ndarray,
        points_xy: np.ndarray | None = None,
        point_labels: np.ndarray | None = None,
        box_xyxy: np.ndarray | None = None,
        mask_logits: np.ndarray | None = None,
        *,
        multimask: bool = False,
    ) -> tuple[np.ndarray, float, np.ndarray]: ...

    def decode_boxes(
        self, embedding: np.ndarray, points_xy: np.ndarray, boxes_xyxy: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass(frozen=True)
class GFSAMConfig:
    """Algorithm switches. ``GFSAMConfig.faithful()`` reproduces the official code exactly.

    The default differs from faithful in one respect only: ``fallback=False`` (abstain), because a
    labeling tool must not paint a class into an image that lacks it. Every other deviation from
    the official behaviour is a named, opt-in option.
    """

    # Official cap on prompts "for efficiency" (GFSAM.find_points); N = floor(sum F) above it.
    max_points: int = 128
    # Official quirk: F.normalize(dim=1) on [B, T, C] L2-normalises each channel over the T tokens
    # of an image, not each token over its channels. It produced the published numbers.
    token_axis_norm: bool = True
    # Opt-in fix: L2-normalise each token over its channels (what Matcher does). Applied instead of
    # the token-axis quirk when set.
    per_token_norm: bool = False
    # Opt-in: the paper's ReLU on the cosine correlation (the code uses a plain cosine).
    relu_similarity: bool = False
    # Opt-in fix: prompt at the patch centre (x + 0.5) * S / G instead of the official top-left
    # corner floor(x * S / G).
    centred_prompts: bool = False
    # Official: when no point passes both gates, return the "best" one-gate mask. Off by default:
    # abstain (empty mask, flagged) instead.
    fallback: bool = False
    # Verification only (slow): mirror the official float32 ops of positive gating exactly
    # (full-mask F.interpolate, per-cluster torch.argsort on the CPU, torch sums), so that even
    # points whose outcome hinges on argsort tie order or float32 saturation match bit for bit.
    bit_parity: bool = False
    # Official decoder batch (segment_anything.utils.amg.batch_iterator(64, ...)); only a memory
    # knob, results do not depend on it.
    prompt_batch: int = 64

    def __post_init__(self) -> None:
        if self.max_points < 1:
            raise ValueError(f"max_points must be >= 1, got {self.max_points}")
        if self.prompt_batch < 1:
            raise ValueError(f"prompt_batch must be >= 1, got {self.prompt_batch}")
        if self.token_axis_norm and self.per_token_norm:
            raise ValueError("token_axis_norm and per_token_norm are exclusive; pick one")

    @classmethod
    def faithful(cls) -> GFSAMConfig:
        """The official code's behaviour, quirks and fallback included (parity mode)."""
        return cls(fallback=True)


@dataclass
class Segmentation:
    """Token-level result of one GF-SAM run on one target (all arrays numpy, on the CPU).

    Attributes:
        mask: bool [S, S], the merged prediction in the squashed 1024 frame.
        points_xy: int64 [P, 2], selected grid cells (x, y) in the official x-major order.
        prompt_xy: int64 [P, 2], the prompt pixels handed to the mask function.
        cluster: int64 [P], weak-component label of each point, numbered by first member.
        positive: bool [P], accepted by positive gating (mask growth).
        consistent: bool [P], self-consistent after the per-cluster vote (overshooting gating).
        state: int64 [P], 1 = both gates, 2 = exactly one, 0 = neither.
        cls_score: float32 [P], official per-point growth score (pos - neg of the cluster's last
            growth step); used only by the fallback.
        fallback: True when the official fallback produced ``mask``.
        abstained: True when no mask passed both gates and the config abstains (mask is empty).
        maps: float32 [G, G] maps: ``s_pos_mean``, ``s_pos_max``, ``s_neg_mean``, ``filtered``.
        score: confidence in [0, 1]: mean of ``filtered`` over the points in state 1 (0 when none).
    """

    mask: np.ndarray
    points_xy: np.ndarray
    prompt_xy: np.ndarray
    cluster: np.ndarray
    positive: np.ndarray
    consistent: np.ndarray
    state: np.ndarray
    cls_score: np.ndarray
    fallback: bool
    abstained: bool
    maps: dict[str, np.ndarray] = field(default_factory=dict)
    score: float = 0.0

    @property
    def n_points(self) -> int:
        return int(self.points_xy.shape[0])

    @property
    def n_clusters(self) -> int:
        return int(self.cluster.max()) + 1 if self.cluster.size else 0
