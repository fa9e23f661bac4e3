"""Exact 1024 -> 37 bilinear downsampling that reads only the pixels it needs.

`F.interpolate(x, (37, 37), mode="bilinear")` without antialias reads, per output cell, the 2x2
source pixels around one sample point. So a mask is first gathered at those rows and columns
([R, R], R <= 2G) and then reduced with the interpolation weights, which are taken from
`F.interpolate` itself (applied to an identity image), so they are the weights torch uses.
"""

from __future__ import annotations

from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import Tensor

from gfsam.types import FRAME, GRID


@lru_cache(maxsize=2)
def axis_weights(align_corners: bool) -> tuple[Tensor, Tensor]:
    """Bilinear 1024 -> 37 weights along one axis.

    Args:
        align_corners: as in `F.interpolate`.

    Returns:
        (support, weights): [R] int64 source pixels with a non-zero weight, [G, R] float32.
    """
    eye = torch.eye(FRAME, dtype=torch.float32)[None, None]  # (1, 1, S, S)
    full = F.interpolate(eye, size=(GRID, FRAME), mode="bilinear", align_corners=align_corners)
    full = full[0, 0]  # (G, S): row i holds output row i's weights over the source rows
    support = torch.nonzero(full.abs().sum(dim=0) > 0).flatten()  # (R,)
    return support, full[:, support].contiguous()  # (R,), (G, R)


def gather_support(masks: Tensor, align_corners: bool = False) -> Tensor:
    """Gather the pixels that bilinear 1024 -> 37 reads.

    Args:
        masks: [B, S, S] any dtype.
        align_corners: as in `F.interpolate`.

    Returns:
        [B, R, R], rows and columns at the support pixels.
    """
    support, _ = axis_weights(align_corners)
    support = support.to(masks.device)
    return masks.index_select(1, support).index_select(2, support)  # (B, R, R)


def reduce_support(sampled: Tensor, align_corners: bool = False) -> Tensor:
    """Bilinear 37x37 maps from gathered pixels, equal to `F.interpolate(..., (37, 37))`.

    Args:
        sampled: [B, R, R] bool or float (from `gather_support`).
        align_corners: must match the gather.

    Returns:
        [B, T] float32.
    """
    _, w = axis_weights(align_corners)
    w = w.to(sampled.device)
    grid = w @ sampled.to(torch.float32) @ w.transpose(0, 1)  # (B, G, G)
    return grid.reshape(grid.shape[0], GRID * GRID)
