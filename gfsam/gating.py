"""Positive gating, overshooting gating and the merge (spec §6.2, §7, §8).

Everything runs on the 37x37 grid except the final union; masks reach the gates already
downsampled (`gfsam.resample`, bilinear with align_corners=False as the official code).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from gfsam.types import FRAME, GRID, GFSAMConfig

SCORE_EPS = 1e-6  # GFSAM.cluster_classification
WEIGHT_EPS = 1e-7  # GFSAM.generate_prior


@dataclass
class PositiveGate:
    """Result of positive gating. fg: [P] bool; cls_score: [P] float32 (official quirk)."""

    fg: Tensor
    cls_score: Tensor


def _ranked_members(score: np.ndarray, labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Members of each cluster by descending score, padded with -1: [L, max cluster size]."""
    order = np.argsort(-score, kind="stable")
    order = order[np.argsort(labels[order], kind="stable")]  # grouped by cluster, ranked
    sizes = np.bincount(labels, minlength=n_clusters)  # (L,)
    starts = np.cumsum(sizes) - sizes
    rank = np.arange(order.size) - starts[labels[order]]
    table = np.full((n_clusters, int(sizes.max())), -1, dtype=np.int64)
    table[labels[order], rank] = order
    return table  # (L, Mmax)


def positive_gate(
    mu: Tensor,
    labels: Tensor,
    n_clusters: int,
    maps_pos_mean: Tensor,
    maps_neg_mean: Tensor,
    s_mid: Tensor,
) -> PositiveGate:
    """Per-cluster greedy mask growth on the polarity map (`GFSAM.cluster_classification`).

    Masks of a cluster are ranked by the area-weighted mean of D = S+mean^2 - s_mid * S-mean; a
    mask is accepted when its not-yet-covered part has more positive (D > 0) than negative
    weight. Growth is sequential within a cluster, so the loop runs over ranks, vectorised across
    all clusters at once. The grid is tiny, so this runs in numpy float32 (no per-op thread-pool
    overhead), whatever the device of the inputs.

    Args:
        mu: [P, T] float32 bilinear masks. labels: [P] int64 cluster labels.
        n_clusters: L. maps_pos_mean, maps_neg_mean: [T] S+mean and S-mean. s_mid: scalar.

    Returns:
        PositiveGate with fg [P] and cls_score [P] (pos - neg of the cluster's last step).
    """
    pos2 = maps_pos_mean * maps_pos_mean  # (T,)
    neg = s_mid * maps_neg_mean  # (T,)
    # Ranking key computed with the official torch float32 ops: near-equal keys must order alike.
    score = ((mu * (pos2 - neg)).sum(dim=1) / (mu.sum(dim=1) + SCORE_EPS)).cpu().numpy()  # (P,)
    mu_np = mu.cpu().numpy()  # (P, T)
    polarity = (pos2 > neg).cpu().numpy().astype(np.float32)  # (T,) R
    labels_np = labels.cpu().numpy()
    table = _ranked_members(score, labels_np, n_clusters)  # (L, Mmax)
    covered = np.zeros((n_clusters, mu_np.shape[1]), dtype=np.float32)  # (L, T) soft union I
    fg = np.zeros(mu_np.shape[0], dtype=bool)
    last: np.ndarray = np.zeros(n_clusters, dtype=np.float32)
    for rank in range(table.shape[1]):
        idx = table[:, rank]  # (L,)
        valid = idx >= 0
        delta = mu_np[np.maximum(idx, 0)] * (1.0 - covered)  # (L, T) not yet covered part
        gain = delta @ polarity - delta @ (1.0 - polarity)  # (L,) positive minus negative
        accept = valid & (gain > 0)
        covered[accept] += delta[accept]  # I + delta, as the official (saturates at 1 alike)
        fg[idx[accept]] = True
        last = np.where(valid, gain, last)
    device = mu.device
    return PositiveGate(
        fg=torch.from_numpy(fg).to(device), cls_score=torch.from_numpy(last[labels_np]).to(device)
    )


def positive_gate_bitwise(
    masks: Tensor,
    labels: Tensor,
    n_clusters: int,
    maps_pos_mean: Tensor,
    maps_neg_mean: Tensor,
    s_mid: Tensor,
) -> PositiveGate:
    """`positive_gate` with the official float32 operations, cluster by cluster (verification).

    Same decisions as `positive_gate` except where they hinge on float rounding or on the tie
    order of the (unstable) CPU `torch.argsort`; here those match the official code too. It
    loops over clusters and points, like the official code, so it is only for parity checks.

    Args:
        masks: [P, S, S] bool full masks. Other arguments as `positive_gate`.

    Returns:
        PositiveGate.
    """
    mu = (
        F.interpolate(masks.float()[:, None], (GRID, GRID), mode="bilinear", align_corners=False)
        .flatten(1)
        .cpu()
    )  # (P, T)
    pos2, neg = (maps_pos_mean * maps_pos_mean).cpu(), (s_mid * maps_neg_mean).cpu()
    polarity = (pos2 > neg).float()
    labels_cpu = labels.cpu()
    fg = torch.zeros(mu.shape[0], dtype=torch.bool)
    cls_score = torch.zeros(mu.shape[0])
    for c in range(n_clusters):
        members = torch.nonzero(labels_cpu == c).flatten()
        own = mu[members]
        score = (own * (pos2 - neg)).sum(dim=1) / (own.sum(dim=1) + SCORE_EPS)
        covered, gain = torch.zeros_like(pos2), torch.tensor(0.0)
        for i in torch.argsort(score, descending=True):
            delta = own[i] * (1 - covered)
            gain = (polarity * delta).sum() - ((1 - polarity) * delta).sum()
            if gain > 0:
                covered = covered + delta
                fg[members[i]] = True
        cls_score[members] = gain
    return PositiveGate(fg=fg.to(masks.device), cls_score=cls_score.to(masks.device))


