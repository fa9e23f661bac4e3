"""Image-level pipeline with tiny RANDOM encoders on real images (shapes and contracts only:
random weights make every mask meaningless, so nothing here measures accuracy)."""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from gfsam.encoders import WeightsNotFoundError
from gfsam.image import load_image, load_mask, mask_from_frame
from gfsam.pipeline import GFSAM, Prediction, Reference, TargetEncoding, build_pipeline
from gfsam.types import FRAME, TOKENS, GFSAMConfig
from tests.conftest import ASSETS

DEVICE = os.environ.get("TEST_DEVICE", "cpu")
COCO = ASSETS / "coco_elephant_example"
PERSEG = ASSETS / "perseg_subset"
CONFIG = GFSAMConfig(max_points=4)  # keeps the CPU mask decoder cheap


@pytest.fixture(scope="module")
def pipe() -> GFSAM:
    torch.manual_seed(0)
    return build_pipeline(preset="tiny", random_weights=True, device=DEVICE, config=CONFIG)


@pytest.fixture(scope="module")
def ref_pair() -> tuple[np.ndarray, np.ndarray]:
    return load_image(COCO / "000000286874.jpg"), load_mask(COCO / "000000286874_mask.png")


@pytest.fixture(scope="module")
def reference(pipe: GFSAM, ref_pair: tuple[np.ndarray, np.ndarray]) -> Reference:
    return pipe.encode_reference(*ref_pair)


@pytest.fixture(scope="module")
def target_image() -> np.ndarray:
    return load_image(COCO / "000000173279.jpg")  # 640x426: not square, not the ref size


def test_end_to_end_mask_at_original_size(
    pipe: GFSAM, reference: Reference, target_image: np.ndarray
) -> None:
    pred = pipe.predict(target_image, [reference])
    assert isinstance(pred, Prediction)
    assert pred.mask.shape == target_image.shape[:2] == (426, 640) and pred.mask.dtype == bool
    assert 0.0 <= pred.score <= 1.0 and isinstance(pred.abstained, bool)
    seg = pred.segmentation
    assert seg.mask.shape == (FRAME, FRAME) and seg.n_points <= CONFIG.max_points
    assert np.array_equal(pred.mask, mask_from_frame(seg.mask, target_image.shape[:2]))
    assert pipe.random_weights


def test_reference_contents(reference: Reference, ref_pair: tuple[np.ndarray, np.ndarray]) -> None:
    image, mask = ref_pair
    assert reference.tokens.shape == (TOKENS, 32) and reference.tokens.dtype == np.float32
    assert reference.fg.shape == reference.bg.shape == (TOKENS,)
    assert np.allclose(reference.fg + reference.bg, 1.0)
    assert reference.mask_area == int(mask.sum()) and reference.image_size == image.shape[:2]
    assert reference.encoder == "dinov2_tiny"


def test_reference_round_trip_bit_exact(reference: Reference) -> None:
    blob = reference.to_bytes()
    back = Reference.from_bytes(blob)
    for name in ("tokens", "fg", "bg"):
        a, b = getattr(reference, name), getattr(back, name)
        assert a.dtype == b.dtype and np.array_equal(a, b)
    assert (back.mask_area, back.image_size, back.encoder) == (
        reference.mask_area,
        reference.image_size,
        reference.encoder,
    )
    assert back.to_bytes() == blob


def test_float16_reference_round_trip(pipe: GFSAM, ref_pair: tuple[np.ndarray, ...]) -> None:
    half = GFSAM(pipe.sam, pipe.dino, CONFIG, device=DEVICE, token_dtype=np.float16)
    ref = half.encode_reference(*ref_pair)
    assert ref.tokens.dtype == np.float16
    assert np.array_equal(Reference.from_bytes(ref.to_bytes()).tokens, ref.tokens)


def test_target_round_trip_gives_same_prediction(
    pipe: GFSAM, reference: Reference, target_image: np.ndarray
) -> None:
    target = pipe.encode_target(target_image)
    assert target.embedding.shape == (32, 64, 64) and target.tokens.shape == (TOKENS, 32)
    assert target.image_size == (426, 640)
    back = TargetEncoding.from_bytes(target.to_bytes())
    assert np.array_equal(back.embedding, target.embedding)
    assert np.array_equal(back.tokens, target.tokens)
    again = Reference.from_bytes(reference.to_bytes())
    p1, p2 = pipe.predict(target, [reference]), pipe.predict(back, [again])
    assert np.array_equal(p1.mask, p2.mask) and p1.score == p2.score


