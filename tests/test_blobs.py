"""The blob container of references, targets and decoded masks (`gfsam.encodings._pack`)."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from gfsam.encodings import ALIGN, BLOB_VERSION, MAGIC, Reference, TargetEncoding, _pack, _unpack


def _old_npz(kind: str, arrays: dict[str, np.ndarray], **meta: object) -> bytes:
    """A blob as `_pack` wrote it before the container (an npz), for the reading side."""
    buf = io.BytesIO()
    extra = {f"meta_{k}": np.asarray(v) for k, v in meta.items()}
    np.savez(buf, kind=np.asarray(kind), version=np.asarray(BLOB_VERSION), **arrays, **extra)
    return buf.getvalue()


def test_every_array_comes_back_bit_exact() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "f32": rng.standard_normal((37, 5)).astype(np.float32),
        "f16": rng.standard_normal(7).astype(np.float16),
        "f64_strided": rng.standard_normal((6, 8))[:, ::2],  # not contiguous: stored as values
        "fortran": np.asfortranarray(rng.standard_normal((3, 4))),
        "bits": rng.integers(0, 256, (4, 3, 2), dtype=np.uint8),
        "mask": rng.random((5, 5)) < 0.5,
        "empty": np.zeros((0, 2), dtype=np.int64),
        "nan": np.array([np.nan, -0.0, np.inf], dtype=np.float64),
    }
    blob = _pack("Test", arrays, key="sam/fp32/abc", size=(480, 640), level=3)
    assert blob.startswith(MAGIC)
    back = _unpack(blob, "Test")
    for name, a in arrays.items():
        b = back[name]
        assert b.dtype == a.dtype and b.shape == a.shape, name
        assert b.tobytes() == np.ascontiguousarray(a).tobytes(), name
        assert b.flags.writeable and b.flags.owndata  # as np.load gave: torch may share them
    assert str(back["meta_key"]) == "sam/fp32/abc" and back["meta_key"].shape == ()
    assert tuple(back["meta_size"]) == (480, 640) and int(back["meta_level"]) == 3
    start = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 8], "little")
    assert start % ALIGN == 0
    for entry in json.loads(blob[len(MAGIC) + 8 : start].rstrip(b"\0")):
        assert entry[3] % ALIGN == 0, entry[0]  # every array starts aligned


def test_target_and_reference_round_trip_and_read_the_npz_written_before() -> None:
    rng = np.random.default_rng(1)
    tgt = TargetEncoding(
        rng.standard_normal((8, 4, 4)).astype(np.float32),
        rng.standard_normal((16, 6)).astype(np.float16),
        (30, 40),
        "sam_vit_b",
        "dinov2_vits14",
    )
    ref = Reference(
        rng.standard_normal((16, 6)).astype(np.float32),
        rng.random(16).astype(np.float32),
        rng.random(16).astype(np.float32),
        123,
        (30, 40),
        "dinov2_vits14",
    )
    old_tgt = _old_npz(
        "TargetEncoding",
        {"embedding": tgt.embedding, "tokens": tgt.tokens},
        image_size=tgt.image_size,
        sam_encoder=tgt.sam_encoder,
        dino_encoder=tgt.dino_encoder,
    )
    old_ref = _old_npz(
        "Reference",
        {"tokens": ref.tokens, "fg": ref.fg, "bg": ref.bg},
        mask_area=ref.mask_area,
        image_size=ref.image_size,
        encoder=ref.encoder,
    )
    for t in (TargetEncoding.from_bytes(tgt.to_bytes()), TargetEncoding.from_bytes(old_tgt)):
        assert t.image_size == tgt.image_size and (t.sam_encoder, t.dino_encoder) == (
            tgt.sam_encoder,
            tgt.dino_encoder,
        )
        assert t.embedding.tobytes() == tgt.embedding.tobytes()
        assert t.tokens.dtype == np.float16 and t.tokens.tobytes() == tgt.tokens.tobytes()
    for r in (Reference.from_bytes(ref.to_bytes()), Reference.from_bytes(old_ref)):
        assert (r.mask_area, r.image_size, r.encoder) == (123, (30, 40), "dinov2_vits14")
        for a, b in ((r.tokens, ref.tokens), (r.fg, ref.fg), (r.bg, ref.bg)):
            assert a.tobytes() == b.tobytes()


def test_bad_blobs_are_refused_with_a_clear_error() -> None:
    blob = _pack("Test", {"a": np.arange(100, dtype=np.float64)})
    with pytest.raises(ValueError, match="Test blob"):
        _unpack(blob[:-64], "Test")  # truncated
    with pytest.raises(ValueError, match="Test blob"):
        _unpack(blob[: len(MAGIC) + 8] + b"{not json" + blob[len(MAGIC) + 17 :], "Test")
    with pytest.raises(ValueError, match="version-1 Other blob"):
        _unpack(blob, "Other")  # another kind
    with pytest.raises(ValueError, match="Test blob"):
        _unpack(b"garbage", "Test")
    with pytest.raises(ValueError, match="object arrays"):
        _pack("Test", {"o": np.array([{"a": 1}], dtype=object)})
