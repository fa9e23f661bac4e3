"""Token clusters in the uncovered area: window-seeded multi-scale k-means (`gfsam.discover`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage, sparse

from gfsam.assign import cell_fractions
from gfsam.assign.proposals import unit_tokens as assign_unit_tokens
from gfsam.discover.params import DiscoverParams
from gfsam.types import GRID, GFSAMConfig

EIGHT = np.ones((3, 3), dtype=bool)


@dataclass
class Region:
    """One 8-connected piece of a token cluster on the grid.

    Attributes:
        cells: bool [T] cells of the region.
        feature: float32 [C] unit-length mean of the region's unit tokens.
    """

    cells: np.ndarray
    feature: np.ndarray


def unit_tokens(tokens: np.ndarray, cfg: GFSAMConfig) -> np.ndarray:
    """Tokens normalised as the pipeline does, then each to unit length (`gfsam.assign`'s,
    memoised: the assignment pooled the same tokens just before).

    Args:
        tokens: [T, C] raw tokens of one image.

    Returns:
        float32 [T, C], read-only.
    """
    return assign_unit_tokens(tokens, cfg)


def free_cells(covered: np.ndarray, params: DiscoverParams) -> np.ndarray:
    """Cells mostly outside every accepted label region and human annotation.

    Args:
        covered: bool [S, S] covered pixels in the 1024 frame.

    Returns:
        bool [T]: uncovered share >= ``params.min_free``.
    """
    return 1.0 - cell_fractions(np.asarray(covered, dtype=bool)[None])[0] >= params.min_free


def _starts(window: int) -> list[int]:
    """Window origins at stride window // 2, the last one flush with the grid's far edge."""
    starts = list(range(0, GRID - window + 1, max(window // 2, 1)))
    if starts[-1] != GRID - window:
        starts.append(GRID - window)
    return starts


def window_seeds(
    unit: np.ndarray, free: np.ndarray, window: int, params: DiscoverParams
) -> np.ndarray:
    """K-means seeds of one scale: mean free token of each square window (stride window // 2).

    The window sums are separable box sums, two small matmuls with the windows' row (column)
    indicator: equal to averaging each window's free tokens one by one up to float32 rounding
    (tests/test_discover_clusters.py), in about half the time.

    Args:
        unit: [T, C] unit tokens. free: bool [T]. window: side in cells (<= G).

    Returns:
        float32 [k, C] unit-length seeds, one per window with enough free cells, windows in
        row-major order of their origins (k may be 0).
    """
    kept = np.where(free[:, None], unit, np.float32(0))  # (T, C) free tokens, zeros elsewhere
    return scale_seeds(kept, free, [window], params)[0]


def scale_seeds(
    kept: np.ndarray, free: np.ndarray, windows: Sequence[int], params: DiscoverParams
) -> list[np.ndarray]:
    """`window_seeds` of several scales from the free tokens with zeros elsewhere, kept:
    float32 [T, C] (masked once): the row sums of every scale's windows come from one matmul,
    which reads the tokens once instead of once a scale.

    Returns:
        Per window side (<= G), float32 [k, C] (k may be 0).
    """
    c = kept.shape[1]
    bands = []  # per scale, int64 (n, G): the cells each window spans along one axis
    for window in windows:
        starts = _starts(window)
        band = np.zeros((len(starts), GRID), dtype=np.int64)
        for i, s in enumerate(starts):
            band[i, s : s + window] = 1
        bands.append(band)
    every = np.concatenate(bands).astype(np.float32)  # (sum n, G)
    rows = every @ kept.reshape(GRID, GRID * c)  # (sum n, G * C): every window row's sums
    grid_free = free.reshape(GRID, GRID).astype(np.int64)  # (G, G) as [y, x]
    out, first = [], 0
    for window, band in zip(windows, bands, strict=True):
        n = len(band)
        own = rows[first : first + n].reshape(n, GRID, c)  # (n, G, C)
        first += n
        counts = band @ grid_free @ band.T  # (n, n) free cells of each window [y, x], exact
        enough = counts / (window * window) >= params.min_window_free  # (n, n)
        if not enough.any():
            out.append(np.zeros((0, c), dtype=np.float32))
            continue
        sums = np.matmul(band.astype(np.float32)[None], own)  # (n, n, C): each window's sum
        mean = sums[enough] / counts[enough][:, None].astype(np.float32)  # (k, C)
        norms = np.sqrt(np.einsum("kc,kc->k", mean, mean))  # (k,)
        out.append((mean / np.maximum(norms, 1e-12)[:, None]).astype(np.float32))
    return out


def spherical_kmeans(x: np.ndarray, seeds: np.ndarray, iters: int) -> np.ndarray:
    """Cosine k-means from given seeds (deterministic: ties go to the lower cluster).

    Args:
        x: [N, C] unit vectors. seeds: [k, C] unit vectors, k >= 1. iters: rounds.

    Returns:
        int64 [N] cluster of each vector (clusters may end up empty).
    """
    return kmeans_runs(x, [seeds], iters)[0]


def kmeans_runs(x: np.ndarray, seeds: Sequence[np.ndarray], iters: int) -> list[np.ndarray]:
    """Independent `spherical_kmeans` runs over the same vectors (one per seed set: discovery's
    window scales), in lockstep: each round, one matmul for the centroids that moved in any run
    still going, so the vectors are read once a round instead of once a run (a round that moves
    a few centroids is bound by that read). Each run's rounds and result are its own
    (tests/test_discover_clusters.py compares with the runs one by one).

    Args:
        x: [N, C] unit vectors. seeds: per run, [k_r, C] unit vectors, k_r >= 1. iters: rounds.

    Returns:
        Per run, int64 [N] cluster of each vector (clusters may end up empty).
    """
    sizes = [len(s) for s in seeds]
    start = np.cumsum([0, *sizes])  # run r's clusters are the columns start[r]:start[r + 1]
    centroids = np.concatenate(seeds)  # (K, C): every run's, a new array
    sims = x @ centroids.T  # (N, K)
    assign = [np.argmax(sims[:, start[r] : start[r + 1]], axis=1) for r in range(len(sizes))]
    # Only a cluster whose members changed gets a new centroid (the same members give the same
    # mean), so only those centroids and their similarity columns are computed again: the
    # classic loop's result for a fraction of its matmuls once a few clusters still move.
    moved: dict[int, np.ndarray] = {r: np.arange(k) for r, k in enumerate(sizes)}  # running
    for _ in range(iters):
        # A moved cluster goes to its members' mean (the first round: every seed); one left
        # without members keeps its centroid.
        for r, mv in moved.items():
            live = mv[np.bincount(assign[r], minlength=sizes[r])[mv] > 0]  # (m,)
            for k, total in zip(live, member_sums(x, assign[r], live), strict=True):
                centroids[start[r] + k] = total / max(float(np.linalg.norm(total)), 1e-12)
        cols = np.concatenate([start[r] + mv for r, mv in moved.items()])  # every run's moved
        sims[:, cols] = x @ centroids[cols].T  # (N, |cols|)
        for r in list(moved):
            new = np.argmax(sims[:, start[r] : start[r + 1]], axis=1)  # (N,)
            changed = new != assign[r]
            if not changed.any():
                del moved[r]  # converged: its clusters stay as they are
                continue
            moved[r] = np.union1d(assign[r][changed], new[changed])
            assign[r] = new
        if not moved:
            break
    return assign


def member_sums(x: np.ndarray, assign: np.ndarray, clusters: np.ndarray) -> np.ndarray:
    """Each listed cluster's member sum: ``x[assign == k].sum(axis=0)`` for k in `clusters`.

    One sparse indicator product (scipy's CSR kernel adds each row's members in index order,
    from zero, in float32: numpy's additions in numpy's order, equal to the bit;
    tests/test_discover_clusters.py) instead of one boolean gather per cluster.

    Args:
        x: float [N, C]. assign: int [N] cluster of each row. clusters: int [m] distinct ids.

    Returns:
        [m, C] in x's dtype (a cluster without members sums to zeros).
    """
    row = np.full(max(int(assign.max(initial=-1)), int(clusters.max(initial=-1))) + 1, -1)
    row[clusters] = np.arange(len(clusters))
    of = row[assign]  # (N,) row of each vector's cluster, -1 when not listed
    listed = of >= 0
    ones = np.ones(int(listed.sum()), dtype=x.dtype)
    indicator = sparse.csr_matrix(
        (ones, (of[listed], np.flatnonzero(listed))), shape=(len(clusters), len(x))
    )  # (m, N)
    return np.asarray(indicator @ x)


def _merge(clusters: list[np.ndarray], means: np.ndarray, merge_cos: float) -> list[np.ndarray]:
    """Merge near-duplicate clusters (bool [T] each, mean unit token float32 [L, C]) without
    chaining.

    Largest first, each cluster joins the first leader whose centroid is at least `merge_cos`
    close, else leads a merged cluster of its own. Comparing with leaders only, a chain of
    boundary clusters (graded mixes of an object and its surroundings) cannot glue the object
    to the background.
    """
    cents = means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)  # (L, C)
    order = sorted(range(len(clusters)), key=lambda i: (-int(clusters[i].sum()), i))
    leaders: list[int] = []
    merged: dict[int, np.ndarray] = {}
    for i in order:
        near = [j for j in leaders if float(cents[i] @ cents[j]) >= merge_cos]
        if near:
            merged[near[0]] |= clusters[i]
        else:
            leaders.append(i)
            merged[i] = clusters[i].copy()
    return [merged[j] for j in leaders]


def token_clusters(unit: np.ndarray, free: np.ndarray, params: DiscoverParams) -> list[np.ndarray]:
    """Multi-scale k-means of the free tokens, near-duplicate clusters merged.

    Args:
        unit: [T, C] unit tokens. free: bool [T].

    Returns:
        bool [T] cell sets, one per merged cluster (largest leader first).
    """
    idx = np.flatnonzero(free)  # (N,)
    points = unit[idx]  # (N, C): the free tokens, gathered once for every scale
    kept = np.where(free[:, None], unit, np.float32(0))  # (T, C): masked once for every scale
    seeds = scale_seeds(kept, free, [min(w, GRID) for w in params.windows], params)  # (k, C)
    seeds = [s for s in seeds if len(s)]  # a scale without a free enough window adds nothing
    clusters: list[np.ndarray] = []
    means: list[np.ndarray] = []  # (k', C) per scale: each non-empty cluster's mean unit token
    for assign in kmeans_runs(points, seeds, params.kmeans_iters) if seeds else []:  # (N,)
        ids, which, counts = np.unique(assign, return_inverse=True, return_counts=True)  # (k',)
        # numpy's mean of each cluster's tokens to the bit: float32 sums, divided in float64
        means.append((member_sums(points, assign, ids) / counts[:, None]).astype(np.float32))
        cells = np.zeros((len(ids), len(free)), dtype=bool)  # (k', T) each cluster's cells
        cells[which, idx] = True
        clusters.extend(cells)
    return _merge(clusters, np.concatenate(means), params.merge_cos) if clusters else []


def cluster_regions(
    tokens: np.ndarray,
    covered: np.ndarray,
    cfg: GFSAMConfig,
    params: DiscoverParams,
    *,
    restrict: bool = True,
) -> list[Region]:
    """Regions to refine: 8-connected grid pieces of the merged token clusters.

    Args:
        tokens: [T, C] raw target tokens. covered: bool [S, S] covered pixels (1024 frame).
        cfg: token normalisation. params: `DiscoverParams`.
        restrict: cluster only free cells (Split Matching); False clusters every cell (the
            baseline without the "unannotated only" restriction).

    Returns:
        Regions of at least ``min_cells`` cells, largest first (ties: first found), unique.
    """
    unit = unit_tokens(tokens, cfg)  # (T, C)
    free = free_cells(covered, params) if restrict else np.ones(len(unit), dtype=bool)
    regions: dict[bytes, Region] = {}
    for cells in token_clusters(unit, free, params):
        comp, n = ndimage.label(cells.reshape(GRID, GRID), structure=EIGHT)
        for k in range(1, n + 1):
            piece = (comp == k).ravel()  # (T,)
            if piece.sum() < params.min_cells or piece.tobytes() in regions:
                continue
            mean = unit[piece].mean(axis=0)
            feature = (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
            regions[piece.tobytes()] = Region(piece, feature)
    return sorted(regions.values(), key=lambda r: -int(r.cells.sum()))
