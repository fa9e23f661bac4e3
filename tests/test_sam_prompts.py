"""gfsam/encoders/sam.py `decode_prompts`: points, box and mask prompt in one decoder call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from segment_anything.modeling import Sam

from gfsam.encoders.sam import build_sam


@pytest.fixture(scope="module")
def sam():  # noqa: ANN201
    torch.manual_seed(0)
    return build_sam("sam_tiny", checkpoint=None, device="cpu")


@pytest.fixture(scope="module")
def embedding() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((32, 64, 64)).astype(np.float32)


def test_shapes_and_types(sam, embedding) -> None:  # noqa: ANN001
    mask, iou, low = sam.decode_prompts(embedding, np.array([[500.0, 300.0]]), multimask=True)
    assert mask.shape == (1024, 1024) and mask.dtype == bool
    assert isinstance(iou, float) and low.shape == (256, 256) and low.dtype == np.float32
    assert np.array_equal(
        mask,
        torch.nn.functional.interpolate(
            torch.from_numpy(low)[None, None], (1024, 1024), mode="bilinear", align_corners=False
        )[0, 0].numpy()
        > 0,
    )


def test_multimask_returns_the_best_predicted_iou(sam, embedding, monkeypatch) -> None:  # noqa: ANN001
    seen = {}
    decoder = sam.sam.mask_decoder
    original = type(decoder).forward

    def spy(self, **kw):  # noqa: ANN001, ANN003, ANN202
        low, iou = original(self, **kw)
        seen["iou"] = iou.clone()
        return low, iou

    monkeypatch.setattr(type(decoder), "forward", spy)
    _, iou, _ = sam.decode_prompts(embedding, np.array([[10.0, 10.0]]), multimask=True)
    assert seen["iou"].shape == (1, 3) and iou == pytest.approx(float(seen["iou"].max()))


def test_all_prompts_go_into_one_call(sam, embedding, monkeypatch) -> None:  # noqa: ANN001
    calls = []
    encoder = sam.sam.prompt_encoder
    original = type(encoder).forward

    def spy(self, points, boxes, masks):  # noqa: ANN001, ANN202
        calls.append((points, boxes, masks))
        return original(self, points, boxes, masks)

    monkeypatch.setattr(type(encoder), "forward", spy)
    pts = np.array([[100.0, 100.0], [800.0, 900.0]])
    sam.decode_prompts(
        embedding,
        pts,
        np.array([1, 0]),
        np.array([50.0, 60.0, 700.0, 800.0]),
        np.zeros((256, 256), np.float32),
    )
    ((points, boxes, masks),) = calls
    assert points[0].shape == (1, 2, 2) and points[1].tolist() == [[1, 0]]
    assert boxes.shape == (1, 4) and masks.shape == (1, 1, 256, 256)


def test_needs_a_point_or_a_box(sam, embedding) -> None:  # noqa: ANN001
    with pytest.raises(ValueError, match="at least one point or a box"):
        sam.decode_prompts(embedding)
    with pytest.raises(ValueError, match="mask_logits"):
        sam.decode_prompts(embedding, np.array([[1.0, 1.0]]), mask_logits=np.zeros((64, 64)))


def test_is_a_sam(sam) -> None:  # noqa: ANN001
    assert isinstance(sam.sam, Sam)
