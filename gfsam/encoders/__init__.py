"""Encoder registry: name -> `EncoderSpec` + builder (cf. `segment_anything.sam_model_registry`).

Mask engines (family ``sam`` or ``sam2``): SAM ``sam_vit_h`` (default), ``sam_vit_l``,
``sam_vit_b``, ``sam_tiny`` (test-only); SAM 2.1 ``sam2.1_hiera_tiny``, ``sam2.1_hiera_small``,
``sam2.1_hiera_base_plus``, ``sam2.1_hiera_large``, ``sam2_tiny`` (test-only).
Feature engines (family ``dinov2`` or ``dinov3``): DINOv2 ``dinov2_vitl14`` (default),
``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vitg14``, ``dinov2_tiny`` (test-only); DINOv3
``dinov3_vits16``, ``dinov3_vitb16``, ``dinov3_vitl16``, ``dinov3_tiny`` (test-only).
``checkpoint=None`` builds a random-init model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gfsam.encoders.dinov2 import DINOV2_SPECS, Dinov2Encoder, build_dinov2
from gfsam.encoders.dinov3 import DINOV3_SPECS, Dinov3Encoder, build_dinov3
from gfsam.encoders.sam import SAM_SPECS, SamEncoder, build_sam
from gfsam.encoders.sam2_hiera import SAM2_SPECS, Sam2Encoder, build_sam2
from gfsam.encoders.weights import (
    EncoderSpec,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsNotFoundError,
)

DEFAULT_SAM = "sam_vit_h"
DEFAULT_DINO = "dinov2_vitl14"
MaskEngine = SamEncoder | Sam2Encoder  # embed, decode_points, decode_prompts
FeatureEngine = Dinov2Encoder  # tokens (Dinov3Encoder is a Dinov2Encoder)
Encoder = MaskEngine | FeatureEngine
MASK_FAMILIES = ("sam", "sam2")
FEATURE_FAMILIES = ("dinov2", "dinov3")


@dataclass(frozen=True)
class Builder:
    """A registry entry: the encoder's spec and its keyword-only builder."""

    spec: EncoderSpec
    build: Callable[..., Encoder]


ENCODERS: dict[str, Builder] = {
    **{name: Builder(spec, build_sam) for name, spec in SAM_SPECS.items()},
    **{name: Builder(spec, build_dinov2) for name, spec in DINOV2_SPECS.items()},
    **{name: Builder(spec, build_sam2) for name, spec in SAM2_SPECS.items()},
    **{name: Builder(spec, build_dinov3) for name, spec in DINOV3_SPECS.items()},
}
SPECS: dict[str, EncoderSpec] = {name: entry.spec for name, entry in ENCODERS.items()}


def build_encoder(
    name: str, *, checkpoint: Path | None, device: torch.device | str, verify: bool = True
) -> Encoder:
    """Build a registered encoder in eval mode on `device`.

    Args:
        name: a key of `ENCODERS`.
        checkpoint: official checkpoint file, or None for random init.
        device: target device; always explicit.
        verify: check the checkpoint's sha256 against the published value before loading.

    Returns:
        a mask engine (`SamEncoder`, `Sam2Encoder`: ``embed``, ``decode_points``,
        ``decode_prompts``) or a feature engine (`Dinov2Encoder`, `Dinov3Encoder`: ``tokens``).

    Raises:
        ValueError: unknown name. WeightsChecksumError, WeightsFormatError: bad checkpoint.
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; choose from {sorted(ENCODERS)}")
    return ENCODERS[name].build(name, checkpoint=checkpoint, device=device, verify=verify)


__all__ = [
    "DEFAULT_DINO",
    "DEFAULT_SAM",
    "ENCODERS",
    "FEATURE_FAMILIES",
    "MASK_FAMILIES",
    "SPECS",
    "Builder",
    "Dinov2Encoder",
    "Dinov3Encoder",
    "EncoderSpec",
    "FeatureEngine",
    "MaskEngine",
    "Sam2Encoder",
    "SamEncoder",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "build_encoder",
]
