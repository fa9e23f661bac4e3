"""Discovery stage 1-2: free cells, window seeds, k-means, merged clusters, regions."""

from __future__ import annotations

import numpy as np

from gfsam.discover import (
    DiscoverParams,
    cluster_regions,
    free_cells,
    spherical_kmeans,
    token_clusters,
    unit_tokens,
    window_seeds,
)
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig

C = 8


def one_hot_grid(squares: list[tuple[int, int, int, int, int]]) -> np.ndarray:
    """[T, C] tokens: channel 0 everywhere, channel ch on cells x0..x1-1, y0..y1-1."""
    grid = np.zeros((GRID, GRID, C), dtype=np.float32)
    grid[..., 0] = 1.0
    for x0, y0, x1, y1, ch in squares:
        grid[y0:y1, x0:x1] = 0.0
        grid[y0:y1, x0:x1, ch] = 1.0
    return grid.reshape(TOKENS, C)


def cells_of(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    g = np.zeros((GRID, GRID), dtype=bool)
    g[y0:y1, x0:x1] = True
    return g.ravel()


def test_free_cells_are_the_mostly_uncovered_ones() -> None:
    covered = np.zeros((FRAME, FRAME), dtype=bool)
    covered[:, :512] = True  # left half
    free = free_cells(covered, DiscoverParams()).reshape(GRID, GRID)
    assert not free[:, :18].any()
    assert free[:, 19:].all()


def test_window_seeds_one_per_window_with_enough_free_cells() -> None:
    unit = unit_tokens(one_hot_grid([]), GFSAMConfig())
    all_free = np.ones(TOKENS, dtype=bool)
    # side 18, stride 9: origins 0, 9, 18 and the flush 19 -> 4 x 4 windows
    assert window_seeds(unit, all_free, 18, DiscoverParams()).shape == (16, C)
    top = cells_of(0, 0, GRID, 9)  # only the top 9 rows free: windows at y = 0 are half free
    assert window_seeds(unit, top, 18, DiscoverParams()).shape == (4, C)
    assert window_seeds(unit, np.zeros(TOKENS, dtype=bool), 18, DiscoverParams()).shape == (0, C)


def test_window_seeds_are_each_windows_mean_free_token() -> None:
    """The box sums equal averaging each window's free tokens one by one (float32 rounding),
    one scale alone or several from one matmul."""
    from gfsam.discover.clusters import scale_seeds

    rng = np.random.default_rng(5)
    params = DiscoverParams()
    for trial in range(6):
        unit = rng.standard_normal((TOKENS, 32)).astype(np.float32)
        unit /= np.linalg.norm(unit, axis=1, keepdims=True)
        free = rng.random(TOKENS) < (0.3, 0.6, 0.9)[trial % 3]
        for window in (18, 12, 8, GRID, 2):
            starts = sorted({*range(0, GRID - window + 1, max(window // 2, 1)), GRID - window})
            grid_free, grid_tok = free.reshape(GRID, GRID), unit.reshape(GRID, GRID, -1)
            expected = []
            for y in starts:
                for x in starts:
                    inside = grid_free[y : y + window, x : x + window]
                    if inside.mean() >= params.min_window_free:
                        mean = grid_tok[y : y + window, x : x + window][inside].mean(axis=0)
                        expected.append(mean / np.linalg.norm(mean))
            got = window_seeds(unit, free, window, params)
            assert got.shape == (len(expected), 32)
            if expected:
                np.testing.assert_allclose(got, np.stack(expected), rtol=0, atol=1e-6)
        # every scale from one matmul: each scale's seeds as computed alone
        kept = np.where(free[:, None], unit, np.float32(0))
        windows = [18, 12, 8, GRID, 2]
        together = scale_seeds(kept, free, windows, params)
        for seeds, window in zip(together, windows, strict=True):
            alone = window_seeds(unit, free, window, params)
            assert seeds.shape == alone.shape
            np.testing.assert_allclose(seeds, alone, rtol=0, atol=1e-6)


def test_spherical_kmeans_separates_two_directions() -> None:
    x = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    seeds = np.array([[0.6, 0.8], [0.8, 0.6]], dtype=np.float32)
    assert spherical_kmeans(x, seeds, 10).tolist() == [1, 1, 0, 0]


def test_clusters_of_all_scales_merge_into_object_and_background() -> None:
    unit = unit_tokens(one_hot_grid([(10, 10, 20, 20, 1)]), GFSAMConfig())
    clusters = token_clusters(unit, np.ones(TOKENS, dtype=bool), DiscoverParams())
    assert len(clusters) == 2
    assert any(np.array_equal(c, cells_of(10, 10, 20, 20)) for c in clusters)


def test_regions_split_a_cluster_into_instances_and_respect_the_covered_area() -> None:
    tokens = one_hot_grid([(2, 2, 8, 8, 1), (25, 25, 31, 31, 1)])  # two instances, one class
    covered = np.zeros((FRAME, FRAME), dtype=bool)
    regions = cluster_regions(tokens, covered, GFSAMConfig(), DiscoverParams())
    objects = [r for r in regions if r.feature[1] > 0.9]
    assert sorted(int(r.cells.sum()) for r in objects) == [36, 36]
    assert len(regions) == 3  # + the background around them
    covered[: 8 * FRAME // GRID + 28, : 8 * FRAME // GRID + 28] = True  # the first instance
    kept = cluster_regions(tokens, covered, GFSAMConfig(), DiscoverParams())
    assert [np.array_equal(r.cells, cells_of(25, 25, 31, 31)) for r in kept].count(True) == 1
    assert not any(r.cells[cells_of(2, 2, 8, 8)].any() for r in kept)
    everywhere = cluster_regions(tokens, covered, GFSAMConfig(), DiscoverParams(), restrict=False)
    assert len(everywhere) == 3


def _classic_kmeans(x: np.ndarray, seeds: np.ndarray, iters: int) -> np.ndarray:
    """The textbook loop `spherical_kmeans` replaced: every centroid and every similarity
    recomputed each round."""
    centroids = seeds.copy()
    assign = np.argmax(x @ centroids.T, axis=1)
    for _ in range(iters):
        for k in range(len(centroids)):
            members = x[assign == k]
            if len(members):
                mean = members.sum(axis=0)
                centroids[k] = mean / max(float(np.linalg.norm(mean)), 1e-12)
        new = np.argmax(x @ centroids.T, axis=1)
        if np.array_equal(new, assign):
            break
        assign = new
    return assign


def test_spherical_kmeans_equals_the_classic_loop() -> None:
    """Recomputing only the clusters that moved gives the classic loop's clusters (noisy
    classes, the three seed counts discovery's windows give, clusters that move for rounds)."""
    rng = np.random.default_rng(7)
    for k, noise in [(16, 1.5), (36, 1.0), (81, 2.0), (5, 3.0)]:
        classes = rng.standard_normal((12, 64)).astype(np.float32)
        x = classes[rng.integers(0, 12, 600)] + noise * rng.standard_normal((600, 64))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        seeds = x[rng.choice(600, k, replace=False)]
        assert np.array_equal(spherical_kmeans(x, seeds, 10), _classic_kmeans(x, seeds, 10))


def test_member_sums_and_cluster_means_equal_numpys_to_the_bit() -> None:
    """The sparse indicator product adds each cluster's members in numpy's order: its sums (the
    k-means centroids) and the means built from them (the merge's centroids) are numpy's own,
    listed clusters only, in the order asked, an empty one zeros."""
    from gfsam.discover.clusters import member_sums

    rng = np.random.default_rng(11)
    x = rng.standard_normal((1369, 1024)).astype(np.float32)
    assign = rng.integers(0, 81, len(x))
    assign[assign == 40] = 39  # cluster 40 has no members
    listed = np.array([80, 3, 40, 0, 39])
    sums = member_sums(x, assign, listed)
    assert sums.dtype == np.float32 and sums.shape == (5, 1024)
    for row, k in zip(sums, listed, strict=True):
        assert np.array_equal(row, x[assign == k].sum(axis=0))
    ids, counts = np.unique(assign, return_counts=True)
    means = (member_sums(x, assign, ids) / counts[:, None]).astype(np.float32)
    assert np.array_equal(means, np.stack([x[assign == k].mean(axis=0) for k in ids]))
    wide = x[:50].astype(np.float64)  # float64 vectors sum in float64
    got = member_sums(wide, assign[:50], np.array([3, 80]))
    assert got.dtype == np.float64
    assert np.array_equal(got[0], wide[assign[:50] == 3].sum(axis=0))


def test_kmeans_runs_in_lockstep_equal_the_runs_one_by_one() -> None:
    """Several seed sets over the same vectors (discovery's three window scales): each run's
    clusters are what it gives alone, whether it converges first, last or not at all."""
    from gfsam.discover.clusters import kmeans_runs

    rng = np.random.default_rng(13)
    for noise, iters in [(1.0, 10), (2.0, 10), (3.0, 2), (0.2, 10)]:
        classes = rng.standard_normal((9, 256)).astype(np.float32)
        x = classes[rng.integers(0, 9, 900)] + noise * rng.standard_normal((900, 256))
        x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
        seeds = [x[rng.choice(900, k, replace=False)] for k in (16, 36, 81, 1)]
        together = kmeans_runs(x, seeds, iters)
        alone = [spherical_kmeans(x, s, iters) for s in seeds]
        assert all(np.array_equal(a, b) for a, b in zip(together, alone, strict=True))
        for a, s in zip(alone, seeds, strict=True):
            assert np.array_equal(a, _classic_kmeans(x, s, iters))
