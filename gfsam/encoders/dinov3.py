"""DINOv3 as a feature engine through timm (ViT-S/B/L/16: ``vit_{small,base,large}_patch16_dinov3
_qkvb``, the RoPE ViT with 4 register tokens that timm builds for DINOv3).

Grid. DINOv3's patch is 16 px (DINOv2's 14). GF-SAM's token-level stages work on one fixed
G x G grid (``gfsam.types.GRID`` = 37, see the glossary there), so the input side is chosen to
give that grid: 37 x 16 = 592 px (DINOv2: 37 x 14 = 518). DINOv3 has no learned position table
(rotary embeddings), so any multiple of 16 is a native resolution; `EncoderSpec.grid` is what
the pipeline checks.

Features: the patch tokens of the last block after the final LayerNorm, registers and CLS
dropped (``get_intermediate_layers(norm=True)``, the features DINOv3's own dense evaluations
use; DINOv2's path keeps GF-SAM's pre-norm tokens for parity). Which of the two suits GF-SAM
better with DINOv3 is not measured: no weights here.

Official files (``dinov3_vit{s,b,l}16_pretrain_lvd1689m-<hash>.pth``) use DINOv3's key names
(``storage_tokens``, ``ls1.gamma``, fused ``qkv.bias`` with a ``bias_mask``,
``rope_embed.periods``); timm's own ``checkpoint_filter_fn`` maps them to timm's, then loading
is strict.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import timm
import torch
import torchvision.transforms.functional as TF
from timm.models.eva import Eva
from timm.models.eva import checkpoint_filter_fn as eva_checkpoint_filter
from torch import Tensor
from torchvision.transforms import InterpolationMode

from gfsam.encoders.dinov2 import IMAGENET_MEAN, IMAGENET_STD, Dinov2Encoder
from gfsam.encoders.weights import EncoderSpec, load_strict, read_checkpoint
from gfsam.types import GRID

DINOV3_PATCH = 16
DINOV3_INPUT = GRID * DINOV3_PATCH  # 592: a 37 x 37 grid
# Meta gates the downloads behind its licence form; files are laid out as DINOv3's hub code
# expects them under this base (`dinov3/hub/utils.py`, DINOV3_BASE_URL).
_URL = "https://dl.fbaipublicfiles.com/dinov3/{0}/{1}"
# name -> (timm architecture, width, official file name with torch.hub's sha256 prefix)
_ARCH: dict[str, tuple[str | None, int, str | None]] = {
    "dinov3_vits16": (
        "vit_small_patch16_dinov3_qkvb",
        384,
        "dinov3_vits16_pretrain_lvd1689m-08c60483.pth",
    ),
    "dinov3_vitb16": (
        "vit_base_patch16_dinov3_qkvb",
        768,
        "dinov3_vitb16_pretrain_lvd1689m-73cec8be.pth",
    ),
    "dinov3_vitl16": (
        "vit_large_patch16_dinov3_qkvb",
        1024,
        "dinov3_vitl16_pretrain_lvd1689m-8aa4cbdd.pth",
    ),
    "dinov3_tiny": (None, 32, None),  # test-only toy
}


def _spec(name: str) -> EncoderSpec:
    _, width, filename = _ARCH[name]
    return EncoderSpec(
        name=name,
        family="dinov3",
        input_size=DINOV3_INPUT,
        patch_size=DINOV3_PATCH,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=width,
        filename=filename,
        url=_URL.format(name, filename) if filename else None,
        sha256=None,  # Meta publishes none; the file name carries its first 8 hex digits
        sha256_prefix=filename.rsplit("-", 1)[1].split(".")[0] if filename else None,
    )


DINOV3_SPECS: dict[str, EncoderSpec] = {name: _spec(name) for name in _ARCH}


def build_dinov3_vit(name: str) -> Eva:
    """Random-init timm DINOv3 ViT at 592 px, no head."""
    arch, width, _ = _ARCH[name]
    if arch is None:
        # Test-only: the ViT-S/16 layout (RoPE, 4 registers, LayerScale) at toy width/depth.
        return Eva(
            img_size=DINOV3_INPUT,
            patch_size=DINOV3_PATCH,
            embed_dim=width,
            depth=2,
            num_heads=2,
            qkv_bias=True,
            init_values=1e-5,
            rope_type="dinov3",
            rope_temperature=100,
            rope_rotate_half=True,
            use_rot_pos_emb=True,
            use_abs_pos_emb=False,
            num_reg_tokens=4,
            use_fc_norm=False,
            num_classes=0,
            dynamic_img_size=True,
        )
    return cast(
        Eva, timm.create_model(arch, pretrained=False, num_classes=0, img_size=DINOV3_INPUT)
    )


def dinov3_to_timm(state: dict[str, Tensor], vit: Eva) -> dict[str, Tensor]:
    """An official DINOv3 state dict in timm's names (timm's `checkpoint_filter_fn`: drops
    ``rope_embed.periods``, ``*.bias_mask``, ``mask_token``; splits ``qkv.bias`` into the q and
    v biases, the k bias being fixed at 0 by the mask)."""
    return cast(dict[str, Tensor], eva_checkpoint_filter(state, vit))


class Dinov3Encoder(Dinov2Encoder):
    """DINOv3 ViT returning its patch tokens on the 37 x 37 grid (module docstring).

    Same interface as `Dinov2Encoder` (``tokens``, ``preprocess``, ``spec``, ``pretrained``).
    """

    def preprocess(self, frames: Tensor) -> Tensor:
        """Bilinear resize 1024 -> 592 with antialias (DINOv3's torchvision v2 transforms), then
        ImageNet normalisation.

        Args:
            frames: [B, 3, S, S] float32 in [0, 1].

        Returns:
            [B, 3, 592, 592] float32.
        """
        if frames.ndim != 4 or frames.shape[1] != 3:
            raise ValueError(f"frames must be [B, 3, S, S], got {tuple(frames.shape)}")
        size = [self.spec.input_size, self.spec.input_size]
        x = TF.resize(frames, size, interpolation=InterpolationMode.BILINEAR, antialias=True)
        return TF.normalize(x, list(self.spec.mean), list(self.spec.std))

    def _last_tokens(self, x: Tensor) -> Tensor:
        (last,) = cast(
            list[Tensor],
            self.vit.forward_intermediates(
                x, indices=1, norm=True, output_fmt="NLC", intermediates_only=True
            ),
        )
        return last  # (B, T, C): registers and CLS dropped by timm


def build_dinov3(
    name: str, *, checkpoint: Path | None, device: torch.device | str, verify: bool = True
) -> Dinov3Encoder:
    """Build a DINOv3 engine, random-init when `checkpoint` is None.

    Args:
        name: a key of `DINOV3_SPECS`.
        checkpoint: official ``dinov3_vit*16_pretrain_lvd1689m-*.pth`` (DINOv3 key names), or None.
        device: where the model lives (never defaulted).
        verify: check the file's hash (file-name prefix, and the sha256 recorded at install).

    Raises:
        KeyError, WeightsChecksumError, WeightsFormatError (every bad key named).
    """
    spec = DINOV3_SPECS[name]
    state = read_checkpoint(checkpoint, spec, verify=verify)  # before building the model
    vit = build_dinov3_vit(name)
    encoder = Dinov3Encoder(spec, vit)
    if state is not None:
        load_strict(vit, dinov3_to_timm(state, vit), str(checkpoint))
        encoder.pretrained = True
    return encoder.eval().to(device)
