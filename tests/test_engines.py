"""The SAM 2.1 and DINOv3 engines (issue 21): built with RANDOM weights (architecture and wiring
only; every mask is meaningless), official key names loaded strictly, point and box prompts,
a whole prediction, a click and discovery, and the presets. On TEST_DEVICE."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from backend.state.prompts import Prompts
from gfsam.discover import discover_candidates, sam_prompt_fn
from gfsam.encoders import SPECS, Dinov3Encoder, Sam2Encoder, build_encoder
from gfsam.encoders.dinov3 import DINOV3_INPUT, build_dinov3_vit
from gfsam.encoders.sam2_hiera import build_sam2_model
from gfsam.encoders.weights import (
    WeightsChecksumError,
    WeightsFormatError,
    record_sha256,
    recorded_sha256,
)
from gfsam.encodings import TargetEncoding
from gfsam.pipeline import GFSAM, PRESETS, build_pipeline
from gfsam.precision import native_bf16, resolve_precision
from gfsam.types import FRAME, GRID, TOKENS, GFSAMConfig, PromptDecoder
from worker.clicks.edit_rules import refine

DEVICE = torch.device(os.environ.get("TEST_DEVICE", "cpu"))


def _image(seed: int = 0, h: int = 96, w: int = 128) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def sam2() -> Sam2Encoder:
    torch.manual_seed(0)
    enc = build_encoder("sam2_tiny", checkpoint=None, device=DEVICE)
    assert isinstance(enc, Sam2Encoder) and not enc.pretrained
    return enc


@pytest.fixture(scope="module")
def embedding(sam2: Sam2Encoder) -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    frame = torch.randint(0, 256, (FRAME, FRAME, 3), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        return sam2.embed(frame)[0]


@pytest.fixture(scope="module")
def pipe() -> GFSAM:
    torch.manual_seed(0)
    return build_pipeline(preset="tiny_sam2", random_weights=True, device=DEVICE)


# --- registry and architectures --------------------------------------------------------------


def test_official_names_files_and_grid() -> None:
    assert SPECS["sam2.1_hiera_large"].filename == "sam2.1_hiera_large.pt"
    assert SPECS["sam2.1_hiera_base_plus"].url == (
        "https://dl.fbaipublicfiles.com/segment_anything_2/092824/sam2.1_hiera_base_plus.pt"
    )
    assert SPECS["dinov3_vitl16"].filename == "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth"
    assert SPECS["dinov3_vits16"].sha256_prefix == "08c60483"
    for name in ("dinov3_vits16", "dinov3_vitb16", "dinov3_vitl16", "dinov3_tiny"):
        spec = SPECS[name]
        assert (spec.patch_size, spec.input_size, spec.grid) == (16, 592, GRID)
    assert SPECS["dinov2_vitl14"].grid == GRID  # 518 / 14


@pytest.mark.parametrize(
    ("name", "embed_dim", "stages"),
    [("sam2.1_hiera_tiny", 96, [1, 2, 7, 2]), ("sam2.1_hiera_large", 144, [2, 6, 36, 4])],
)
def test_sam2_architectures_are_the_package_configs(
    name: str, embed_dim: int, stages: list[int]
) -> None:
    from sam2.build_sam import build_sam2

    ours = build_sam2_model(name)
    trunk = ours.image_encoder.trunk  # type: ignore[union-attr]
    assert trunk.patch_embed.proj.out_channels == embed_dim
    assert len(trunk.blocks) == sum(stages)
    config = {"sam2.1_hiera_tiny": "t", "sam2.1_hiera_large": "l"}[name]
    official = build_sam2(f"configs/sam2.1/sam2.1_hiera_{config}.yaml", None, device="cpu")
    theirs = official.state_dict()
    mine = ours.state_dict()
    assert set(mine) == set(theirs)
    assert all(mine[k].shape == theirs[k].shape for k in mine)


@pytest.mark.parametrize(("name", "width", "depth"), [("dinov3_vits16", 384, 12)])
def test_dinov3_small_is_timms_dinov3(name: str, width: int, depth: int) -> None:
    enc = build_encoder(name, checkpoint=None, device="cpu")
    assert isinstance(enc, Dinov3Encoder)
    vit = enc.vit
    assert vit.embed_dim == width and len(vit.blocks) == depth
    assert vit.num_prefix_tokens == 5  # CLS + 4 registers
    assert vit.patch_embed.proj.kernel_size == (16, 16)


# --- strict loading with the official key names ------------------------------------------------


def test_sam2_round_trip_with_official_keys(tmp_path: Path) -> None:
    from sam2.build_sam import _load_checkpoint

    torch.manual_seed(3)
    src = build_sam2_model("sam2_tiny")
    path = tmp_path / "sam2_tiny.pt"
    torch.save({"model": src.state_dict()}, path)  # the layout of Meta's files
    enc = build_encoder("sam2_tiny", checkpoint=path, device="cpu")
    assert isinstance(enc, Sam2Encoder) and enc.pretrained
    for key, value in src.state_dict().items():
        assert torch.equal(enc.model.state_dict()[key], value), key
    _load_checkpoint(build_sam2_model("sam2_tiny"), str(path))  # the package's own strict loader

    bad = {k.replace("sam_mask_decoder.", "mask_decoder."): v for k, v in src.state_dict().items()}
    bad["extra.weight"] = torch.zeros(1)
    torch.save({"model": bad}, tmp_path / "bad.pt")
    with pytest.raises(WeightsFormatError, match=r"missing=\['sam_mask_decoder\..*extra\.weight"):
        build_encoder("sam2_tiny", checkpoint=tmp_path / "bad.pt", device="cpu")
    torch.save(src.state_dict(), tmp_path / "flat.pt")  # not wrapped in {"model": ...}
    with pytest.raises(WeightsFormatError, match="'model'"):
        build_encoder("sam2_tiny", checkpoint=tmp_path / "flat.pt", device="cpu")


def official_dinov3_state(vit: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A timm DINOv3 state dict under DINOv3's own key names (as `dinov3.models.
    vision_transformer.DinoVisionTransformer` saves them): storage tokens, ls1/ls2 gammas, a
    fused qkv bias with its k-masking `bias_mask`, the RoPE periods and the mask token."""
    out: dict[str, torch.Tensor] = {}
    state = vit.state_dict()
    for key, value in state.items():
        if key.endswith("attn.q_bias"):
            stem = key[: -len("q_bias")]
            v_bias = state[stem + "v_bias"]
            out[stem + "qkv.bias"] = torch.cat([value, torch.zeros_like(value), v_bias])
            out[stem + "qkv.bias_mask"] = torch.cat(
                [torch.ones_like(value), torch.zeros_like(value), torch.ones_like(value)]
            )
            continue
        if key.endswith("attn.v_bias"):
            continue
        key = key.replace("reg_token", "storage_tokens")
        key = key.replace("gamma_1", "ls1.gamma").replace("gamma_2", "ls2.gamma")
        out[key] = value
    width = out["cls_token"].shape[-1]
    heads = vit.blocks[0].attn.num_heads  # type: ignore[index]
    out["rope_embed.periods"] = torch.ones(width // heads // 4)
    out["mask_token"] = torch.zeros(1, width)
    return out


def test_dinov3_round_trip_with_official_keys(tmp_path: Path) -> None:
    torch.manual_seed(4)
    src = build_dinov3_vit("dinov3_tiny")
    official = official_dinov3_state(src)
    assert {"storage_tokens", "blocks.0.ls1.gamma", "blocks.0.attn.qkv.bias"} <= set(official)
    path = tmp_path / "dinov3_tiny.pth"
    torch.save(official, path)
    enc = build_encoder("dinov3_tiny", checkpoint=path, device="cpu")
    assert isinstance(enc, Dinov3Encoder) and enc.pretrained
    for key, value in src.state_dict().items():
        assert torch.equal(enc.vit.state_dict()[key], value), key
    frames = torch.rand(1, 3, FRAME, FRAME)
    with torch.inference_mode():
        assert torch.equal(enc.tokens(frames), Dinov3Encoder(enc.spec, src.eval()).tokens(frames))

    official["blocks.0.ls1.gamma"] = torch.zeros(3)  # wrong shape
    del official["norm.weight"]
    torch.save(official, tmp_path / "bad.pth")
    with pytest.raises(WeightsFormatError, match=r"missing=\['norm.weight'\].*blocks.0.gamma_1"):
        build_encoder("dinov3_tiny", checkpoint=tmp_path / "bad.pth", device="cpu")


def test_hash_prefix_and_recorded_sha256(tmp_path: Path) -> None:
    """DINOv3's file name carries its sha256's first digits; SAM 2.1 has none: the sha256 of
    the installed file is recorded and checked on later loads."""
    from gfsam.encoders.weights import read_checkpoint

    path = tmp_path / "dinov3_vits16_pretrain_lvd1689m-08c60483.pth"
    torch.save({"x": torch.zeros(1)}, path)
    with pytest.raises(WeightsChecksumError, match="08c60483"):
        read_checkpoint(path, SPECS["dinov3_vits16"])
    sam2_file = tmp_path / "sam2.1_hiera_tiny.pt"
    torch.save({"model": {"x": torch.zeros(1)}}, sam2_file)
    assert recorded_sha256(sam2_file) is None
    assert read_checkpoint(sam2_file, SPECS["sam2.1_hiera_tiny"]) is not None  # warned only
    digest = record_sha256(sam2_file)
    assert recorded_sha256(sam2_file) == digest and len(digest) == 64
    read_checkpoint(sam2_file, SPECS["sam2.1_hiera_tiny"])  # matches the record
    torch.save({"model": {"x": torch.ones(1)}}, sam2_file)  # replaced after install
    with pytest.raises(WeightsChecksumError):
        read_checkpoint(sam2_file, SPECS["sam2.1_hiera_tiny"])
    assert read_checkpoint(sam2_file, SPECS["sam2.1_hiera_tiny"], verify=False) is not None


# --- SAM 2.1 decoding --------------------------------------------------------------------------


def test_sam2_embedding_packs_three_maps_losslessly(sam2: Sam2Encoder, embedding: torch.Tensor):
    e = sam2.channels
    assert embedding.shape == (4 * e, 64, 64) and embedding.dtype == torch.float32
    assert torch.isfinite(embedding).all()
    image_embed, (s0, s1) = sam2.unpack(embedding)
    assert image_embed.shape == (1, e, 64, 64)
    assert s1.shape == (1, e // 4, 128, 128) and s0.shape == (1, e // 8, 256, 256)
    repacked = torch.cat(
        [
            image_embed,
            torch.nn.functional.pixel_unshuffle(s1, 2),
            torch.nn.functional.pixel_unshuffle(s0, 4),
        ],
        1,
    )
    assert torch.equal(repacked[0], embedding.to(repacked.device))
    with pytest.raises(ValueError, match="embedding must be"):
        sam2.unpack(torch.zeros(256, 64, 64))


def test_sam2_matches_the_official_image_predictor(sam2: Sam2Encoder) -> None:
    """The same embedding, masks and logits as `SAM2ImagePredictor.set_image` + `predict`
    (up to float summation order: the predictor's input goes through torchvision's Resize)."""
    from sam2.sam2_image_predictor import SAM2ImagePredictor

    gen = torch.Generator().manual_seed(5)
    image = torch.randint(0, 256, (FRAME, FRAME, 3), dtype=torch.uint8, generator=gen)
    predictor = SAM2ImagePredictor(sam2.model)
    pts, labels = np.array([[300.0, 700.0], [40.0, 60.0]]), np.array([1, 0])
    box = np.array([100.0, 200.0, 600.0, 900.0])
    with torch.inference_mode():
        predictor.set_image(image.numpy())
        emb = sam2.embed(image)[0]
        image_embed, (s0, s1) = sam2.unpack(emb)
        assert torch.allclose(image_embed, predictor._features["image_embed"], atol=1e-4)
        assert torch.allclose(s0, predictor._features["high_res_feats"][0], atol=1e-4)
        assert torch.allclose(s1, predictor._features["high_res_feats"][1], atol=1e-4)
        official, iou, low = predictor.predict(pts, labels, box, multimask_output=True)
        mask, ours_iou, ours_low = sam2.decode_prompts(emb, pts, labels, box, multimask=True)
        one, _, _ = predictor.predict(pts[:1], labels[:1], multimask_output=False)
        ours_one = sam2.decode_points(emb, pts[:1].astype(np.int64))
    best = int(np.argmax(iou))
    assert abs(ours_iou - float(iou[best])) < 1e-3
    assert np.abs(ours_low - low[best]).max() < 1e-2
    assert (mask != official[best].astype(bool)).mean() < 1e-3
    assert (ours_one[0].cpu().numpy() != one[0].astype(bool)).mean() < 1e-3


def test_sam2_points_decode_in_batches(sam2: Sam2Encoder, embedding: torch.Tensor) -> None:
    xy = np.array([[10, 20], [500, 600], [1000, 3], [512, 512], [0, 1023]], dtype=np.int64)
    with torch.inference_mode():
        masks = sam2.decode_points(embedding, xy, batch_size=64)
        per_two = sam2.decode_points(embedding, xy, batch_size=2)
        empty = sam2.decode_points(embedding, np.zeros((0, 2), np.int64))
    assert masks.shape == (5, FRAME, FRAME) and masks.dtype == torch.bool
    assert masks.device.type == DEVICE.type
    assert per_two.shape == masks.shape
    assert empty.shape == (0, FRAME, FRAME)


def test_sam2_point_and_box_prompts(sam2: Sam2Encoder, embedding: torch.Tensor) -> None:
    assert isinstance(sam2, PromptDecoder)
    emb = embedding.cpu().numpy()
    pts, labels = np.array([[100.0, 200.0], [300.0, 50.0]]), np.array([1, 0])
    mask, iou, logits = sam2.decode_prompts(emb, pts, labels, multimask=True)
    assert mask.shape == (FRAME, FRAME) and mask.dtype == bool
    assert isinstance(iou, float) and logits.shape == (256, 256) and logits.dtype == np.float32
    box = np.array([50.0, 60.0, 400.0, 500.0])
    mask_b, _, _ = sam2.decode_prompts(emb, None, None, box)
    mask_c, _, _ = sam2.decode_prompts(emb, pts, labels, box, logits)
    assert mask_b.shape == mask_c.shape == (FRAME, FRAME)
    assert np.abs(logits).max() <= 32.0
    with pytest.raises(ValueError, match="at least one point or a box"):
        sam2.decode_prompts(emb)
    with pytest.raises(ValueError, match="mask_logits"):
        sam2.decode_prompts(emb, pts, labels, None, np.zeros((64, 64), np.float32))


@pytest.mark.parametrize("name", ["sam_tiny", "sam2_tiny"])
def test_batched_box_prompts_equal_one_call_per_pair(name: str) -> None:
    """`decode_boxes` (find all's batched region prompts) answers each (point, box) pair as
    `decode_prompts` does alone: same predicted IoU, the same mask but for a few threshold
    pixels (batched GEMMs sum in another order)."""
    torch.manual_seed(0)
    enc = build_encoder(name, checkpoint=None, device=DEVICE)
    gen = torch.Generator().manual_seed(2)
    frame = torch.randint(0, 256, (FRAME, FRAME, 3), dtype=torch.uint8, generator=gen)
    with torch.inference_mode():
        emb = enc.embed(frame)[0].cpu().numpy()
    points = np.array([[120.0, 140.0], [700.0, 300.0], [512.0, 900.0]], np.float32)
    boxes = np.array([[60, 80, 200, 220], [600, 200, 820, 420], [400, 800, 640, 1000]], np.float32)
    masks, ious = enc.decode_boxes(emb, points, boxes)
    assert masks.shape == (3, FRAME, FRAME) and masks.dtype == bool and ious.shape == (3,)
    for k in range(3):
        alone, iou, _ = enc.decode_prompts(emb, points[k : k + 1], None, boxes[k])
        assert abs(float(ious[k]) - iou) < 1e-4
        assert (masks[k] != alone).mean() < 1e-3
    none, no_iou = enc.decode_boxes(emb, np.zeros((0, 2)), np.zeros((0, 4)))
    assert none.shape == (0, FRAME, FRAME) and no_iou.shape == (0,)
    with pytest.raises(ValueError, match="one point per box"):
        enc.decode_boxes(emb, points, boxes[:2])


def test_cold_click_precision_auto_is_bf16_only_where_native(pipe: GFSAM) -> None:
    """`encode_mask_engine`: the pipeline's precision by default (equal to `encode_target`'s
    embedding), "auto" = bf16 where the device computes it natively, close to fp32."""
    image = _image(3)
    exact = pipe.encode_mask_engine(image)
    assert np.array_equal(exact, pipe.encode_target(image).embedding)
    native = native_bf16(pipe.device)
    assert resolve_precision("auto", pipe.device) == ("bf16" if native else "fp32")
    bf16 = pipe.encode_mask_engine(image, precision="bf16")
    assert bf16.shape == exact.shape and bf16.dtype == np.float32
    assert np.abs(bf16 - exact).mean() < 0.05 * np.abs(exact).mean()
    with pytest.raises(ValueError, match="unknown precision"):
        pipe.encode_mask_engine(image, precision="fp8")


# --- DINOv3 features ---------------------------------------------------------------------------


def test_dinov3_tokens_on_the_37_grid() -> None:
    torch.manual_seed(0)
    enc = build_encoder("dinov3_tiny", checkpoint=None, device=DEVICE)
    assert isinstance(enc, Dinov3Encoder)
    frames = torch.rand(2, 3, FRAME, FRAME)
    with torch.inference_mode():
        tokens = enc.tokens(frames)
        x = enc.preprocess(frames.to(DEVICE))
    assert x.shape == (2, 3, DINOV3_INPUT, DINOV3_INPUT)
    assert tokens.shape == (2, TOKENS, 32) and tokens.dtype == torch.float32
    assert torch.isfinite(tokens).all()


def test_a_feature_engine_on_another_grid_is_refused() -> None:
    import dataclasses

    enc = build_encoder("dinov3_tiny", checkpoint=None, device="cpu")
    assert isinstance(enc, Dinov3Encoder)
    enc.spec = dataclasses.replace(enc.spec, input_size=512)  # a 32 x 32 grid
    sam = build_encoder("sam2_tiny", checkpoint=None, device="cpu")
    assert isinstance(sam, Sam2Encoder)
    with pytest.raises(ValueError, match="32x32 patch grid"):
        GFSAM(sam, enc, device="cpu")


# --- whole prediction, click, discovery (tiny_sam2: the new engines at toy size) ----------------


def test_prediction_click_and_discovery(pipe: GFSAM) -> None:
    assert pipe.sam.spec.family == "sam2" and pipe.dino.spec.family == "dinov3"
    assert pipe.config.max_points == 32 and pipe.random_weights
    img, mask = _image(0), np.zeros((96, 128), dtype=bool)
    mask[20:60, 30:90] = True
    ref = pipe.encode_reference(img, mask)
    assert ref.encoder == "dinov3_tiny" and ref.tokens.shape == (TOKENS, 32)
    target = pipe.encode_target(_image(1))
    assert target.embedding.shape == (128, 64, 64)
    assert (target.sam_encoder, target.dino_encoder) == ("sam2_tiny", "dinov3_tiny")
    assert TargetEncoding.from_bytes(target.to_bytes()).embedding.shape == (128, 64, 64)
    preds = pipe.predict_labels(target, {"Cat": [ref], "Dog": [ref]})
    for pred in preds.values():
        assert pred.mask.shape == (96, 128) and pred.mask.dtype == bool
        assert 0.0 <= pred.score <= 1.0
        assert 0 < pred.segmentation.n_points <= 32

    prompts = Prompts(label="Cat", points=[(40.0, 30.0)], positive=[True], width=128, height=96)
    outcome = refine(pipe.sam, target.embedding, prompts, (96, 128))
    assert outcome.mask.shape == (96, 128) and outcome.rule == "new"
    boxed = Prompts(label="Cat", box=(10.0, 10.0, 80.0, 70.0), width=128, height=96)
    assert refine(pipe.sam, target.embedding, boxed, (96, 128)).mask.shape == (96, 128)

    labelled = np.zeros((FRAME, FRAME), dtype=bool)
    labelled[:300, :300] = True
    fn = sam_prompt_fn(pipe.sam, target.embedding)
    cands = discover_candidates(target.tokens, labelled, fn)
    for cand in cands:  # random weights: how many is meaningless, their shape is not
        assert cand.mask.shape == (FRAME, FRAME) and cand.mask.dtype == bool


def test_presets_name_the_engines() -> None:
    assert (PRESETS["fast"].sam, PRESETS["fast"].dino) == ("sam2.1_hiera_tiny", "dinov3_vits16")
    assert PRESETS["fast"].max_points == 32
    assert (PRESETS["default"].sam, PRESETS["default"].dino) == ("sam_vit_h", "dinov2_vitl14")
    assert PRESETS["default"].max_points is None
    assert (PRESETS["quality"].sam, PRESETS["quality"].dino) == (
        "sam2.1_hiera_large",
        "dinov3_vitl16",
    )
    with pytest.raises(ValueError, match="has no weights"):
        build_pipeline(preset="tiny_sam2", device="cpu")


def test_preset_cap_explicit_engines_and_missing_weights(tmp_path: Path) -> None:
    from gfsam.encoders import WeightsNotFoundError

    with pytest.raises(WeightsNotFoundError, match="sam2.1_hiera_tiny.pt"):
        build_pipeline(preset="fast", model_dir=tmp_path, device="cpu")
    torch.manual_seed(0)
    pipe = build_pipeline(
        preset="tiny_sam2",
        sam="sam_tiny",  # explicit names win over the preset's (INTERACTIVE_SAM)
        random_weights=True,
        device="cpu",
        config=GFSAMConfig(max_points=7),  # the caller's cap wins over the preset's
    )
    assert (pipe.sam.spec.name, pipe.dino.spec.name) == ("sam_tiny", "dinov3_tiny")
    assert pipe.config.max_points == 7
    with pytest.raises(ValueError, match=r"unknown sam encoder \(mask engine\)"):
        build_pipeline(sam="dinov3_tiny", random_weights=True, device="cpu")
