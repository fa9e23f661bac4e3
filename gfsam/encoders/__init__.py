"""Encoder registry: name -> `EncoderSpec` + builder (cf. `segment_anything.sam_model_registry`).

Names: SAM ``sam_vit_h`` (default), ``sam_vit_l``, ``sam_vit_b``, ``sam_tiny`` (test-only);
DINOv2 ``dinov2_vitl14`` (default), ``dinov2_vits14``, ``dinov2_vitb14``, ``dinov2_vitg14``,
``dinov2_tiny`` (test-only). ``checkpoint=None`` builds a random-init model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from gfsam.encoders.dinov2 import DINOV2_SPECS, Dinov2Encoder, build_dinov2
from gfsam.encoders.sam import SAM_SPECS, SamEncoder, build_sam
from gfsam.encoders.weights import (
    EncoderSpec,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsFormatError,
    WeightsNotFoundError,
)

DEFAULT_SAM = "sam_vit_h"
DEFAULT_DINO = "dinov2_vitl14"
Encoder = SamEncoder | Dinov2Encoder


@dataclass(frozen=True)
class Builder:
    """A registry entry: the encoder's spec and its keyword-only builder."""

    spec: EncoderSpec
    build: Callable[..., Encoder]


ENCODERS: dict[str, Builder] = {
    **{name: Builder(spec, build_sam) for name, spec in SAM_SPECS.items()},
    **{name: Builder(spec, build_dinov2) for name, spec in DINOV2_SPECS.items()},
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
        `SamEncoder` (``embed``, ``decode_points``) or `Dinov2Encoder` (``tokens``).

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
    "SPECS",
    "Builder",
    "Dinov2Encoder",
    "EncoderSpec",
    "SamEncoder",
    "WeightsChecksumError",
    "WeightsDownloadError",
    "WeightsFormatError",
    "WeightsNotFoundError",
    "build_encoder",
]
