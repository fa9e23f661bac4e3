"""Checkpoint resolution, integrity and strict loading; full-size official-format round trips.

The `slow` tests build SAM ViT-H and DINOv2 ViT-L with random weights, save them in the official
formats (SAM: ``torch.save(sam.state_dict())``; DINOv2: the DINOv2 repo's key names incl.
``mask_token``), load them back through `build_encoder` and run one forward pass each.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from gfsam.encoders import SPECS, build_encoder
from gfsam.encoders.dinov2 import _build_vit
from gfsam.encoders.weights import (
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsNotFoundError,
    dinov2_to_timm,
    download_weights,
    file_sha256,
    resolve_checkpoint,
    verify_sha256,
)
from gfsam.types import FRAME, TOKENS

REFUSED_URL = "http://127.0.0.1:9/sam_vit_b_01ec64.pth"  # discard port: connection refused


def official_dinov2_shapes(width: int, depth: int, mlp: int) -> dict[str, tuple[int, ...]]:
    """Tensor shapes under the DINOv2 repo's key names (dinov2/models/vision_transformer.py).

    ViT-g (``mlp`` = 4096 at width 1536) uses SwiGLUFFNFused: ``mlp.w12`` packs the gate and
    value projections, ``mlp.w3`` projects back; the others use ``mlp.fc1``/``mlp.fc2``.
    """
    shapes: dict[str, tuple[int, ...]] = {
        "cls_token": (1, 1, width),
        "pos_embed": (1, 1 + TOKENS, width),
        "mask_token": (1, width),
        "patch_embed.proj.weight": (width, 3, 14, 14),
        "patch_embed.proj.bias": (width,),
        "norm.weight": (width,),
        "norm.bias": (width,),
    }
    swiglu = width == 1536
    up, down = ("mlp.w12", "mlp.w3") if swiglu else ("mlp.fc1", "mlp.fc2")
    for i in range(depth):
        block = {
            "norm1.weight": (width,),
            "norm1.bias": (width,),
            "attn.qkv.weight": (3 * width, width),
            "attn.qkv.bias": (3 * width,),
            "attn.proj.weight": (width, width),
            "attn.proj.bias": (width,),
            "ls1.gamma": (width,),
            "norm2.weight": (width,),
            "norm2.bias": (width,),
            f"{up}.weight": ((2 if swiglu else 1) * mlp, width),
            f"{up}.bias": ((2 if swiglu else 1) * mlp,),
            f"{down}.weight": (width, mlp),
            f"{down}.bias": (width,),
            "ls2.gamma": (width,),
        }
        shapes.update({f"blocks.{i}.{k}": v for k, v in block.items()})
    return shapes


def official_dinov2_state(width: int, depth: int, mlp: int, seed: int) -> dict[str, torch.Tensor]:
    """Random tensors under the DINOv2 repo's key names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    shapes = official_dinov2_shapes(width, depth, mlp)
    return {k: torch.randn(v, generator=gen) * 0.02 for k, v in shapes.items()}


@pytest.mark.parametrize(
    ("name", "width", "depth", "mlp"),
    [
        ("dinov2_vits14", 384, 12, 1536),
        ("dinov2_vitb14", 768, 12, 3072),
        ("dinov2_vitl14", 1024, 24, 4096),
        ("dinov2_vitg14", 1536, 40, 4096),
    ],
)
def test_official_dinov2_layouts_map_onto_timm(name: str, width: int, depth: int, mlp: int):
    """Every official key but mask_token lands on a timm tensor of the same shape (meta device,
    so even ViT-g costs no memory)."""
    with torch.device("meta"):
        timm_shapes = {k: tuple(v.shape) for k, v in _build_vit(name).state_dict().items()}
    official = official_dinov2_shapes(width, depth, mlp)
    converted = dinov2_to_timm({k: torch.empty(0) for k in official})
    expected = {
        k.replace(".w12.", ".fc1.").replace(".w3.", ".fc2."): v
        for k, v in official.items()
        if k != "mask_token"
    }
    assert set(converted) == set(expected) == set(timm_shapes)
    assert all(timm_shapes[k] == v for k, v in expected.items())


def _free() -> None:
    gc.collect()


def test_missing_file_lists_every_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_checkpoint(SPECS["sam_vit_h"], tmp_path)
    assert info.value.tried == [tmp_path / "sam_vit_h_4b8939.pth"]
    assert str(tmp_path / "sam_vit_h_4b8939.pth") in str(info.value)
    assert "weights download" in str(info.value)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path / "env"))
    with pytest.raises(WeightsNotFoundError) as info:
        resolve_checkpoint(SPECS["dinov2_vitl14"])
    assert info.value.tried[0] == tmp_path / "env" / "dinov2_vitl14_pretrain.pth"
    assert len(info.value.tried) == 2  # then the torch hub cache
    assert all(str(p) in str(info.value) for p in info.value.tried)


def test_resolve_finds_official_filename(tmp_path: Path) -> None:
    (tmp_path / "sam_vit_b_01ec64.pth").write_bytes(b"x")
    assert resolve_checkpoint(SPECS["sam_vit_b"], tmp_path) == tmp_path / "sam_vit_b_01ec64.pth"


def test_sha256_mismatch_raises(tmp_path: Path) -> None:
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save({"x": torch.zeros(2)}, path)
    verify_sha256(path, file_sha256(path))
    with pytest.raises(WeightsChecksumError, match="sha256"):
        verify_sha256(path, "0" * 64)
    with pytest.raises(WeightsChecksumError):
        build_encoder("sam_vit_b", checkpoint=path, device="cpu")  # verify=True by default


