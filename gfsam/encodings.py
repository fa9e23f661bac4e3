"""Cacheable encodings and results of `gfsam.pipeline.GFSAM` (numpy on the CPU).

`Reference` and `TargetEncoding` serialise to npz blobs without pickle, so they can be shared
between processes (e.g. content-addressed in Redis) and restored bit-exactly.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gfsam.types import Segmentation

BLOB_VERSION = 1


def _pack(kind: str, arrays: Mapping[str, np.ndarray], **meta: object) -> bytes:
    """npz blob (no pickle): arrays as stored, scalars/tuples/strings as small numpy arrays."""
    buf = io.BytesIO()
    extra = {f"meta_{k}": np.asarray(v) for k, v in meta.items()}
    entries: dict[str, Any] = {"kind": np.asarray(kind), "version": np.asarray(BLOB_VERSION)}
    np.savez(buf, **(entries | dict(arrays) | extra))
    return buf.getvalue()


def _unpack(blob: bytes, kind: str) -> dict[str, np.ndarray]:
    try:
        with np.load(io.BytesIO(blob), allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ValueError(f"not a {kind} blob: {exc}") from exc
    if str(data.get("kind")) != kind or int(data.get("version", -1)) != BLOB_VERSION:
        raise ValueError(f"not a version-{BLOB_VERSION} {kind} blob")
    return data


@dataclass
class Reference:
    """One encoded reference shot: what PNA needs from a reference (cacheable, CPU, numpy).

    Attributes:
        tokens: [T, C] float32 or float16 raw (un-normalised) DINOv2 pre-norm patch tokens.
        fg, bg: [T] float32 soft foreground/background cell weights (`reference_weights`).
        mask_area: foreground pixels of the original mask.
        image_size: (H, W) of the original reference image.
        encoder: DINOv2 registry name that produced `tokens`.
    """

    tokens: np.ndarray
    fg: np.ndarray
    bg: np.ndarray
    mask_area: int
    image_size: tuple[int, int]
    encoder: str

    def to_bytes(self) -> bytes:
        """Serialise to an npz blob (no pickle); `from_bytes` restores it bit-exactly."""
        arrays = {"tokens": self.tokens, "fg": self.fg, "bg": self.bg}
        return _pack(
            "Reference",
            arrays,
            mask_area=self.mask_area,
            image_size=self.image_size,
            encoder=self.encoder,
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> Reference:
        """Inverse of `to_bytes`. Raises ValueError for anything else."""
        d = _unpack(blob, "Reference")
        h, w = (int(v) for v in d["meta_image_size"])
        return cls(
            tokens=d["tokens"],
            fg=d["fg"],
            bg=d["bg"],
            mask_area=int(d["meta_mask_area"]),
            image_size=(h, w),
            encoder=str(d["meta_encoder"]),
        )


@dataclass
class TargetEncoding:
    """One encoded target image (cacheable, CPU, numpy).

    Attributes:
        embedding: [E', 64, 64] float32 image embedding of the mask engine (SAM [256, 64, 64];
            SAM 2.1 [1024, 64, 64] packed, see `gfsam.encoders.sam2_hiera`).
        tokens: [T, C] float32 or float16 raw DINOv2 pre-norm patch tokens.
        image_size: (H, W) of the original target image.
        sam_encoder, dino_encoder: registry names of the encoders.
    """

    embedding: np.ndarray
    tokens: np.ndarray
    image_size: tuple[int, int]
    sam_encoder: str
    dino_encoder: str

    def to_bytes(self) -> bytes:
        """Serialise to an npz blob (no pickle)."""
        arrays = {"embedding": self.embedding, "tokens": self.tokens}
        return _pack(
            "TargetEncoding",
            arrays,
            image_size=self.image_size,
            sam_encoder=self.sam_encoder,
            dino_encoder=self.dino_encoder,
        )

    @classmethod
    def from_bytes(cls, blob: bytes) -> TargetEncoding:
        """Inverse of `to_bytes`. Raises ValueError for anything else."""
        d = _unpack(blob, "TargetEncoding")
        h, w = (int(v) for v in d["meta_image_size"])
        return cls(
            embedding=d["embedding"],
            tokens=d["tokens"],
            image_size=(h, w),
            sam_encoder=str(d["meta_sam_encoder"]),
            dino_encoder=str(d["meta_dino_encoder"]),
        )


@dataclass
class Prediction:
    """Result for one target and one label.

    Attributes:
        mask: bool [H, W] at the target's original size.
        score: confidence in [0, 1] (`Segmentation.score`; 0 when abstained).
        abstained: no point passed both gates and the config abstains (mask is empty).
        fallback: the official one-gate fallback produced the mask (faithful mode only).
        segmentation: the token-level `Segmentation` (1024-frame mask, points, maps).
    """

    mask: np.ndarray
    score: float
    abstained: bool
    fallback: bool
    segmentation: Segmentation
