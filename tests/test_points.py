"""PNA stage (gfsam/points.py) on small inputs whose answers can be checked by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gfsam.points import (
    cosine_similarity,
    count_points,
    normalize_tokens,
    pna_maps,
    prompt_pixels,
    reference_weights,
    select_points,
)
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig

FAITHFUL = GFSAMConfig.faithful()


def test_token_axis_quirk_normalises_each_channel_over_tokens() -> None:
    tokens = torch.rand(TOKENS, 4) * torch.tensor([1.0, 10.0, 100.0, 0.1])
    out = normalize_tokens(tokens, FAITHFUL)
    torch.testing.assert_close(out.norm(dim=0), torch.ones(4))  # per channel, over tokens
    fixed = normalize_tokens(tokens, GFSAMConfig(token_axis_norm=False, per_token_norm=True))
    torch.testing.assert_close(fixed.norm(dim=1), torch.ones(TOKENS))  # per token


def test_options_are_exclusive() -> None:
    with pytest.raises(ValueError, match="exclusive"):
        GFSAMConfig(token_axis_norm=True, per_token_norm=True)


def test_cosine_is_plain_unless_relu() -> None:
    ref = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])  # (1, 2, 2)
    tgt = torch.tensor([[3.0, 0.0], [-1.0, 0.0]])  # (2, 2)
    sim = cosine_similarity(ref, tgt, FAITHFUL)[0]
    torch.testing.assert_close(sim, torch.tensor([[1.0, -1.0], [0.0, 0.0]]), atol=1e-6, rtol=0)
    relu = cosine_similarity(ref, tgt, GFSAMConfig(relu_similarity=True))[0]
    assert relu.min() >= 0 and relu[0, 1] == 0


def test_reference_weights_of_full_empty_and_half_masks() -> None:
    full, empty = np.ones((FRAME, FRAME), bool), np.zeros((FRAME, FRAME), bool)
    fg, bg = reference_weights(full)
    assert torch.all(fg == 1) and torch.all(bg == 0)
    fg, bg = reference_weights(empty)
    assert torch.all(fg == 0) and torch.all(bg == 1)
    left = empty.copy()
    left[:, :512] = True  # align_corners=True samples column i * 1023 / 36
    fg, _ = reference_weights(left)
    cols = np.arange(GRID) * 1023 / 36
    expected_on = cols <= 511
    grid = fg.reshape(GRID, GRID).numpy()
    assert np.all(grid[:, expected_on] == 1) and np.all(grid[:, cols >= 512] == 0)
    with pytest.raises(ValueError, match="1024"):
        reference_weights(np.ones((512, 512), bool))


def test_reference_weights_match_interpolate() -> None:
    mask = torch.rand(FRAME, FRAME) > 0.5
    fg, _ = reference_weights(mask)
    expected = F.interpolate(
        mask.float()[None, None], (GRID, GRID), mode="bilinear", align_corners=True
    ).flatten()
    torch.testing.assert_close(fg, expected)


@pytest.mark.parametrize(
    ("total", "expected"), [(0.0, 0), (0.4, 1), (1.0, 1), (3.99, 3), (500.0, 128)]
)
def test_point_count_floor_cap_and_minimum(total: float, expected: int) -> None:
    filtered = torch.zeros(TOKENS)
    filtered[: max(1, int(np.ceil(total)) * 2)] = total / max(1, int(np.ceil(total)) * 2)
    assert count_points(filtered, FAITHFUL) == expected


def test_select_points_takes_top_cells_in_x_major_order() -> None:
    filtered = torch.zeros(TOKENS)
    for (x, y), v in {(5, 1): 0.9, (2, 7): 0.8, (2, 3): 0.7, (30, 30): 0.2}.items():
        filtered[y * GRID + x] = v
    # sum = 2.6 -> N = 2 -> the two best cells (5,1) and (2,7), ordered by x then y
    cells = select_points(filtered, FAITHFUL)
    assert cells.tolist() == [[2, 7], [5, 1]]
    assert select_points(torch.zeros(TOKENS), FAITHFUL).shape == (0, 2)


def test_prompt_pixels_top_left_or_centred() -> None:
    cells = torch.tensor([[0, 0], [1, 2], [36, 36]])
    assert prompt_pixels(cells, FAITHFUL).tolist() == [[0, 0], [27, 55], [996, 996]]
    centred = prompt_pixels(cells, GFSAMConfig(centred_prompts=True)).tolist()
    assert centred == [[13, 13], [41, 69], [1010, 1010]]


def test_pna_maps_find_the_matching_cells() -> None:
    """Reference: object cells carry feature e0, background e1. Target: e0 at three cells."""
    c = 8
    ref = torch.zeros(1, TOKENS, c)
    ref[0, :, 1] = 1.0
    obj = torch.arange(TOKENS) < GRID * 10  # top 10 rows are the object
    ref[0, obj, 1] = 0.0
    ref[0, obj, 0] = 1.0
    tgt = torch.zeros(TOKENS, c)
    tgt[:, 1] = 1.0
    hits = [3 * GRID + 4, 20 * GRID + 20, 30 * GRID + 2]
    tgt[hits, 1] = 0.0
    tgt[hits, 0] = 1.0
    fg = obj.float()[None]
    cfg = GFSAMConfig(token_axis_norm=False)
    maps = pna_maps(ref, fg, 1.0 - fg, tgt, cfg)
    assert set(torch.nonzero(maps.filtered > 0.5).flatten().tolist()) == set(hits)
    assert maps.filtered.max() < 1.0  # min-max eps keeps F below 1
    assert int(maps.s_pos_mean.argmax()) in hits
    cells = select_points(maps.filtered, cfg)
    assert cells.shape[0] == count_points(maps.filtered, cfg) <= len(hits)
