"""Gates and merge (gfsam/gating.py) on hand-built 37x37 inputs."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gfsam.gating import (
    merge_masks,
    overshoot_gate,
    point_states,
    positive_gate,
    union_masks,
)
from gfsam.resample import gather_support, reduce_support
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig


def _cells_mask(cells: list[int]) -> torch.Tensor:
    m = torch.zeros(TOKENS)
    m[cells] = 1.0
    return m


def test_downsample_equals_bilinear_interpolate() -> None:
    masks = torch.rand(4, FRAME, FRAME) > 0.6
    expected = F.interpolate(
        masks.float()[:, None], (GRID, GRID), mode="bilinear", align_corners=False
    ).flatten(1)
    torch.testing.assert_close(reduce_support(gather_support(masks)), expected, atol=1e-6, rtol=0)


def test_positive_gate_grows_on_positive_cells_only() -> None:
    # Polarity: S+mean^2 > s_mid * S-mean on cells 0..9 only.
    pos_mean = torch.zeros(TOKENS)
    pos_mean[:10] = 1.0
    neg_mean = torch.ones(TOKENS) * 0.1
    s_mid = torch.tensor(0.5)
    a = _cells_mask(list(range(10)))  # all positive: accepted
    b = _cells_mask(list(range(5)))  # inside a: empty increment, rejected
    c = _cells_mask(list(range(8, 30)))  # mostly negative: rejected
    d = _cells_mask(list(range(500, 502)))  # negative, own cluster
    mu = torch.stack([a, b, c, d])
    labels = torch.tensor([0, 0, 0, 1])
    gate = positive_gate(mu, labels, 2, pos_mean, neg_mean, s_mid)
    assert gate.fg.tolist() == [True, False, False, False]
    # cls_score is pos - neg of each cluster's last growth step (official quirk):
    # cluster 0 ranks a, b, c; its last step is c's increment: cells 10..29 -> -20
    assert gate.cls_score[:3].tolist() == [-20.0, -20.0, -20.0]
    assert gate.cls_score[3].item() == -2.0


def test_overshoot_gate_distance_and_vote() -> None:
    cells = torch.tensor([[0, 0], [1, 0], [30, 30], [31, 30], [32, 30]])
    self_sim = torch.eye(TOKENS)[:, cells[:, 1] * GRID + cells[:, 0]]  # cells resemble only self
    labels = torch.tensor([0, 0, 1, 1, 1])
    union = torch.stack([_cells_mask([0, 1]), _cells_mask([30 * GRID + 30, 30 * GRID + 31])])
    cons = overshoot_gate(union, self_sim, cells, labels)
    # point 4's cell is outside its cluster's union: similarity 0 everywhere, argmax picks 0
    assert cons.tolist() == [True, True, True, True, False]
    # 1 consistent vs 2 inconsistent in cluster 1: the vote drops the cluster
    union[1] = _cells_mask([30 * GRID + 30])
    assert overshoot_gate(union, self_sim, cells, labels).tolist() == [
        True,
        True,
        False,
        False,
        False,
    ]


def test_point_states_truth_table() -> None:
    fg = torch.tensor([True, True, False, False])
    cons = torch.tensor([True, False, True, False])
    assert point_states(fg, cons).tolist() == [1, 2, 2, 0]


def test_merge_union_fallback_and_abstain() -> None:
    masks = torch.zeros(3, FRAME, FRAME, dtype=torch.bool)
    masks[0, :10] = True
    masks[1, 20:30] = True
    masks[2, 50:] = True
    scores = torch.tensor([0.5, 3.0, 1.0])
    merged = merge_masks(masks, torch.tensor([1, 2, 1]), scores, GFSAMConfig())
    assert torch.equal(merged.mask, masks[0] | masks[2]) and merged.fallback_index == -1
    state = torch.tensor([2, 0, 2])  # nothing passed both gates
    faithful = merge_masks(masks, state, scores, GFSAMConfig.faithful())
    assert faithful.fallback_index == 2 and torch.equal(faithful.mask, masks[2])
    negative = merge_masks(masks, state, -scores, GFSAMConfig.faithful())
    assert negative.fallback_index == 1  # zeroed non-state-2 score wins the argmax: first 0
    abstain = merge_masks(masks, state, scores, GFSAMConfig())
    assert abstain.abstained and not abstain.mask.any()


def test_union_masks_cpu_path_equals_torch_any() -> None:
    masks = torch.rand(9, FRAME, FRAME) > 0.97
    keep = torch.tensor([True, False, True, True, False, False, True, False, True])
    torch.testing.assert_close(union_masks(masks, keep), masks[keep].any(dim=0))
    assert not union_masks(masks, torch.zeros(9, dtype=torch.bool)).any()
