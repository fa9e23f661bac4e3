"""PMC stage (gfsam/clustering.py): coverage graph and weak components."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from gfsam.clustering import cluster_masks, coverage_matrix, nearest_grid_index
from gfsam.types import FRAME, GRID


def test_nearest_index_is_the_prompt_pixel() -> None:
    expected = (np.arange(GRID) * FRAME / GRID).astype(np.int64)  # floor(i * 1024 / 37)
    np.testing.assert_array_equal(nearest_grid_index(), expected)


def test_coverage_matches_official_nearest_downsample() -> None:
    masks = torch.rand(5, FRAME, FRAME) > 0.5
    cells = torch.tensor([[0, 0], [3, 9], [36, 1], [17, 17], [8, 36]])
    grid = F.interpolate(masks.float()[:, None], (GRID, GRID), mode="nearest")[:, 0] > 0
    expected = grid[:, cells[:, 1], cells[:, 0]].numpy()  # A[l, m] = mask l at cell m
    np.testing.assert_array_equal(coverage_matrix(masks, cells), expected)


def _disc_masks(cells: list[tuple[int, int]], covers: dict[int, list[int]]) -> torch.Tensor:
    """Mask l covers exactly the prompt pixels of the points listed in covers[l]."""
    idx = nearest_grid_index()
    masks = torch.zeros(len(cells), FRAME, FRAME, dtype=torch.bool)
    for owner, members in covers.items():
        for m in members:
            x, y = cells[m]
            masks[owner, idx[y], idx[x]] = True
    return masks


def test_weak_components_numbered_by_first_member() -> None:
    cells = [(0, 0), (1, 0), (2, 0), (3, 0), (4, 0)]
    # 0 -> 3 (directed), 4 -> 1; 2 alone. Weak components: {0, 3}, {1, 4}, {2}
    covers = {0: [0, 3], 1: [1], 2: [2], 3: [3], 4: [4, 1]}
    a = coverage_matrix(_disc_masks(cells, covers), torch.tensor(cells))
    n, labels = cluster_masks(a)
    assert n == 3 and labels.tolist() == [0, 1, 2, 0, 1]


def test_components_do_not_depend_on_the_diagonal() -> None:
    rng = np.random.default_rng(0)
    a = rng.random((30, 30)) > 0.93
    with_diag, without = a.copy(), a.copy()
    np.fill_diagonal(with_diag, True)
    np.fill_diagonal(without, False)
    assert cluster_masks(with_diag)[1].tolist() == cluster_masks(without)[1].tolist()


def test_no_points_no_clusters() -> None:
    n, labels = cluster_masks(np.zeros((0, 0), bool))
    assert n == 0 and labels.shape == (0,)