def overshoot_gate(mu_union: Tensor, point_sim: Tensor, cells: Tensor, labels: Tensor) -> Tensor:
    """Self-consistency of each point with its cluster (`GFSAM.point_consistency_dis`; §7).

    score(i, c) = Sim_c(p_i) / max(1, dist(p_i, nearest point of c)); a point is consistent when
    its own cluster wins the argmax, and a cluster keeps its consistent points only when they
    are not outnumbered (ties keep). Sim_c is the union-weighted mean self-similarity of the
    target; only its values at the P point cells are ever read, so only those columns of the
    self-similarity matrix are needed.

    Args:
        mu_union: [L, T] bilinear maps of each cluster's union mask.
        point_sim: [T, P] cosine similarity of every target cell with each point's cell.
        cells: [P, 2] int64 grid cells (x, y). labels: [P] int64.

    Returns:
        [P] bool consistent flags after the per-cluster vote.
    """
    n_clusters = mu_union.shape[0]
    s = (mu_union @ point_sim) / point_sim.shape[0]  # (L, P): mean over r of U(r) * C[r, p_i]
    s = (s / (mu_union.mean(dim=1, keepdim=True) + WEIGHT_EPS)).transpose(0, 1)  # (P, L)
    xy = cells.to(torch.float32)
    dist = torch.cdist(xy, xy)  # (P, P)
    member = labels[None, :] == torch.arange(n_clusters, device=labels.device)[:, None]  # (L, P)
    inf = torch.full_like(dist, float("inf"))
    d = torch.where(member[None, :, :], dist[:, None, :], inf[:, None, :]).amin(dim=2)  # (P, L)
    d = torch.where(d == 0, torch.ones_like(d), d)
    consistent = torch.argmax(s / d, dim=1) == labels  # (P,)
    n_cons = torch.bincount(labels[consistent], minlength=n_clusters)
    n_all = torch.bincount(labels, minlength=n_clusters)
    keep = n_cons >= n_all - n_cons  # (L,) ties keep
    return consistent & keep[labels]


def point_states(fg: Tensor, consistent: Tensor) -> Tensor:
    """1 = both gates passed, 2 = exactly one, 0 = neither. [P] int64."""
    both = fg & consistent
    one = fg ^ consistent
    return torch.where(both, 1, torch.where(one, 2, 0)).to(torch.int64)


def union_masks(masks: Tensor, keep: Tensor) -> Tensor:
    """Pixelwise OR of the kept masks.

    On the CPU the bool masks are OR-reduced as 64-bit words in place (no copy of the kept
    masks); elsewhere `torch.any` does the job.

    Args:
        masks: [P, S, S] bool. keep: [P] bool.

    Returns:
        [S, S] bool.
    """
    if masks.device.type != "cpu" or (FRAME * FRAME) % 8 or not masks.is_contiguous():
        return masks[keep].any(dim=0) if bool(keep.any()) else torch.zeros_like(masks[0])
    words = masks.numpy().reshape(masks.shape[0], -1).view(np.uint64)  # (P, S*S/8)
    merged = np.bitwise_or.reduce(words, axis=0, where=keep.numpy()[:, None], initial=0)
    return torch.from_numpy(merged.view(bool).reshape(FRAME, FRAME))


@dataclass
class Merge:
    """Final mask [S, S] bool; which point the fallback used (-1 when none)."""

    mask: Tensor
    fallback_index: int
    abstained: bool


def merge_masks(masks: Tensor, state: Tensor, cls_score: Tensor, cfg: GFSAMConfig) -> Merge:
    """Union of the masks whose points passed both gates (`GFSAM.triplet_selection_b`; §8).

    When that union is empty the official code returns the mask of the best one-gate point
    (scores of other points zeroed, first index on ties); with ``cfg.fallback`` off we abstain.

    Args:
        masks: [P, S, S] bool. state: [P] int64. cls_score: [P] float32.
        cfg: uses ``fallback``.

    Returns:
        Merge.
    """
    union = union_masks(masks, state == 1)
    if bool(union.any()):
        return Merge(mask=union, fallback_index=-1, abstained=False)
    if not cfg.fallback or masks.shape[0] == 0:
        empty = torch.zeros((FRAME, FRAME), dtype=torch.bool, device=masks.device)
        return Merge(mask=empty, fallback_index=-1, abstained=True)
    scores = torch.where(state == 2, cls_score, torch.zeros_like(cls_score))
    best = int(np.argmax(scores.cpu().numpy()))  # first index on ties, as torch.argmax
    return Merge(mask=masks[best].clone(), fallback_index=best, abstained=False)
