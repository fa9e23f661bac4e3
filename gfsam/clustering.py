"""Point-Mask Clustering (PMC): the coverage graph and its weak components (spec §6.1)."""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import connected_components
from torch import Tensor

from gfsam.types import FRAME, GRID


@lru_cache(maxsize=1)
def nearest_grid_index() -> np.ndarray:
    """Source pixel that torch's legacy 'nearest' reads for each of the G output cells.

    Derived from `F.interpolate` itself (on a ramp), so it matches the official
    `F.interpolate(masks, (37, 37), mode='nearest')` exactly.

    Returns:
        [G] int64 pixel indices in [0, S).
    """
    ramp = torch.arange(FRAME, dtype=torch.float32).reshape(1, 1, FRAME, 1)
    sampled = F.interpolate(ramp, size=(GRID, 1), mode="nearest")  # (1, 1, G, 1)
    return sampled.reshape(GRID).to(torch.int64).numpy()


def coverage_matrix(masks: Tensor, cells: Tensor) -> np.ndarray:
    """A[l, m] = 1 when mask l, nearest-sampled on the grid, covers point m's cell.

    Port of `GFSAM.mask_cluster`. Only the P sampled pixels of each mask are read, never the
    full 37x37 downsample.

    Args:
        masks: [P, S, S] bool masks, one per point.
        cells: [P, 2] int64 grid cells (x, y).

    Returns:
        [P, P] bool numpy.
    """
    idx = torch.as_tensor(nearest_grid_index(), device=masks.device)
    cells = cells.to(masks.device)
    rows, cols = idx[cells[:, 1]], idx[cells[:, 0]]  # (P,), (P,)
    return masks[:, rows, cols].cpu().numpy()  # (P, P): mask l at point m


def cluster_masks(coverage: np.ndarray) -> tuple[int, np.ndarray]:
    """Weakly connected components of the point-mask graph (`scipy.sparse.csgraph`).

    Args:
        coverage: [P, P] bool adjacency (diagonal irrelevant for weak components).

    Returns:
        (L, labels): number of clusters and [P] int64 labels, numbered by their first member
        in point order.
    """
    if coverage.shape[0] == 0:
        return 0, np.zeros(0, dtype=np.int64)
    n, labels = connected_components(csr_matrix(coverage), directed=True, connection="weak")
    return int(n), _renumber_by_first_member(labels)


def _renumber_by_first_member(labels: np.ndarray) -> np.ndarray:
    """Relabel so that cluster ids appear in increasing order of their first member."""
    _, first = np.unique(labels, return_index=True)
    order = np.argsort(first)  # old labels sorted by first appearance
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    return remap[labels].astype(np.int64)
