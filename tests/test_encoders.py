"""Encoder registry and random-init forwards (timm's test_model_forward manner), on TEST_DEVICE."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything import SamPredictor, sam_model_registry

from gfsam.encoders import ENCODERS, SPECS, Dinov2Encoder, SamEncoder, build_encoder
from gfsam.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD
from gfsam.encoders.sam import build_sam_model
from gfsam.types import FRAME, TOKENS

DEVICE = torch.device(os.environ.get("TEST_DEVICE", "cpu"))
SAM_NAMES = {"sam_vit_h", "sam_vit_l", "sam_vit_b", "sam_tiny"}
DINO_NAMES = {"dinov2_vitl14", "dinov2_vits14", "dinov2_vitb14", "dinov2_vitg14", "dinov2_tiny"}
SAM2_NAMES = {
    "sam2.1_hiera_tiny",
    "sam2.1_hiera_small",
    "sam2.1_hiera_base_plus",
    "sam2.1_hiera_large",
    "sam2_tiny",
}
DINO3_NAMES = {"dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_tiny"}
TOYS = {"sam_tiny", "dinov2_tiny", "sam2_tiny", "dinov3_tiny"}


@pytest.fixture(scope="module")
def sam() -> SamEncoder:
    torch.manual_seed(0)
    enc = build_encoder("sam_tiny", checkpoint=None, device=DEVICE)
    assert isinstance(enc, SamEncoder)
    return enc


@pytest.fixture(scope="module")
def dino() -> Dinov2Encoder:
    torch.manual_seed(0)
    enc = build_encoder("dinov2_tiny", checkpoint=None, device=DEVICE)
    assert isinstance(enc, Dinov2Encoder)
    return enc


def _image(seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (FRAME, FRAME, 3), dtype=torch.uint8, generator=gen)


def test_registry_names_and_specs() -> None:
    assert set(ENCODERS) == SAM_NAMES | DINO_NAMES | SAM2_NAMES | DINO3_NAMES
    for name, spec in SPECS.items():
        assert spec.name == name and spec.family in ("sam", "dinov2", "sam2", "dinov3")
        if name in TOYS:
            assert spec.filename is None and spec.url is None and spec.sha256 is None
            continue
        assert spec.url is not None and spec.url.endswith("/" + str(spec.filename))
        if spec.family in ("sam2", "dinov3"):  # Meta publishes no sha256 (recorded at install)
            assert spec.sha256 is None
            continue
        assert spec.sha256 is not None and len(spec.sha256) == 64
        int(spec.sha256, 16)
    assert SPECS["sam_vit_h"].filename == "sam_vit_h_4b8939.pth"
    assert SPECS["dinov2_vitl14"].url == (
        "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth"
    )
    assert (SPECS["dinov2_vitl14"].input_size, SPECS["dinov2_vitl14"].patch_size) == (518, 14)
    assert (SPECS["sam_vit_b"].input_size, SPECS["sam_vit_b"].out_channels) == (1024, 256)


def test_unknown_encoder_raises() -> None:
    with pytest.raises(ValueError, match="unknown encoder"):
        build_encoder("sam_vit_x", checkpoint=None, device="cpu")


def test_dinov2_small_matches_official_architecture() -> None:
    enc = build_encoder("dinov2_vits14", checkpoint=None, device="cpu")
    vit = enc.vit
    assert vit.pos_embed.shape == (1, 1 + TOKENS, 384)  # CLS + 37x37, no registers
    assert len(vit.blocks) == 12 and vit.patch_embed.proj.kernel_size == (14, 14)
    assert torch.allclose(vit.blocks[0].ls1.gamma, torch.full((384,), 1e-5))  # init_values
    assert not enc.pretrained


def test_sam_embed_shape_dtype_finite(sam: SamEncoder) -> None:
    with torch.inference_mode():
        emb = sam.embed(_image())
    assert emb.shape == (1, sam.spec.out_channels, 64, 64) and emb.dtype == torch.float32
    assert emb.device.type == DEVICE.type and torch.isfinite(emb).all()


def test_sam_embed_rejects_wrong_input(sam: SamEncoder) -> None:
    with pytest.raises(ValueError, match="uint8"):
        sam.embed(_image().float())
    with pytest.raises(ValueError, match="uint8"):
        sam.embed(_image()[:512])


def test_sam_decode_matches_official_predictor(sam: SamEncoder) -> None:
    """Same masks as SamPredictor.set_image + predict_torch(multimask_output=False) > 0."""
    image, xy = _image(1), np.array([[0, 0], [300, 700], [1023, 1023], [512, 5]])
    predictor = SamPredictor(sam.sam)
    with torch.inference_mode():
        predictor.set_image(image.numpy())
        ours_emb = sam.embed(image)
        coords = torch.as_tensor(xy, dtype=torch.float32, device=DEVICE)[:, None]  # (P, 1, 2)
        labels = torch.ones(coords.shape[:2], dtype=torch.int, device=DEVICE)
        official, _, _ = predictor.predict_torch(coords, labels, multimask_output=False)
        ours = sam.decode_points(ours_emb, xy, batch_size=3)
    assert torch.allclose(ours_emb, predictor.features, atol=1e-5)
    assert ours.shape == (4, FRAME, FRAME) and ours.dtype == torch.bool
    assert torch.equal(ours, official[:, 0])


def test_sam_decode_batches_and_empty(sam: SamEncoder) -> None:
    xy = np.array([[10, 20], [500, 600], [1000, 3], [40, 900], [77, 77]])
    with torch.inference_mode():
        emb = sam.embed(_image(2))
        one = sam.decode_points(emb, xy, batch_size=1)
        all_ = sam.decode_points(emb[0], xy, batch_size=64)
        empty = sam.decode_points(emb, np.zeros((0, 2), dtype=np.int64))
    assert torch.equal(one, all_)
    assert empty.shape == (0, FRAME, FRAME) and empty.dtype == torch.bool


def test_dinov2_tokens_shape_dtype_finite(dino: Dinov2Encoder) -> None:
    frames = torch.rand(2, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        tokens = dino.tokens(frames)
    assert tokens.shape == (2, TOKENS, 32) and tokens.dtype == torch.float32
    assert tokens.device.type == DEVICE.type and torch.isfinite(tokens).all()


def test_dinov2_tokens_are_prenorm_patch_tokens(dino: Dinov2Encoder) -> None:
    frames = torch.rand(1, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        tokens = dino.tokens(frames)
        x = dino.preprocess(frames.to(DEVICE))
        vit = dino.vit
        prenorm = vit.blocks(vit.norm_pre(vit._pos_embed(vit.patch_embed(x))))  # (1, 1+T, C)
        postnorm = vit.forward_features(x)  # (1, 1+T, C), final LayerNorm applied
    assert torch.allclose(tokens, prenorm[:, 1:], atol=1e-5)
    assert not torch.allclose(tokens, postnorm[:, 1:], atol=1e-2)


def test_dinov2_preprocess_is_bilinear_without_antialias(dino: Dinov2Encoder) -> None:
    frames = torch.rand(1, 3, FRAME, FRAME, generator=torch.Generator().manual_seed(2))
    x = F.interpolate(frames, size=(518, 518), mode="bilinear", align_corners=False)
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    assert torch.allclose(dino.preprocess(frames), (x - mean) / std, atol=1e-6)
    with pytest.raises(ValueError, match="frames"):
        dino.preprocess(frames[:, :, :518, :518])


@pytest.mark.parametrize("name", ["sam_vit_h", "sam_vit_l", "sam_vit_b"])
def test_sam_architectures_match_segment_anything_builders(name: str) -> None:
    """Same keys and shapes as segment_anything.sam_model_registry (meta device: no memory)."""
    with torch.device("meta"):
        ours = build_sam_model(name).state_dict()
        official = sam_model_registry[name.removeprefix("sam_")]().state_dict()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in official.items()}
