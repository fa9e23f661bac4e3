"""Compute precision of the encoders and the decoder: ``fp32`` (parity mode) or ``bf16``.

bf16 runs the networks under a scoped ``torch.autocast`` (nanoGPT's ``with ctx:``); inputs,
outputs, thresholds and every token-level stage stay float32. Nothing here runs at import time.
"""

from __future__ import annotations

import contextlib
from contextlib import AbstractContextManager

import torch

PRECISIONS = ("fp32", "bf16")
# Devices whose torch autocast has a bfloat16 path.
_BF16_DEVICES = ("cpu", "cuda")


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ValueError unless `precision` is known and supported on `device`.

    Args:
        precision: ``"fp32"`` or ``"bf16"``.
        device: the compute device (bf16 needs a CPU, or a CUDA device with bf16 support).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {list(PRECISIONS)}")
    if precision == "fp32":
        return
    if device.type not in _BF16_DEVICES:
        raise ValueError(f"precision 'bf16' is not supported on device {device}; use 'fp32'")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ValueError(f"{device} has no bfloat16 support; use precision='fp32'")


def autocast(precision: str, device: torch.device) -> AbstractContextManager[object]:
    """A ``with`` context running the enclosed network code at `precision` on `device`."""
    if precision == "fp32":
        return contextlib.nullcontext()
    check_precision(precision, device)
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def native_bf16(device: torch.device) -> bool:
    """Whether `device` computes bfloat16 natively: a CUDA device with bf16 support, or a CPU
    whose oneDNN has a bf16 path (AVX512-BF16 or AMX); elsewhere bf16 is emulated and slower."""
    if device.type == "cuda":
        return bool(torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"``: ``"bf16"`` where `device` computes it natively, else ``"fp32"``; any other
    value is checked (`check_precision`) and returned."""
    if precision == "auto":
        return "bf16" if native_bf16(device) else "fp32"
    check_precision(precision, device)
    return precision