def test_tiny_sam_round_trip_and_bad_keys(tmp_path: Path) -> None:
    source = build_encoder("sam_tiny", checkpoint=None, device="cpu")
    state = source.sam.state_dict()
    path = tmp_path / "sam_tiny.pth"
    torch.save(state, path)
    loaded = build_encoder("sam_tiny", checkpoint=path, device="cpu")
    assert loaded.pretrained
    assert all(torch.equal(v, loaded.sam.state_dict()[k]) for k, v in state.items())
    torch.save({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(WeightsFormatError, match="extra.weight"):
        build_encoder("sam_tiny", checkpoint=path, device="cpu")
    torch.save({k: v for k, v in state.items() if k != "mask_decoder.iou_token.weight"}, path)
    with pytest.raises(WeightsFormatError, match="iou_token"):
        build_encoder("sam_tiny", checkpoint=path, device="cpu")


def test_tiny_dinov2_official_keys_drop_only_mask_token(tmp_path: Path) -> None:
    official = official_dinov2_state(32, 2, 128, seed=0)
    path = tmp_path / "dinov2_tiny.pth"
    torch.save(official, path)
    loaded = build_encoder("dinov2_tiny", checkpoint=path, device="cpu").vit.state_dict()
    assert set(loaded) == set(official) - {"mask_token"}
    assert all(torch.equal(loaded[k], v) for k, v in official.items() if k != "mask_token")
    torch.save({**official, "register_tokens": torch.zeros(1, 4, 32)}, path)
    with pytest.raises(WeightsFormatError, match="register_tokens"):
        build_encoder("dinov2_tiny", checkpoint=path, device="cpu")
    torch.save({k: v for k, v in official.items() if k != "blocks.1.ls2.gamma"}, path)
    with pytest.raises(WeightsFormatError, match="ls2.gamma"):
        build_encoder("dinov2_tiny", checkpoint=path, device="cpu")


def test_dinov2_giant_swiglu_names() -> None:
    state = {"blocks.3.mlp.w12.weight": torch.zeros(1), "blocks.3.mlp.w3.bias": torch.zeros(1)}
    assert set(dinov2_to_timm(state)) == {"blocks.3.mlp.fc1.weight", "blocks.3.mlp.fc2.bias"}


def test_download_fails_clearly_offline(tmp_path: Path) -> None:
    specs = {"sam_vit_b": dataclasses.replace(SPECS["sam_vit_b"], url=REFUSED_URL)}
    with pytest.raises(WeightsDownloadError, match=REFUSED_URL.replace(".", r"\.")):
        download_weights(["sam_vit_b"], tmp_path, specs, timeout_s=5)
    assert list(tmp_path.iterdir()) == []  # no partial file left behind


@pytest.fixture
def http_dir(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    served = tmp_path / "served"
    served.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield served, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_download_verifies_and_renames(tmp_path: Path, http_dir: tuple[Path, str]) -> None:
    served, base = http_dir
    (served / "sam_vit_b_01ec64.pth").write_bytes(b"checkpoint bytes")
    good = dataclasses.replace(
        SPECS["sam_vit_b"],
        url=f"{base}/sam_vit_b_01ec64.pth",
        sha256=file_sha256(served / "sam_vit_b_01ec64.pth"),
    )
    models = tmp_path / "models"
    with pytest.raises(WeightsDownloadError, match="sha256"):
        download_weights(["b"], models, {"b": dataclasses.replace(good, sha256="0" * 64)})
    assert list(models.iterdir()) == []
    (path,) = download_weights(["b"], models, {"b": good})
    assert path == models / "sam_vit_b_01ec64.pth" and path.read_bytes() == b"checkpoint bytes"


@pytest.mark.slow
def test_full_size_sam_vit_h_round_trip(tmp_path: Path) -> None:
    start = time.perf_counter()
    torch.manual_seed(0)
    source = build_encoder("sam_vit_h", checkpoint=None, device="cpu")
    state = source.sam.state_dict()
    path = tmp_path / "sam_vit_h_4b8939.pth"
    torch.save(state, path)  # the official format: a plain Sam state dict
    loaded = build_encoder("sam_vit_h", checkpoint=path, device="cpu", verify=False)
    loaded_state = loaded.sam.state_dict()
    assert set(loaded_state) == set(state)
    assert all(torch.equal(loaded_state[k], v) for k, v in state.items())
    del source, state, loaded_state
    _free()
    path.unlink()
    image = torch.randint(0, 256, (FRAME, FRAME, 3), dtype=torch.uint8)
    with torch.inference_mode():
        emb = loaded.embed(image)  # the full 1024x1024 ViT-H forward
    assert emb.shape == (1, 256, 64, 64) and torch.isfinite(emb).all()
    del loaded
    _free()
    print(f"sam_vit_h round trip + forward: {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_full_size_dinov2_vitl14_round_trip(tmp_path: Path) -> None:
    start = time.perf_counter()
    official = official_dinov2_state(1024, 24, 4096, seed=1)
    assert official["pos_embed"].shape == (1, 1370, 1024)
    path = tmp_path / "dinov2_vitl14_pretrain.pth"
    torch.save(official, path)
    loaded = build_encoder("dinov2_vitl14", checkpoint=path, device="cpu", verify=False)
    path.unlink()
    state = loaded.vit.state_dict()
    assert set(state) == set(official) - {"mask_token"}
    assert all(torch.equal(state[k], v) for k, v in official.items() if k != "mask_token")
    del official, state
    _free()
    with torch.inference_mode():
        tokens = loaded.tokens(torch.rand(1, 3, FRAME, FRAME))
    assert tokens.shape == (1, TOKENS, 1024) and torch.isfinite(tokens).all()
    del loaded
    _free()
    print(f"dinov2_vitl14 round trip + forward: {time.perf_counter() - start:.1f} s")
