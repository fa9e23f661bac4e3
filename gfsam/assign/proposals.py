"""Instance proposals, shot prototypes, thresholds and the two matching terms (`gfsam.assign`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from gfsam.encodings import Prediction, Reference
from gfsam.points import normalize_tokens
from gfsam.types import GRID, GFSAMConfig

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass(frozen=True)
class SplitParams:
    """Knobs of `assign_split` (defaults documented by their why and origin: none was fitted
    to a figure; all predate the tune/report halves of issue 17)."""

    # Components smaller than this (1024-frame pixels, ~0.006 % of the frame) are mask noise.
    # origin: reasoned, not fitted.
    min_area: int = 64
    # At most this many proposals per label, largest first: an image holds a few dozen
    # instances of a class at most, and a fragmented mask (hundreds of specks) must not cost
    # hundreds of full-frame masks, features and regions.
    # origin: reasoned (a cost bound after a random-weight run, commit 201615c), not fitted.
    max_proposals: int = 32
    # A proposal must lie mostly inside the label's own gated mask to be that label's instance.
    # origin: reasoned, not fitted.
    min_consistency: float = 0.5
    # Per-shot statistic (all K): threshold = mix * (median cosine of the shot's interior cells
    # to its prototype) + (1 - mix) * (high quantile of its background cells' cosine): halfway
    # between what the class looks like and what its surroundings look like.
    # origin: reasoned, not fitted (halfway).
    single_shot_mix: float = 0.5
    # origin: reasoned, not fitted.
    background_quantile: float = 0.9
    # Cells with an fg weight at least this are the shot's interior.
    # origin: reasoned, not fitted.
    interior: float = 0.5
    # Pooling weight = cell coverage ** this: boundary cells mix the object with its
    # surroundings, so pure cells should dominate the pooled feature (shots and proposals alike).
    # origin: reasoned, not fitted.
    pool_power: float = 2.0
    # K >= 2: threshold = min over shots of the leave-one-out similarity, minus this slack.
    # origin: reasoned, not fitted.
    loo_slack: float = 0.05
    # Used when the shot has no interior cell at all (a mask thinner than one cell).
    # origin: reasoned, not fitted.
    default_threshold: float = 0.5


@dataclass
class Proposal:
    """One instance proposal of one label, in the 1024 frame.

    Attributes:
        source: the label whose GF-SAM output it came from.
        mask: bool [S, S].
        feature: float32 [C] unit-length mask-pooled target feature.
        points: the source label's gated (state 1) prompts inside the mask.
        evidence: mean PNA ``filtered`` score of those prompts (0 when none).
    """

    source: str
    mask: np.ndarray
    feature: np.ndarray
    points: int
    evidence: float


def pool_features(tokens: np.ndarray, weights: np.ndarray, cfg: GFSAMConfig) -> np.ndarray:
    """Mask-pooled features.

    Args:
        tokens: [T, C] raw tokens of one image. weights: [N, T] non-negative cell weights.
        cfg: token normalisation of the pipeline.

    Returns:
        float32 [N, C] unit-length (zero where a weight row sums to 0).
    """
    raw = normalize_tokens(torch.from_numpy(np.asarray(tokens, dtype=np.float32)), cfg)
    unit = F.normalize(raw, dim=-1).numpy()  # (T, C)
    pooled = np.asarray(weights, dtype=np.float32) @ unit  # (N, C)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.maximum(norms, 1e-12)).astype(np.float32)


def cell_fractions(masks: np.ndarray) -> np.ndarray:
    """Area fraction of each 37x37 cell covered by each mask.

    Args:
        masks: bool [N, S, S].

    Returns:
        float32 [N, T].
    """
    m = torch.from_numpy(np.ascontiguousarray(masks, dtype=np.float32))[:, None]  # (N, 1, S, S)
    return F.adaptive_avg_pool2d(m, GRID).flatten(1).numpy()  # (N, T)


def shot_prototypes(
    references: Sequence[Reference], cfg: GFSAMConfig, params: SplitParams
) -> np.ndarray:
    """One prototype per shot: its tokens pooled with its fg cell weights ** ``pool_power``.

    Returns:
        float32 [K, C] unit-length.
    """
    w = [np.asarray(r.fg, dtype=np.float32)[None] ** params.pool_power for r in references]
    return np.concatenate(
        [pool_features(r.tokens, wk, cfg) for r, wk in zip(references, w, strict=True)]
    )


def _shot_statistic(ref: Reference, proto: np.ndarray, cfg: GFSAMConfig, p: SplitParams) -> float:
    """mix * median interior-cell cosine + (1 - mix) * high quantile of background-cell cosine."""
    fg = np.asarray(ref.fg)
    inside, outside = fg >= p.interior, fg <= 0.0  # (T,), (T,)
    if not inside.any() or not outside.any():
        return p.default_threshold
    eye = np.eye(len(fg), dtype=np.float32)
    pos = np.median(pool_features(ref.tokens, eye[inside], cfg) @ proto)
    neg = np.quantile(pool_features(ref.tokens, eye[outside], cfg) @ proto, p.background_quantile)
    return float(p.single_shot_mix * pos + (1 - p.single_shot_mix) * neg)


def calibrate_threshold(
    references: Sequence[Reference], cfg: GFSAMConfig, params: SplitParams
) -> float:
    """Acceptance threshold on class similarity for one label, from its shots alone.

    Every K: the per-shot statistic (`SplitParams.single_shot_mix`), smallest over shots; this
    is the documented K = 1 rule. K >= 2 also takes leave-one-out: each shot's prototype
    against the others' (max cosine); the smallest minus ``loo_slack`` (an instance as far
    from the other shots as the farthest shot still passes). The threshold is the lower of the
    two, so more shots never make a label stricter than its worst single shot. Recompute
    whenever the label's shots change (it depends on nothing else).

    Returns:
        Threshold in [-1, 1].
    """
    protos = shot_prototypes(references, cfg, params)  # (K, C)
    per_shot = min(
        _shot_statistic(r, pr, cfg, params) for r, pr in zip(references, protos, strict=True)
    )
    if len(references) < 2:
        return per_shot
    sims = protos @ protos.T  # (K, K)
    np.fill_diagonal(sims, -np.inf)
    return float(min(per_shot, sims.max(axis=1).min() - params.loo_slack))


def instance_proposals(
    label: str, pred: Prediction, tokens: np.ndarray, cfg: GFSAMConfig, params: SplitParams
) -> list[Proposal]:
    """Split one label's merged GF-SAM mask into instance proposals (8-connected components).

    Args:
        label: the label. pred: its `Prediction` on the target. tokens: [T, C] target tokens.
        cfg: token normalisation. params: ``min_area``, ``max_proposals``.

    Returns:
        At most ``max_proposals`` proposals, largest first; none when the label abstained.
    """
    seg = pred.segmentation
    if pred.abstained or not seg.mask.any():
        return []
    comp, n = ndimage.label(seg.mask, structure=EIGHT)
    areas = np.bincount(comp.ravel(), minlength=n + 1)[1:]  # (n,)
    keep = [k + 1 for k in np.argsort(-areas, kind="stable") if areas[k] >= params.min_area]
    keep = keep[: params.max_proposals]
    if not keep:
        return []
    masks = np.stack([comp == k for k in keep])  # (N, S, S)
    feats = pool_features(tokens, cell_fractions(masks) ** params.pool_power, cfg)  # (N, C)
    gated = seg.prompt_xy[seg.state == 1]  # (Q, 2)
    cell_score = seg.maps["filtered"][seg.points_xy[:, 1], seg.points_xy[:, 0]][seg.state == 1]
    out = []
    for mask, feat in zip(masks, feats, strict=True):
        inside = mask[gated[:, 1], gated[:, 0]] if len(gated) else np.zeros(0, dtype=bool)
        ev = float(cell_score[inside].mean()) if inside.any() else 0.0
        out.append(Proposal(label, mask, feat, int(inside.sum()), ev))
    return out


def class_similarity(features: np.ndarray, prototypes: np.ndarray) -> np.ndarray:
    """Max cosine of each proposal feature to a label's prototypes.

    Args:
        features: [N, C] unit-length. prototypes: [K, C] unit-length.

    Returns:
        float32 [N].
    """
    return (features @ prototypes.T).max(axis=1).astype(np.float32)


def mask_consistency(masks: np.ndarray, label_mask: np.ndarray) -> np.ndarray:
    """Share of each proposal covered by a label's gated (merged) mask.

    Args:
        masks: bool [N, S, S]. label_mask: bool [S, S].

    Returns:
        float32 [N] in [0, 1].
    """
    inter = (masks & label_mask[None]).reshape(len(masks), -1).sum(axis=1)
    area = masks.reshape(len(masks), -1).sum(axis=1)
    return (inter / np.maximum(area, 1)).astype(np.float32)