def test_blobs_are_typed() -> None:
    with pytest.raises(ValueError):
        Reference.from_bytes(b"garbage")
    blob = TargetEncoding(
        np.zeros((32, 64, 64), np.float32),
        np.zeros((TOKENS, 4), np.float32),
        (10, 20),
        "sam_tiny",
        "dinov2_tiny",
    ).to_bytes()
    with pytest.raises(ValueError, match="Reference"):
        Reference.from_bytes(blob)


def test_predict_labels_encodes_target_once(
    pipe: GFSAM, reference: Reference, target_image: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = {"sam": 0, "dino": 0}
    sam_embed, dino_tokens = pipe.sam.embed, pipe.dino.tokens

    def count_embed(*args: object, **kwargs: object) -> torch.Tensor:
        calls["sam"] += 1
        return sam_embed(*args, **kwargs)

    def count_tokens(*args: object, **kwargs: object) -> torch.Tensor:
        calls["dino"] += 1
        return dino_tokens(*args, **kwargs)

    monkeypatch.setattr(pipe.sam, "embed", count_embed)
    monkeypatch.setattr(pipe.dino, "tokens", count_tokens)
    preds = pipe.predict_labels(target_image, {"Elephant": [reference], "Other": [reference] * 2})
    assert list(preds) == ["Elephant", "Other"]
    assert calls == {"sam": 1, "dino": 1}
    assert all(p.mask.shape == target_image.shape[:2] for p in preds.values())


def test_rgba_and_grey_images_accepted(pipe: GFSAM, target_image: np.ndarray) -> None:
    rgba = np.concatenate([target_image, np.zeros_like(target_image[..., :1])], axis=2)
    assert np.array_equal(pipe.encode_target(rgba).tokens, pipe.encode_target(target_image).tokens)
    grey = target_image[..., 0]
    expected = pipe.encode_target(np.repeat(grey[..., None], 3, axis=2)).tokens
    assert np.array_equal(pipe.encode_target(grey).tokens, expected)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda im, m: (im, np.zeros_like(m)), "empty"),
        (lambda im, m: (im, np.ones_like(m)), "all foreground"),
        (lambda im, m: (im, m[:-1]), "size"),
        (lambda im, m: (im.astype(np.float32), m), "uint8"),
        (lambda im, m: (im[..., :2], m), r"\[H, W, 3\]"),
        (lambda im, m: (im, m * 0.5), "0 and 1"),
        (lambda im, m: (im, m.tolist()), "numpy"),
    ],
)
def test_invalid_reference_inputs(pipe: GFSAM, ref_pair: tuple, change, message: str) -> None:
    image, mask = change(*ref_pair)
    with pytest.raises(ValueError, match=message):
        pipe.encode_reference(image, mask)


def test_invalid_predict_inputs(pipe: GFSAM, reference: Reference, target_image: np.ndarray):
    with pytest.raises(ValueError, match="at least one"):
        pipe.predict(target_image, [])
    other = dataclasses.replace(reference, encoder="dinov2_vitl14")
    with pytest.raises(ValueError, match="other encoders"):
        pipe.predict(target_image, [other])
    stale = TargetEncoding(
        np.zeros((32, 64, 64), np.float32), reference.tokens, (9, 9), "sam_vit_h", "dinov2_tiny"
    )
    with pytest.raises(ValueError, match="other encoders"):
        pipe.predict(stale, [reference])


def test_build_pipeline_contract(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the warning is logged once per process: another test module may have logged it already
    monkeypatch.setattr("gfsam.pipeline._warned_random", False)
    with pytest.raises(ValueError, match="random_weights=True"):
        build_pipeline(preset="tiny", device="cpu")
    with pytest.raises(ValueError, match="unknown sam encoder"):
        build_pipeline(sam="dinov2_tiny", random_weights=True, device="cpu")
    with pytest.raises(ValueError, match="unknown preset"):
        build_pipeline(preset="huge", random_weights=True, device="cpu")
    with pytest.raises(WeightsNotFoundError, match="sam_vit_h_4b8939.pth"):
        build_pipeline(model_dir=tmp_path, device="cpu")
    with caplog.at_level(logging.WARNING, logger="gfsam.pipeline"):
        build_pipeline(preset="tiny", random_weights=True, device="cpu")
    assert "RANDOM WEIGHTS" in caplog.text and "MEANINGLESS" in caplog.text
