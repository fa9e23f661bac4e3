"""SAM refinement of token regions, filters, mask NMS and ranking (`gfsam.discover`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from gfsam.assign import cell_fractions, pool_features
from gfsam.decoded import DecodedMasks
from gfsam.discover.clusters import Region, cluster_regions
from gfsam.discover.params import DiscoverParams
from gfsam.geometry import mask_to_box
from gfsam.types import FRAME, GRID, GFSAMConfig, PromptDecoder

# (points_xy float [N, 2] frame pixels (x, y), box_xyxy float [4] frame pixels) ->
# (mask bool [S, S], score in [0, 1]): one SAM decoder call with all points and the box.
PromptMaskFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]


def sam_prompt_fn(
    sam: PromptDecoder, embedding: np.ndarray, decoded: DecodedMasks | None = None
) -> PromptMaskFn:
    """A `PromptMaskFn` over a cached mask-engine embedding [E', 64, 64] (no new encoder pass).

    Args:
        decoded: the target's `DecodedMasks`, bound to it (a prediction binds it): a region
            prompt decoded before (an earlier version of the same task) is read from its region
            section, bit-identical, instead of being decoded again; new ones are added to it.
    """

    def fn(points_xy: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, float]:
        mask, iou, _ = sam.decode_prompts(embedding, points_xy, None, box_xyxy)
        return np.asarray(mask, dtype=bool), float(np.clip(iou, 0.0, 1.0))

    if decoded is None:
        return fn
    store = decoded

    def cached(points_xy: np.ndarray, box_xyxy: np.ndarray) -> tuple[np.ndarray, float]:
        return store.region_mask(points_xy, box_xyxy, fn)

    return cached


@dataclass
class Candidate:
    """One discovered object proposal of one image, in the 1024 frame.

    Attributes:
        mask: bool [S, S].
        score: ranking score in [0, 1] (SAM score x token/mask agreement, or the prior of a
            rejected proposal).
        origin: ``"cluster"`` (token cluster refined by SAM) or ``"rejected"`` (a proposal the
            label assignment rejected).
        feature: float32 [C] unit-length mask-pooled token feature (for grouping).
    """

    mask: np.ndarray
    score: float
    origin: str
    feature: np.ndarray


def region_prompts(cells: np.ndarray, params: DiscoverParams) -> tuple[np.ndarray, np.ndarray]:
    """SAM prompts of a region: its deepest cells as points and its widened box.

    Args:
        cells: bool [T] region cells.

    Returns:
        (points float32 [N, 2] cell centres (x, y) in frame pixels, 1 <= N <= ``points``,
        deepest first, at least ``point_gap`` cells apart, at least half the largest depth
        deep; box float32 [4] x0, y0, x1, y1).
    """
    grid = cells.reshape(GRID, GRID)  # (G, G) as [y, x]
    depth = ndimage.distance_transform_cdt(np.pad(grid, 1), metric="chessboard")[1:-1, 1:-1]
    order = np.lexsort((np.arange(grid.size), -depth.ravel()))  # deepest, then flat index
    chosen: list[tuple[int, int]] = []
    floor = (int(depth.max()) + 1) // 2  # points stay in the inner half of the region
    for flat in order[: int((depth >= floor).sum())]:
        y, x = divmod(int(flat), GRID)
        if all(max(abs(x - cx), abs(y - cy)) >= params.point_gap for cx, cy in chosen):
            chosen.append((x, y))
        if len(chosen) == params.points:
            break
    cell = FRAME / GRID
    points = (np.asarray(chosen, dtype=np.float32) + 0.5) * cell  # (N, 2)
    ys, xs = np.nonzero(grid)
    lo = (np.array([xs.min(), ys.min()]) - params.box_margin) * cell
    hi = (np.array([xs.max(), ys.max()]) + 1 + params.box_margin) * cell
    box = np.clip(np.concatenate([lo, hi]), 0, FRAME).astype(np.float32)  # (4,)
    return points, box


def agreement(cells: np.ndarray, mask: np.ndarray) -> float:
    """Cell IoU of a token region and its SAM mask (cells at least half covered count)."""
    return _cell_iou(cells, cell_fractions(mask[None])[0] >= 0.5)


def _cell_iou(cells: np.ndarray, mask_cells: np.ndarray) -> float:
    """IoU of two bool [T] cell sets (0 when both are empty)."""
    union = np.count_nonzero(cells | mask_cells)
    return np.count_nonzero(cells & mask_cells) / union if union else 0.0


def refine_regions(
    regions: Sequence[Region], mask_fn: PromptMaskFn, params: DiscoverParams
) -> list[tuple[np.ndarray, float]]:
    """One SAM call per region (at most ``max_prompts``, in the given order).

    Returns:
        (mask bool [S, S], score = SAM score x `agreement`) per refined region.
    """
    return [(mask, score) for mask, score, _ in _refined(regions, mask_fn, params)]


def _refined(
    regions: Sequence[Region], mask_fn: PromptMaskFn, params: DiscoverParams
) -> list[tuple[np.ndarray, float, np.ndarray]]:
    """`refine_regions` with each mask's cell fractions, float32 [T] (the agreement computes
    them; the candidates' pooling reuses them)."""
    out = []
    for region in regions[: params.max_prompts]:
        points, box = region_prompts(region.cells, params)
        mask, sam_score = mask_fn(points, box)
        mask = np.asarray(mask, dtype=bool)
        fractions = cell_fractions(mask[None])[0]  # (T,)
        out.append((mask, float(sam_score) * _cell_iou(region.cells, fractions >= 0.5), fractions))
    return out


def border_share(mask: np.ndarray) -> float:
    """Share of the frame's perimeter pixels the mask covers (bool [S, S] -> [0, 1])."""
    edge = np.concatenate([mask[0], mask[-1], mask[1:-1, 0], mask[1:-1, -1]])
    return np.count_nonzero(edge) / edge.size


Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), ends exclusive (`gfsam.geometry.mask_to_box`)


