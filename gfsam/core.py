"""GF-SAM at token level: composes PNA, SAM prompting, PMC and both gates (`GFSAM.predict`).

The mask generator is injected (`mask_fn`), so SAM, SAM 2 or a test oracle can stand behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import numpy as np
import torch
from torch import Tensor

from gfsam.clustering import cluster_masks, coverage_matrix
from gfsam.gating import (
    merge_masks,
    overshoot_gate,
    point_states,
    positive_gate,
    positive_gate_bitwise,
)
from gfsam.points import (
    PNAMaps,
    cosine_similarity,
    normalize_tokens,
    pna_maps,
    prompt_pixels,
    reference_weights_batch,
    select_points,
)
from gfsam.resample import gather_support, reduce_support
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig, Segmentation

MaskFn = Callable[[np.ndarray], "Tensor | np.ndarray"]
Timings = dict[str, float]

# Official empty-reference guard (GFSAM.set_reference): a 14x14 square at the centre.
EMPTY_GUARD = slice(505, 519)


def _as_float_tensor(x: Tensor | np.ndarray, name: str, ndim: int) -> Tensor:
    t = torch.as_tensor(x)
    if t.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {tuple(t.shape)}")
    if t.shape[-2] != TOKENS:
        raise ValueError(f"{name} must have {TOKENS} tokens (37x37), got {t.shape[-2]}")
    return t.to(torch.float32)


@contextmanager
def timed_stage(timings: Timings | None, name: str, device: torch.device) -> Iterator[None]:
    """Add the seconds spent in the block to ``timings[name]`` (CUDA synchronised first)."""
    start = time.perf_counter()
    yield
    if timings is not None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - start


def guard_empty_references(ref_masks: Tensor) -> Tensor:
    """Apply the official guard: if all shots are empty, set the centre 14x14 square.

    Args:
        ref_masks: [K, S, S] bool.

    Returns:
        [K, S, S] bool (a copy when the guard fires).
    """
    if bool(ref_masks.any()):
        return ref_masks
    guarded = ref_masks.clone()
    guarded[:, EMPTY_GUARD, EMPTY_GUARD] = True
    return guarded


def segment_tokens(
    ref_tokens: Tensor | np.ndarray,
    ref_masks: Tensor | np.ndarray,
    tgt_tokens: Tensor | np.ndarray,
    mask_fn: MaskFn,
    cfg: GFSAMConfig | None = None,
    *,
    timings: Timings | None = None,
) -> Segmentation:
    """Run GF-SAM on raw tokens and 1024-frame reference masks (the parity entry point).

    Args:
        ref_tokens: [K, T, C] float32 raw patch tokens of the K references.
        ref_masks: [K, S, S] bool or 0/1 uint8 reference masks in the squashed 1024 frame.
        tgt_tokens: [T, C] float32 raw patch tokens of the target.
        mask_fn: prompt pixels int64 [P, 2] (x, y) -> bool [P, S, S] masks, one positive point
            per prompt.
        cfg: configuration; default `GFSAMConfig()` (abstains instead of the fallback).
        timings: optional dict that receives seconds per stage.

    Returns:
        Segmentation.
    """
    masks = torch.as_tensor(
        np.asarray(ref_masks) if not isinstance(ref_masks, Tensor) else ref_masks
    )
    if masks.ndim != 3 or tuple(masks.shape[1:]) != (FRAME, FRAME):
        raise ValueError(f"ref_masks must be [K, {FRAME}, {FRAME}], got {tuple(masks.shape)}")
    masks = guard_empty_references(masks > 0)
    fg, bg = reference_weights_batch(masks)  # (K, T) each
    return segment_weighted(ref_tokens, fg, bg, tgt_tokens, mask_fn, cfg, timings=timings)


def segment_weighted(
    ref_tokens: Tensor | np.ndarray,
    fg: Tensor,
    bg: Tensor,
    tgt_tokens: Tensor | np.ndarray,
    mask_fn: MaskFn,
    cfg: GFSAMConfig | None = None,
    *,
    timings: Timings | None = None,
) -> Segmentation:
    """Run GF-SAM with reference cell weights already computed (see `reference_weights`).

    Args:
        ref_tokens: [K, T, C] raw reference tokens. fg, bg: [K, T] soft cell weights.
        tgt_tokens: [T, C] raw target tokens; its device is the compute device.
        mask_fn, cfg, timings: as in `segment_tokens`.

    Returns:
        Segmentation.
    """
    cfg = cfg or GFSAMConfig()
    tgt = _as_float_tensor(tgt_tokens, "tgt_tokens", 2)
    device = tgt.device
    ref = _as_float_tensor(ref_tokens, "ref_tokens", 3).to(device)
    if ref.shape[-1] != tgt.shape[-1]:
        raise ValueError(f"channel mismatch: references {ref.shape[-1]}, target {tgt.shape[-1]}")
    fg, bg = fg.to(device, torch.float32), bg.to(device, torch.float32)
    if fg.shape != (ref.shape[0], TOKENS) or bg.shape != fg.shape:
        raise ValueError(f"fg/bg must be [{ref.shape[0]}, {TOKENS}], got {tuple(fg.shape)}")
    with timed_stage(timings, "point_selection", device):
        ref_n, tgt_n = normalize_tokens(ref, cfg), normalize_tokens(tgt, cfg)
        maps = pna_maps(ref_n, fg, bg, tgt_n, cfg)
        cells = select_points(maps.filtered, cfg)  # (P, 2)
        prompts = prompt_pixels(cells, cfg)  # (P, 2) numpy
    if cells.shape[0] == 0:
        return _empty_result(maps, cells, prompts)
    with timed_stage(timings, "mask_decoding", device):
        masks = _call_mask_fn(mask_fn, prompts, device)  # (P, S, S)
    return _cluster_gate_merge(masks, cells.to(device), prompts, maps, tgt_n, cfg, timings)


def _call_mask_fn(mask_fn: MaskFn, prompts: np.ndarray, device: torch.device) -> Tensor:
    out = mask_fn(prompts)
    masks = torch.as_tensor(out) if not isinstance(out, Tensor) else out
    expected = (prompts.shape[0], FRAME, FRAME)
    if tuple(masks.shape) != expected:
        raise ValueError(f"mask_fn returned {tuple(masks.shape)}, expected {expected}")
    return masks.to(device=device, dtype=torch.bool)


def _cluster_gate_merge(
    masks: Tensor,
    cells: Tensor,
    prompts: np.ndarray,
    maps: PNAMaps,
    tgt_n: Tensor,
    cfg: GFSAMConfig,
    timings: Timings | None,
) -> Segmentation:
    device = masks.device
    with timed_stage(timings, "clustering", device):
        n_clusters, labels_np = cluster_masks(coverage_matrix(masks, cells))
        labels = torch.as_tensor(labels_np, device=device)
    with timed_stage(timings, "gates", device):
        sampled = gather_support(masks)  # (P, R, R)
        gate = positive_gate_bitwise if cfg.bit_parity else positive_gate
        mu_or_masks = masks if cfg.bit_parity else reduce_support(sampled)  # (P, ...)
        pos = gate(mu_or_masks, labels, n_clusters, maps.s_pos_mean, maps.s_neg_mean, maps.s_mid)
        member = torch.nn.functional.one_hot(labels, n_clusters).transpose(0, 1)  # (L, P)
        union = (member.to(torch.float32) @ sampled.flatten(1).to(torch.float32)) > 0  # (L, R*R)
        mu_union = reduce_support(union.reshape(n_clusters, *sampled.shape[1:]))  # (L, T)
        flat = cells[:, 1] * GRID + cells[:, 0]  # (P,)
        point_sim = cosine_similarity(tgt_n[None], tgt_n[flat], cfg)[0]  # (T, P), once
        consistent = overshoot_gate(mu_union, point_sim, cells, labels)
        state = point_states(pos.fg, consistent)
    with timed_stage(timings, "merge", device):
        merged = merge_masks(masks, state, pos.cls_score, cfg)
        mask = merged.mask.cpu().numpy()
    filtered = maps.filtered
    used = state == 1 if merged.fallback_index < 0 else _one_hot(merged.fallback_index, state)
    score = (
        0.0 if merged.abstained else float(filtered[cells[used, 1] * GRID + cells[used, 0]].mean())
    )
    return Segmentation(
        mask=mask,
        points_xy=cells.cpu().numpy(),
        prompt_xy=prompts,
        cluster=labels_np,
        positive=pos.fg.cpu().numpy(),
        consistent=consistent.cpu().numpy(),
        state=state.cpu().numpy(),
        cls_score=pos.cls_score.cpu().numpy(),
        fallback=merged.fallback_index >= 0,
        abstained=merged.abstained,
        maps=_maps_numpy(maps),
        score=score,
    )


def _one_hot(index: int, like: Tensor) -> Tensor:
    out = torch.zeros_like(like, dtype=torch.bool)
    out[index] = True
    return out


def _maps_numpy(maps: PNAMaps) -> dict[str, np.ndarray]:
    named = {
        "s_pos_mean": maps.s_pos_mean,
        "s_pos_max": maps.s_pos_max,
        "s_neg_mean": maps.s_neg_mean,
        "filtered": maps.filtered,
    }
    return {k: v.reshape(GRID, GRID).cpu().numpy() for k, v in named.items()}


def _empty_result(maps: PNAMaps, cells: Tensor, prompts: np.ndarray) -> Segmentation:
    """N = 0: no prompt, an all-zero mask (the official code raises here; spec §8)."""
    empty_int = np.zeros(0, dtype=np.int64)
    return Segmentation(
        mask=np.zeros((FRAME, FRAME), dtype=bool),
        points_xy=cells.numpy(),
        prompt_xy=prompts,
        cluster=empty_int,
        positive=np.zeros(0, dtype=bool),
        consistent=np.zeros(0, dtype=bool),
        state=empty_int,
        cls_score=np.zeros(0, dtype=np.float32),
        fallback=False,
        abstained=True,
        maps=_maps_numpy(maps),
        score=0.0,
    )
