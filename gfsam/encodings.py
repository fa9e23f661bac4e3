"""Cacheable encodings and results of `gfsam.pipeline.GFSAM` (numpy on the CPU).

`Reference` and `TargetEncoding` serialise to blobs without pickle (`_pack`: a JSON header and
the raw arrays; the npz blobs of earlier versions still read), so they can be shared between
processes (e.g. content-addressed in Redis) and restored bit-exactly.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from gfsam.types import Segmentation

BLOB_VERSION = 1


# Blob container (issue 17): MAGIC, the little-endian uint64 offset where the arrays begin, a
# JSON header listing each array's name, dtype, shape and byte offset from there, then the
# arrays' bytes, each starting at a multiple of ALIGN. Writing is one join of the arrays'
# buffers and reading one copy of each, where the npz before it (still read: `_unpack`) paid a
# zip CRC over every byte both ways: ~12 ms to write and ~5 ms to read a ViT-L + ViT-H target.
MAGIC = b"GFSAMBLOB\x01"
ALIGN = 64
_HEAD = len(MAGIC) + 8


def _pack(kind: str, arrays: Mapping[str, np.ndarray], **meta: object) -> bytes:
    """A blob (no pickle): arrays as stored, scalars/tuples/strings as small numpy arrays;
    `_unpack` restores every array bit-exactly."""
    extra = {f"meta_{k}": np.asarray(v) for k, v in meta.items()}
    entries: dict[str, Any] = {"kind": np.asarray(kind), "version": np.asarray(BLOB_VERSION)}
    named = {k: np.asarray(v, order="C") for k, v in (entries | dict(arrays) | extra).items()}
    table, offset = [], 0
    for name, a in named.items():
        if a.dtype.hasobject:
            raise ValueError(f"{name}: object arrays cannot be stored without pickle")
        table.append([name, a.dtype.str, list(a.shape), offset])
        offset += -(-a.nbytes // ALIGN) * ALIGN
    header = json.dumps(table).encode()
    start = -(-(_HEAD + len(header)) // ALIGN) * ALIGN  # the arrays begin aligned
    parts: list[bytes | memoryview] = [MAGIC, start.to_bytes(8, "little"), header]
    parts.append(bytes(start - _HEAD - len(header)))
    for a in named.values():
        parts.append(a.reshape(-1).view(np.uint8).data if a.size else b"")
        parts.append(bytes(-(-a.nbytes // ALIGN) * ALIGN - a.nbytes))
    return b"".join(parts)


def is_blob(data: bytes) -> bool:
    """True when `data` starts like a blob `_pack` wrote (or the npz it wrote before)."""
    return data[: len(MAGIC)] == MAGIC or data[:2] == b"PK"


def _read(blob: bytes) -> dict[str, np.ndarray]:
    """The arrays of a `_pack` blob (copies). Raises ValueError."""
    start = int.from_bytes(blob[len(MAGIC) : _HEAD], "little")
    try:
        table = json.loads(blob[_HEAD:start].rstrip(b"\0"))
        data = {}
        for name, dtype, shape, offset in table:
            dt = np.dtype(dtype)
            count = int(np.prod(shape, dtype=np.int64))
            if dt.hasobject or offset < 0:
                raise ValueError(f"bad entry {name}")
            view = np.frombuffer(blob, dtype=dt, count=count, offset=start + int(offset))
            data[str(name)] = view.reshape(shape).copy()  # writable, owning its memory, as before
    except (TypeError, ValueError, json.JSONDecodeError) as exc:  # frombuffer: truncated too
        raise ValueError(f"bad blob header: {exc}") from exc
    return data


def _unpack(blob: bytes, kind: str) -> dict[str, np.ndarray]:
    try:
        if blob[: len(MAGIC)] == MAGIC:
            data = _read(blob)
        else:  # the npz blobs written before (caches and Redis keep them)
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
        """Serialise to a blob (no pickle); `from_bytes` restores it bit-exactly."""
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
        """Serialise to a blob (no pickle); `from_bytes` restores it bit-exactly."""
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
