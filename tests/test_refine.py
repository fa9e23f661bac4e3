"""worker/clicks/edit_rules.py: frame mapping, mask prompt, and the refinement rules (with
FakeSam)."""

from __future__ import annotations

import numpy as np
import pytest

from backend.state.prompts import PromptError, Prompts
from tests.fakes import FakeSam
from worker.clicks.edit_rules import frame_box, frame_points, mask_prompt, refine

H, W = 100, 200  # natural size: the squash to 1024 scales x by 5.12 and y by 10.24


def prompts(points: list[tuple[float, float]], positive: list[bool], box=None) -> Prompts:
    return Prompts(label="Cat", points=points, positive=positive, box=box, width=W, height=H)


def two_instances() -> np.ndarray:
    prior = np.zeros((H, W), dtype=bool)
    prior[10:30, 10:40] = True  # instance A
    prior[60:90, 120:180] = True  # instance B
    return prior


def test_original_pixels_map_to_the_squashed_frame() -> None:
    np.testing.assert_allclose(
        frame_points([(100, 50), (200, 100)], (H, W)), [[512, 512], [1024, 1024]]
    )
    np.testing.assert_allclose(frame_box((20, 10, 40, 30), (H, W)), [102.4, 102.4, 204.8, 307.2])


def test_mask_prompt_is_signed_low_res() -> None:
    logits = mask_prompt(two_instances())
    assert logits.shape == (256, 256) and logits.dtype == np.float32
    assert logits[50, 50] > 0 and logits[200, 30] < 0  # A's cell (row 20, col 25) inside


def test_single_click_without_prediction_uses_multimask() -> None:
    sam = FakeSam()
    out = refine(sam, None, prompts([(100, 50)], [True]), (H, W))
    assert out.rule == "new" and out.score == 0.9 and out.mask.shape == (H, W)
    assert out.mask[50, 100] and not out.mask[0, 0]
    assert sam.calls[0]["multimask"] and sam.calls[0]["mask"] is None
    np.testing.assert_allclose(sam.calls[0]["points"], [[512, 512]])


def test_several_prompts_use_one_single_mask_call() -> None:
    sam = FakeSam()
    p = prompts([(100, 50), (10, 10)], [True, False], box=(50, 20, 150, 80))
    out = refine(sam, None, p, (H, W))
    assert len(sam.calls) == 1 and not sam.calls[0]["multimask"] and out.score == 0.8
    assert list(sam.calls[0]["labels"]) == [1, 0] and sam.calls[0]["box"] is not None


def test_negative_click_on_an_instance_removes_it() -> None:
    sam, prior = FakeSam(), two_instances()
    out = refine(sam, None, prompts([(150, 75)], [False]), (H, W), prior, 0.7)
    assert out.rule == "remove" and out.decoded == 0 and not sam.calls and out.score == 0.7
    assert out.mask[20, 20] and not out.mask[75, 150]


def test_positive_click_outside_adds_the_object() -> None:
    sam, prior = FakeSam(), two_instances()
    out = refine(sam, None, prompts([(100, 50)], [True]), (H, W), prior)
    assert out.rule == "add" and sam.calls[0]["mask"] is None
    assert out.mask[50, 100] and out.mask[20, 20] and out.mask[75, 150]


def test_positive_click_inside_reshapes_with_the_instance_as_mask_prompt() -> None:
    sam, prior = FakeSam(radius=8), two_instances()
    out = refine(sam, None, prompts([(20, 20), (35, 15)], [True, False]), (H, W), prior)
    assert out.rule == "reshape" and not sam.calls[0]["multimask"]
    prompt = sam.calls[0]["mask"]
    assert prompt is not None and (prompt > 0).sum() > 0
    assert prompt[50, 30] > 0 and prompt[170, 190] < 0  # A only, B is not part of the prompt
    assert out.mask[75, 150]  # B untouched


def test_only_negative_points_off_the_prediction_are_refused() -> None:
    with pytest.raises(PromptError, match="none on a predicted instance"):
        refine(FakeSam(), None, prompts([(100, 50)], [False]), (H, W), two_instances())
    with pytest.raises(PromptError, match="only negative"):
        refine(FakeSam(), None, prompts([(100, 50)], [False]), (H, W))
