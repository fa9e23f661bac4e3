"""DINOv2 patch-token encoder through timm (port of `GFSAM.extract_img_feats` minus the
normalisation quirk, which `gfsam.points.normalize_tokens` applies; spec §3).

The official model is DINOv2 ``vit_large(img_size=518, patch_size=14, init_values=1e-5,
block_chunks=0)`` without registers: timm's ``vit_large_patch14_dinov2`` architecture. Features
are the output of the last block *before* the final LayerNorm (``x_prenorm``), patch tokens only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import timm
import torch
import torchvision.transforms.functional as TF
from timm.models.eva import Eva
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from torchvision.transforms import InterpolationMode

from gfsam.encoders.weights import (
    EncoderSpec,
    dinov2_to_timm,
    load_strict,
    read_checkpoint,
)
from gfsam.precision import autocast
from gfsam.types import FRAME

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_INPUT = 518
DINO_PATCH = 14
_URL = "https://dl.fbaipublicfiles.com/dinov2/{0}/{0}_pretrain.pth"


def _spec(name: str, width: int, sha256: str | None) -> EncoderSpec:
    official = not name.endswith("_tiny")
    return EncoderSpec(
        name=name,
        family="dinov2",
        input_size=DINO_INPUT,
        patch_size=DINO_PATCH,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        out_channels=width,
        filename=f"{name}_pretrain.pth" if official else None,
        url=_URL.format(name) if official else None,
        sha256=sha256,
    )


# sha256: finegrain-ai/refiners src/refiners/conversion/models/dinov2.py (see weights.py).
DINOV2_SPECS: dict[str, EncoderSpec] = {
    "dinov2_vitl14": _spec(
        "dinov2_vitl14", 1024, "d5383ea8f4877b2472eb973e0fd72d557c7da5d3611bd527ceeb1d7162cbf428"
    ),
    "dinov2_vits14": _spec(
        "dinov2_vits14", 384, "b938bf1bc15cd2ec0feacfe3a1bb553fe8ea9ca46a7e1d8d00217f29aef60cd9"
    ),
    "dinov2_vitb14": _spec(
        "dinov2_vitb14", 768, "0b8b82f85de91b424aded121c7e1dcc2b7bc6d0adeea651bf73a13307fad8c73"
    ),
    "dinov2_vitg14": _spec(
        "dinov2_vitg14", 1536, "baf8467e50af277596bbbafa06887c177ee899ab46033649c383577d7e9309d3"
    ),
    "dinov2_tiny": _spec("dinov2_tiny", 32, None),
}
_TIMM_ARCH = {
    "dinov2_vitl14": "vit_large_patch14_dinov2",
    "dinov2_vits14": "vit_small_patch14_dinov2",
    "dinov2_vitb14": "vit_base_patch14_dinov2",
    "dinov2_vitg14": "vit_giant_patch14_dinov2",
}


def _build_vit(name: str) -> VisionTransformer:
    """Random-init timm ViT of the named DINOv2 model at 518 px, no head, no registers."""
    common: dict[str, Any] = {"pretrained": False, "num_classes": 0, "img_size": DINO_INPUT}
    if name == "dinov2_tiny":
        # Test-only: the ViT-L/14 layout (LayerScale 1e-5, patch 14, 518 px) at toy width/depth.
        return timm.models.vision_transformer.VisionTransformer(
            patch_size=DINO_PATCH,
            embed_dim=32,
            depth=2,
            num_heads=2,
            init_values=1e-5,
            num_classes=0,
            img_size=DINO_INPUT,
        )
    return cast(VisionTransformer, timm.create_model(_TIMM_ARCH[name], **common))


class Dinov2Encoder(nn.Module):
    """DINOv2 ViT returning raw (un-normalised) pre-norm patch tokens.

    Attributes:
        spec: the `EncoderSpec`. vit: the timm VisionTransformer.
        pretrained: True when official weights were loaded.
    """

    def __init__(self, spec: EncoderSpec, vit: VisionTransformer | Eva) -> None:
        super().__init__()
        self.spec, self.vit, self.pretrained = spec, vit, False

    @property
    def device(self) -> torch.device:
        return next(self.vit.parameters()).device

    def preprocess(self, frames: Tensor) -> Tensor:
        """Official DINOv2 input: bilinear resize 1024 -> 518 WITHOUT antialias, then ImageNet
        normalisation (torchvision 0.14 did not antialias tensors; spec §3).

        Args:
            frames: [B, 3, S, S] float32 in [0, 1] (S = 1024, the squashed frame).

        Returns:
            [B, 3, 518, 518] float32.
        """
        if frames.ndim != 4 or frames.shape[1] != 3 or frames.shape[-1] != FRAME:
            raise ValueError(f"frames must be [B, 3, {FRAME}, {FRAME}], got {tuple(frames.shape)}")
        size = [self.spec.input_size, self.spec.input_size]
        x = TF.resize(frames, size, interpolation=InterpolationMode.BILINEAR, antialias=False)
        return TF.normalize(x, list(self.spec.mean), list(self.spec.std))

    def tokens(self, frames: Tensor, *, precision: str = "fp32") -> Tensor:
        """Patch tokens of the last block before the final norm (``x_prenorm[:, 1:]``).

        Args:
            frames: [B, 3, S, S] float32 in [0, 1].
            precision: ``"fp32"`` (parity) or ``"bf16"`` (autocast around the ViT only).

        Returns:
            [B, T, C] float32, T = 1369 row-major (token = y * 37 + x), CLS dropped.
        """
        x = self.preprocess(frames.to(self.device, torch.float32))  # (B, 3, 518, 518)
        with autocast(precision, self.device):
            last = self._last_tokens(x)
        return last.float()  # (B, T, C)

    def _last_tokens(self, x: Tensor) -> Tensor:
        (last,) = cast(
            list[Tensor],  # intermediates_only=True: one [B, T, C] tensor per requested block
            self.vit.forward_intermediates(
                x, indices=1, norm=False, output_fmt="NLC", intermediates_only=True
            ),
        )
        return last

    def forward(self, frames: Tensor) -> Tensor:
        return self.tokens(frames)


def build_dinov2(
    name: str, *, checkpoint: Path | None, device: torch.device | str, verify: bool = True
) -> Dinov2Encoder:
    """Build a DINOv2 encoder, random-init when `checkpoint` is None.

    Args:
        name: a key of `DINOV2_SPECS`.
        checkpoint: official ``dinov2_*_pretrain.pth`` (DINOv2 key names), or None.
        device: where the model lives (never defaulted).
        verify: check the file's sha256 against the published value first.

    Raises:
        KeyError, WeightsChecksumError, WeightsFormatError.
    """
    spec = DINOV2_SPECS[name]
    state = read_checkpoint(checkpoint, spec, verify=verify)  # before building the model
    encoder = Dinov2Encoder(spec, _build_vit(name))
    if state is not None:
        load_strict(encoder.vit, dinov2_to_timm(state), str(checkpoint))
        encoder.pretrained = True
    return encoder.eval().to(device)