def keep_mask(
    mask: np.ndarray,
    score: float,
    covered: np.ndarray | None,
    params: DiscoverParams,
    box: Box | None = None,
) -> bool:
    """The filters: size, "stuff" (large or border-hugging), score, covered overlap.

    Args:
        mask: bool [S, S]. score: its ranking score. covered: bool [S, S] or None (no check).
        box: the mask's box when the caller has it (`mask_to_box`), else found here; the
            counts look inside it only (the same counts).
    """
    mask = np.asarray(mask, dtype=bool)
    box = box if box is not None else mask_to_box(mask)
    if box is None:  # empty
        return False
    x0, y0, x1, y1 = box
    area = np.count_nonzero(mask[y0:y1, x0:x1])
    if not params.min_area * mask.size <= area <= params.max_area * mask.size:
        return False
    if border_share(mask) > params.max_border or score < params.min_score:
        return False
    if covered is None:
        return True
    return np.count_nonzero(mask[y0:y1, x0:x1] & covered[y0:y1, x0:x1]) <= params.max_covered * area


def mask_nms(
    masks: Sequence[np.ndarray],
    iou: float,
    limit: int,
    boxes: Sequence[Box | None] | None = None,
) -> list[int]:
    """Greedy mask NMS over masks already sorted best first.

    Args:
        masks: bool [S, S] each, best first. iou: suppression threshold. limit: most kept.
        boxes: each mask's box when the caller has them (`mask_to_box`, None when empty), else
            found here; pixels are counted where boxes meet (the same counts).

    Returns:
        Indices of the kept masks, in input order.
    """
    kept: list[int] = []
    held: dict[int, tuple[np.ndarray, Box, int]] = {}  # mask, box, area
    for i, m in enumerate(masks):
        if len(kept) == limit:
            break
        m = np.asarray(m, dtype=bool)
        box = boxes[i] if boxes is not None else mask_to_box(m)
        if box is None:  # empty
            continue
        x0, y0, x1, y1 = box
        area = np.count_nonzero(m[y0:y1, x0:x1])
        for k in kept:  # IoU with each kept mask, from the pixels they share and the two areas
            other, other_box, other_area = held[k]
            shared = _overlap(m, box, other, other_box)
            if shared > iou * (area + other_area - shared):
                break
        else:
            kept.append(i)
            held[i] = (m, box, area)
    return kept


