"""Positive-Negative Alignment (PNA): similarity maps and point selection (spec §3-§4).

Every function is a pure function of tensors. Shapes use the glossary of `gfsam.types`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gfsam.resample import gather_support, reduce_support
from gfsam.types import FRAME, GRID, GFSAMConfig

# Epsilons of the official code (GFSAM.generate_pixelwise_comparison / generate_prior / predict).
COSINE_EPS = 1e-7
WEIGHT_EPS = 1e-7
MINMAX_EPS = 1e-6


@dataclass
class PNAMaps:
    """The 37x37 maps of PNA, flattened to [T] float32 (row-major cells).

    Attributes:
        s_pos_mean: S+mean, mask-weighted mean similarity, averaged over shots.
        s_pos_max: S+max, mask-weighted max similarity, averaged over shots.
        s_neg_mean: S-mean, background-weighted mean similarity, averaged over shots.
        filtered: F = minmax(S+mean * S+max) where minmax(S-mean) <= it, else 0.
        s_mid: scalar (max + min) / 2 of S+mean, used by positive gating.
    """

    s_pos_mean: Tensor
    s_pos_max: Tensor
    s_neg_mean: Tensor
    filtered: Tensor
    s_mid: Tensor


def normalize_tokens(tokens: Tensor, cfg: GFSAMConfig) -> Tensor:
    """Normalise raw DINOv2 tokens as configured (port of `GFSAM.extract_img_feats`; spec §3).

    Args:
        tokens: [..., T, C] float32 raw patch tokens of one image per leading index.
        cfg: ``token_axis_norm`` (official quirk) divides each channel by its L2 norm over the T
            tokens of its image; ``per_token_norm`` divides each token by its L2 norm over C.

    Returns:
        [..., T, C] float32.
    """
    if cfg.token_axis_norm:
        return F.normalize(tokens, p=2.0, dim=-2)
    if cfg.per_token_norm:
        return F.normalize(tokens, p=2.0, dim=-1)
    return tokens


def cosine_similarity(ref: Tensor, tgt: Tensor, cfg: GFSAMConfig) -> Tensor:
    """Cosine similarity of every reference cell with every target cell (spec §4).

    Args:
        ref: [K, T, C] normalised reference tokens.
        tgt: [T, C] normalised target tokens.
        cfg: ``relu_similarity`` clamps negative similarities to 0 (paper's Eq. 1).

    Returns:
        [K, T_ref, T_tgt] float32, <a, b> / (|a| |b| + 1e-7).
    """
    sim = torch.matmul(ref, tgt.transpose(0, 1))  # (K, Tr, Tt) dot products
    norms = ref.norm(dim=-1)[:, :, None] * tgt.norm(dim=-1)[None, None, :]  # (K, Tr, Tt)
    sim.div_(norms.add_(COSINE_EPS))  # in place: same arithmetic, two fewer [K, T, T] buffers
    return sim.clamp_min_(0.0) if cfg.relu_similarity else sim


def reference_weights(mask: Tensor | np.ndarray) -> tuple[Tensor, Tensor]:
    """Soft foreground and background cell weights of one reference mask (`generate_prior`).

    Args:
        mask: [S, S] bool or 0/1 mask in the squashed 1024 frame (numpy or torch).

    Returns:
        (fg, bg): [T] float32 each, bilinear (align_corners=True) samples of mask and 1 - mask.
    """
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
    if m.ndim != 2:
        raise ValueError(f"reference mask must be [{FRAME}, {FRAME}], got {tuple(m.shape)}")
    fg, bg = reference_weights_batch(m[None])
    return fg[0], bg[0]


def reference_weights_batch(masks: Tensor) -> tuple[Tensor, Tensor]:
    """`reference_weights` of K masks at once.

    Args:
        masks: [K, S, S] bool or 0/1.

    Returns:
        (fg, bg): [K, T] float32 each.
    """
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (FRAME, FRAME):
        raise ValueError(f"reference mask must be [{FRAME}, {FRAME}], got {tuple(masks.shape[1:])}")
    sampled = gather_support(masks, align_corners=True) > 0  # (K, R, R) only the read pixels
    fg = reduce_support(sampled, align_corners=True)  # (K, T)
    bg = reduce_support(~sampled, align_corners=True)  # (K, T) same as 1 - mask, exactly
    return fg, bg


def _weighted_mean(weighted: Tensor, w: Tensor) -> Tensor:
    """Per-shot weighted mean over reference cells (`generate_prior`), as the official ops.

    Args:
        weighted: [K, Tr, Tt] similarities already multiplied by the weights. w: [K, Tr].

    Returns:
        [K, Tt]: mean_r(w * sim) / (mean_r(w) + 1e-7).
    """
    return weighted.mean(dim=1) / (w.mean(dim=1, keepdim=True) + WEIGHT_EPS)


def _minmax(x: Tensor) -> Tensor:
    return (x - x.min()) / (x.max() - x.min() + MINMAX_EPS)


def _shot_maps(
    ref: Tensor, fg: Tensor, bg: Tensor, tgt: Tensor, cfg: GFSAMConfig
) -> tuple[Tensor, Tensor, Tensor]:
    """S+mean, S+max and S-mean of one shot from one similarity matrix.

    Args:
        ref: [1, T, C] normalised shot tokens. fg, bg: [1, T]. tgt: [T, C].

    Returns:
        Three [T] maps.
    """
    sim = cosine_similarity(ref, tgt, cfg)  # (1, T, T)
    weighted = sim * fg[:, :, None]  # (1, T, T)
    pos_mean = _weighted_mean(weighted, fg)[0]  # (T,)
    pos_max = weighted.amax(dim=1)[0]  # (T,): the weight multiplies before the max
    neg_mean = _weighted_mean(torch.mul(sim, bg[:, :, None], out=weighted), bg)[0]  # reuse buffer
    return pos_mean, pos_max, neg_mean


def pna_maps(ref: Tensor, fg: Tensor, bg: Tensor, tgt: Tensor, cfg: GFSAMConfig) -> PNAMaps:
    """Compute S+mean, S+max, S-mean, s_mid and the filtered map F (`GFSAM.predict`; spec §4).

    One similarity matrix per shot is shared by the foreground and background maps; per-shot maps
    are averaged over shots (spec §9). Shots are processed one at a time on purpose: a shot's
    [T, T] matrix (7.5 MB) stays in cache through its five passes, which halves the time of a
    5-shot set against one [K, T, T] batch.

    Args:
        ref: [K, T, C] normalised reference tokens. fg, bg: [K, T] cell weights.
        tgt: [T, C] normalised target tokens.
        cfg: algorithm switches.

    Returns:
        PNAMaps with [T] maps.
    """
    shots = [
        _shot_maps(ref[k : k + 1], fg[k : k + 1], bg[k : k + 1], tgt, cfg)
        for k in range(ref.shape[0])
    ]
    s_pos_mean, s_pos_max, s_neg_mean = (
        torch.stack(m).mean(dim=0) for m in zip(*shots, strict=True)
    )
    s_mid = (s_pos_mean.max() + s_pos_mean.min()) / 2
    q = _minmax(s_pos_mean * s_pos_max)  # (T,)
    n = _minmax(s_neg_mean)
    filtered = torch.where(n > q, torch.zeros_like(q), q)  # strict: N > Q drops the cell
    return PNAMaps(s_pos_mean, s_pos_max, s_neg_mean, filtered, s_mid)


def count_points(filtered: Tensor, cfg: GFSAMConfig) -> int:
    """Number of prompts N = floor(sum F), capped, and 1 when 0 < sum < 1 (`find_points`)."""
    total = float(filtered.sum())
    n = min(int(total), cfg.max_points)
    return 1 if n == 0 and total > 0 else n


def select_points(filtered: Tensor, cfg: GFSAMConfig) -> Tensor:
    """Pick the top-N cells of F and order them x-major, then by y (`GFSAM.find_points`).

    Args:
        filtered: [T] float32 filtered map F in [0, 1).
        cfg: uses ``max_points``.

    Returns:
        [P, 2] int64 cells (x, y), sorted by x then y; P == 0 when F sums to 0.
    """
    n = count_points(filtered, cfg)
    if n == 0:
        return torch.zeros((0, 2), dtype=torch.int64)
    flat = torch.topk(filtered.cpu(), n).indices  # (P,) flat index y * G + x
    xs, ys = flat % GRID, flat // GRID
    order = torch.argsort(xs * GRID + ys)  # x-major, then y (as np.argwhere(hot.T))
    return torch.stack([xs[order], ys[order]], dim=1)  # (P, 2)


def prompt_pixels(cells: Tensor, cfg: GFSAMConfig) -> np.ndarray:
    """Map grid cells to SAM prompt pixels in the 1024 frame (spec §3).

    Official: floor(x * 1024 / 37), the top-left corner of the patch (float64 scale, then int
    truncation). ``centred_prompts`` uses the patch centre floor((x + 0.5) * 1024 / 37).

    Args:
        cells: [P, 2] int64 (x, y).

    Returns:
        [P, 2] int64 numpy pixels (x, y).
    """
    xy = cells.cpu().numpy().astype(np.float64)
    if cfg.centred_prompts:
        xy = xy + 0.5
    return (xy * (FRAME / GRID)).astype(np.int64)