def _overlap(a: np.ndarray, box_a: Box, b: np.ndarray, box_b: Box) -> int:
    """Pixels two masks share, counted where their boxes meet."""
    x0, y0 = max(box_a[0], box_b[0]), max(box_a[1], box_b[1])
    x1, y1 = min(box_a[2], box_b[2]), min(box_a[3], box_b[3])
    if y1 <= y0 or x1 <= x0:
        return 0
    return int(np.count_nonzero(a[y0:y1, x0:x1] & b[y0:y1, x0:x1]))


def discover_candidates(
    tokens: np.ndarray,
    covered: np.ndarray,
    mask_fn: PromptMaskFn,
    *,
    rejected: Sequence[np.ndarray] = (),
    labels: Sequence[tuple[np.ndarray, float]] = (),
    cfg: GFSAMConfig | None = None,
    params: DiscoverParams | None = None,
    restrict: bool = True,
) -> list[Candidate]:
    """Discover unlabelled objects on one target (see the package docstring).

    Args:
        tokens: [T, C] raw DINOv2 tokens of the target (its cached `TargetEncoding.tokens`).
        covered: bool [S, S] frame pixels under an accepted label region or a human annotation.
        mask_fn: `PromptMaskFn` over the target's cached SAM embedding.
        rejected: bool [S, S] frame masks of proposals the assignment rejected (they join the
            pool with score ``rejected_score``).
        labels: per existing label, (float [K, C] unit shot prototypes, similarity threshold),
            as `gfsam.assign` computes them: a candidate as close to a label as the label's
            own threshold is a missed instance of it, not a new class, and is dropped.
        cfg: token normalisation. params: `DiscoverParams`.
        restrict: False drops the "unannotated only" restriction (the baseline): every cell is
            clustered and the covered-overlap filter is off.

    Returns:
        At most ``max_candidates`` candidates, best first.
    """
    cfg, params = cfg or GFSAMConfig(), params or DiscoverParams()
    covered = np.asarray(covered, dtype=bool)
    regions = cluster_regions(tokens, covered, cfg, params, restrict=restrict)
    refined = _refined(regions, mask_fn, params)
    pool = [(m, s, "cluster") for m, s, _ in refined]
    pool += [(np.asarray(m, dtype=bool), params.rejected_score, "rejected") for m in rejected]
    known = {i: f for i, (_, _, f) in enumerate(refined)}  # cell fractions computed so far
    check = covered if restrict else None
    boxes = [mask_to_box(m) for m, _, _ in pool]  # found once: every count below is inside
    kept = [i for i, (m, s, _) in enumerate(pool) if keep_mask(m, s, check, params, boxes[i])]
    if not kept:
        return []
    missing = [i for i in kept if i not in known]
    if missing:  # the rejected proposals', in one call (kept: not empty)
        yx = np.array([_yx(boxes[i]) for i in missing])  # (M, 4) as (y0, x0, y1, x1)
        fresh = cell_fractions(np.stack([pool[i][0] for i in missing]), yx)  # (M, T)
        known.update(zip(missing, fresh, strict=True))
    weights = np.stack([known[i] for i in kept]) ** params.pool_power  # (N, T)
    feats = pool_features(tokens, weights, cfg)  # (N, C)
    new = ~looks_like_label(feats, labels)  # (N,)
    chosen = [(i, f) for i, f, ok in zip(kept, feats, new, strict=True) if ok]
    chosen.sort(key=lambda c: -pool[c[0]][1])  # stable: clusters before rejected proposals on ties
    cands = [Candidate(*pool[i], f) for i, f in chosen]
    keep = mask_nms(
        [c.mask for c in cands],
        params.nms_iou,
        params.max_candidates,
        [boxes[i] for i, _ in chosen],
    )
    return [cands[i] for i in keep]


def _yx(box: Box | None) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) -> (y0, x0, y1, x1), `cell_fractions`' order (an empty box: zeros)."""
    if box is None:
        return 0, 0, 0, 0
    x0, y0, x1, y1 = box
    return y0, x0, y1, x1


def looks_like_label(
    features: np.ndarray, labels: Sequence[tuple[np.ndarray, float]]
) -> np.ndarray:
    """Which candidates are as close to an existing label as its acceptance threshold.

    Args:
        features: float32 [N, C] unit. labels: (prototypes [K, C] unit, threshold) per label.

    Returns:
        bool [N].
    """
    out = np.zeros(len(features), dtype=bool)
    for protos, threshold in labels:
        out |= (features @ np.asarray(protos).T).max(axis=1) >= threshold
    return out
