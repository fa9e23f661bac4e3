"""Boolean masks <-> Label Studio brush RLE and ``brushlabels`` result regions (pure).

The codec is thi.ng ``rle-pack`` over the flattened RGBA image (``docs/labelstudio-protocol.md``
§4.2). The encoder reproduces ``label_studio_sdk.converter.brush.mask2rle(mask * 255)`` byte for
byte, including its quirks (runs split at 65536, singletons as 1-value literal blocks, a padding
byte even when the bit count is already a multiple of 8), but with numpy instead of bit strings.
The decoder accepts any valid rle-pack stream, including the literal blocks the LS frontend
writes for anti-aliased brush edges.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import numpy as np

__all__ = [
    "BrushError",
    "annotation_masks",
    "mask_to_rle",
    "masks_to_result",
    "regions_to_result",
    "rle_to_mask",
]

_RLE_SIZES = (3, 4, 8, 16)  # run-length field widths the SDK (and the LS frontend) writes
_WORD_SIZE = 8
_MAX_RUN = 1 << 16
_HEADER_BITS = 32 + 5 + 4 * 4
_BLOCK_BYTES = 1 << 19  # decoder works on 4 Mbit slices to bound memory on noisy masks
_U64 = np.uint64


class BrushError(ValueError):
    """A brush region or RLE stream is malformed or does not match the image size."""


# --------------------------------------------------------------------------- encoding


def mask_to_rle(mask: np.ndarray) -> list[int]:
    """Encode a mask as Label Studio brush RLE (R=G=B=A=255 where the mask is set).

    Byte-for-byte equal to ``mask2rle(mask.astype(np.uint8) * 255)`` of label-studio-sdk 2.1.2.

    Args:
        mask: bool [H, W]; any other dtype is read as ``mask != 0``.

    Returns:
        RLE bytes as Python ints in 0..255 (JSON-ready).

    Raises:
        BrushError: the mask is not 2-D or has no pixels.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.size == 0:
        raise BrushError(f"mask must be a non-empty 2-D array, got shape {mask.shape}")
    flat = mask.astype(bool, copy=False).ravel()
    starts, lengths = _runs(flat)
    values = np.where(flat[starts], 255, 0).astype(_U64)
    return _encode_runs(flat.size * 4, lengths * 4, values)  # each pixel is 4 equal RGBA bytes


def _encode_values(values: np.ndarray) -> list[int]:
    """Encode any flat uint8 [N] stream like the SDK's ``encode_rle`` (tests use it)."""
    starts, lengths = _runs(values)
    return _encode_runs(values.size, lengths, values[starts].astype(_U64))


def _runs(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start indices and lengths, both [R] int64, of the runs of equal values in flat [N]."""
    starts = np.concatenate(([0], np.flatnonzero(flat[1:] != flat[:-1]) + 1))
    return starts, np.diff(np.append(starts, flat.size)).astype(np.int64)


def _encode_runs(num: int, lengths: np.ndarray, values: np.ndarray) -> list[int]:
    """Emit the SDK's chunk sequence for runs ``lengths`` [R] int64 of ``values`` [R] uint64."""
    single = lengths == 1
    idx = (lengths > 8).astype(np.int64) + (lengths > 16) + (lengths > 256)  # field index, [R]
    n_full = (lengths - 1) // _MAX_RUN  # the SDK splits runs > 65536 into 65536-long chunks
    chunk_len = lengths
    if n_full.any():
        per_run = n_full + 1
        run_of = np.repeat(np.arange(lengths.size), per_run)  # [C]
        j = np.arange(run_of.size) - np.repeat(np.cumsum(per_run) - per_run, per_run)
        nf = n_full[run_of]
        chunk_len = np.where(j < nf, _MAX_RUN, lengths[run_of] - _MAX_RUN * nf)
        single, idx, values = single[run_of], idx[run_of], values[run_of]
    k = np.asarray(_RLE_SIZES, dtype=np.int64)[idx]
    nbits = 3 + k + _WORD_SIZE
    code = (
        ((~single).astype(_U64) << (nbits - 1).astype(_U64))
        | (idx.astype(_U64) << (k + _WORD_SIZE).astype(_U64))
        | ((chunk_len - 1).astype(_U64) << _U64(_WORD_SIZE))
        | values
    )
    sizes = 0
    for size in _RLE_SIZES:
        sizes = (sizes << 4) | (size - 1)
    header = np.array([num, ((_WORD_SIZE - 1) << 16) | sizes], dtype=_U64)
    codes = np.concatenate((header, code))
    widths = np.concatenate(([32, _HEADER_BITS - 32], nbits))
    return _pack_bits(codes, widths).tolist()


def _pack_bits(codes: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Concatenate bit fields MSB first and zero-pad like the SDK (always 1..8 pad bits).

    Args:
        codes: [C] uint64, each below ``2 ** widths``.
        widths: [C] int64 field widths in bits, each in 14..33.

    Returns:
        [total_bits // 8 + 1] uint8.
    """
    offsets = np.cumsum(widths) - widths
    nbytes = int(offsets[-1] + widths[-1]) // 8 + 1
    word = offsets >> 6  # 64-bit output word holding each field's first bit
    end = (offsets & 63) + widths  # field end within that word, may spill into the next
    spill = end > 64
    hi = np.where(
        spill,
        codes >> np.maximum(end - 64, 0).astype(_U64),
        codes << np.maximum(64 - end, 0).astype(_U64),
    )
    lo = np.where(spill, codes << np.clip(128 - end, 0, 63).astype(_U64), _U64(0))
    # Fields never share bits, so summing the parts of one word equals OR-ing them.
    starts = np.flatnonzero(np.diff(word, prepend=-1))
    words = np.zeros(nbytes // 8 + 2, dtype=_U64)
    words[word[starts]] = np.add.reduceat(hi, starts)
    words[word[starts] + 1] += np.add.reduceat(lo, starts)
    return words.astype(">u8").view(np.uint8)[:nbytes]


# --------------------------------------------------------------------------- decoding


def rle_to_mask(rle: list[int], width: int, height: int, *, threshold: int = 128) -> np.ndarray:
    """Decode brush RLE to a mask from its alpha channel.

    Args:
        rle: RLE bytes (ints in 0..255), as found in ``value.rle``.
        width: image width W in pixels (the region's ``original_width``).
        height: image height H in pixels (the region's ``original_height``).
        threshold: alpha values ``>= threshold`` are set; the LS frontend writes anti-aliased
            alpha at brush edges.

    Returns:
        bool [H, W].

    Raises:
        BrushError: the RLE is malformed or does not hold exactly W*H*4 values.
    """
    if int(width) <= 0 or int(height) <= 0:
        raise BrushError(f"image size must be positive, got {width}x{height}")
    data = _rle_bytes(rle)
    expected = int(width) * int(height) * 4
    declared = int.from_bytes(data[:4], "big")
    if declared != expected:
        raise BrushError(
            f"RLE size mismatch: header declares {declared} values, "
            f"expected {expected} = {width}x{height}x4"
        )
    flat = _decode(data)  # [W*H*4] uint8
    return flat.reshape(int(height), int(width), 4)[:, :, 3] >= threshold


def _rle_bytes(rle: Any) -> bytes:
    """Validate the JSON RLE list and return it as bytes."""
    if not isinstance(rle, (list, tuple)):
        raise BrushError(f"RLE must be a list of ints, got {type(rle).__name__}")
    try:
        data = bytes(rle)
    except (TypeError, ValueError) as exc:
        raise BrushError(f"RLE must hold ints in 0..255: {exc}") from None
    if len(data) * 8 < _HEADER_BITS:
        raise BrushError(f"RLE too short: {len(data)} bytes, header alone needs 7")
    return data


def _decode(data: bytes) -> np.ndarray:
    """Decode an rle-pack stream to its flat value array (uint8 [num]).

    Chunks have variable length, so finding where each starts is sequential. The per-bit work
    (field widths, chunk lengths) is vectorised through a lookup table; only the walk from one
    chunk start to the next stays in Python, then values are gathered in one vectorised step.
    """
    raw = np.frombuffer(data, dtype=np.uint8)
    v32 = _byte_windows(raw)
    num = int(v32[0])
    params = (int(v32[4]) >> 11) & 0x1FFFFF
    word_size = (params >> 16) + 1
    if word_size > 8:
        raise BrushError(f"unsupported RLE word size {word_size}; brush masks use 8")
    sizes = tuple(((params >> (12 - 4 * i)) & 15) + 1 for i in range(4))
    lut = _chunk_lut(sizes, word_size)
    starts = _chunk_starts(v32, raw.size, lut[0])  # [C]
    fields = (v32[starts >> 3] >> (13 - (starts & 7)).astype(np.uint32)) & 0x7FFFF
    is_run, k, count = lut[1][fields], lut[2][fields].astype(np.int64), lut[3][fields]
    total = np.cumsum(count)
    last = int(np.searchsorted(total, num))  # first chunk that reaches num values
    if last >= starts.size:
        got = int(total[-1]) if total.size else 0
        raise BrushError(f"RLE truncated: stream holds {got} of {num} values")
    keep = slice(0, last + 1)
    starts, is_run, k, count = starts[keep], is_run[keep], k[keep], count[keep]
    n_words = np.where(is_run, 1, count)  # one value per run, `count` values per literal
    first_bit = starts + 3 + k
    pos = np.repeat(first_bit - word_size * (np.cumsum(n_words) - n_words), n_words)
    pos += word_size * np.arange(pos.size)  # bit position of every stored value, [V]
    if pos[-1] + word_size > raw.size * 8:
        raise BrushError("RLE truncated: last value runs past the end of the stream")
    shift = (32 - word_size - (pos & 7)).astype(np.uint32)
    words = ((v32[pos >> 3] >> shift) & ((1 << word_size) - 1)).astype(np.uint8)
    out = np.repeat(words, np.repeat(np.where(is_run, count, 1), n_words))
    return out[:num]


def _byte_windows(raw: np.ndarray) -> np.ndarray:
    """[N] uint32: bytes b..b+3 big-endian for every byte b (zero past the end)."""
    b = np.concatenate((raw, np.zeros(4, dtype=np.uint8))).astype(np.uint32)
    n = raw.size
    return (b[:n] << 24) | (b[1 : n + 1] << 16) | (b[2 : n + 2] << 8) | b[3 : n + 3]


@lru_cache(maxsize=8)
def _chunk_lut(sizes: tuple[int, ...], word_size: int) -> tuple[np.ndarray, ...]:
    """Tables indexed by a chunk's first 19 bits (flag, size index, up to 16 count bits).

    Returns:
        (chunk length in bits uint32, is_run bool, count width int, value count int64),
        each [2**19].
    """
    f = np.arange(1 << 19, dtype=np.int64)
    is_run = (f >> 18) == 1
    k = np.asarray(sizes, dtype=np.int64)[(f >> 16) & 3]
    count = ((f >> (16 - k)) & ((1 << k) - 1)) + 1
    length = 3 + k + word_size * np.where(is_run, 1, count)
    return length.astype(np.uint32), is_run, k, count


def _chunk_starts(v32: np.ndarray, nbytes: int, length_lut: np.ndarray) -> np.ndarray:
    """Bit offsets [C] int64 of every chunk, walking the stream from the end of the header."""
    shifts = (13 - np.arange(8)).astype(np.uint32)
    starts: list[int] = []
    append = starts.append
    p = _HEADER_BITS
    for b0 in range(0, nbytes, _BLOCK_BYTES):
        b1 = min(b0 + _BLOCK_BYTES, nbytes)
        base, stop = b0 * 8, b1 * 8
        if p >= stop:
            continue
        fields = (v32[b0:b1, None] >> shifts) & 0x7FFFF  # [B, 8]: 19 bits at every bit offset
        step = memoryview(length_lut[fields].ravel())  # chunk length if one started there
        while p < stop:
            append(p)
            p += step[p - base]
    return np.asarray(starts, dtype=np.int64)


# --------------------------------------------------------------------------- result regions


def annotation_masks(result: list[dict[str, Any]], *, from_name: str) -> dict[str, np.ndarray]:
    """Union of the brush regions of one control, per label.

    Args:
        result: an annotation's or prediction's ``result`` list.
        from_name: the ``<BrushLabels name>`` to read; other regions are ignored.

    Returns:
        label -> bool [H, W] (H, W from the regions' ``original_height``/``original_width``).

    Raises:
        BrushError: a region is not RLE, is malformed, or its size differs from another
            region of the same label.
    """
    masks: dict[str, np.ndarray] = {}
    for i, region in enumerate(result):
        if region.get("from_name") != from_name or region.get("type", "").lower() != "brushlabels":
            continue
        value = region.get("value") or {}
        if value.get("format") != "rle":
            raise BrushError(f"region {i}: brush format {value.get('format')!r}, expected 'rle'")
        try:
            width, height = int(region["original_width"]), int(region["original_height"])
        except (KeyError, TypeError, ValueError):
            raise BrushError(f"region {i}: missing or invalid original_width/height") from None
        mask = rle_to_mask(value.get("rle") or [], width, height)
        for label in value.get("brushlabels") or []:
            prev = masks.get(label)
            if prev is not None and prev.shape != mask.shape:
                raise BrushError(
                    f"region {i}: label {label!r} is {width}x{height}, "
                    f"earlier region was {prev.shape[1]}x{prev.shape[0]}"
                )
            masks[label] = mask if prev is None else prev | mask
    return masks


def masks_to_result(
    masks: dict[str, np.ndarray], *, from_name: str, to_name: str, scores: dict[str, float]
) -> list[dict[str, Any]]:
    """One ``brushlabels`` region per non-empty label mask.

    Args:
        masks: label -> bool [H, W] at the image's natural size.
        from_name: the ``<BrushLabels name>``.
        to_name: the ``<Image name>``.
        scores: label -> region score; required for every non-empty mask.

    Returns:
        Result regions (JSON-ready); ids are deterministic (hash of control, label and RLE).

    Raises:
        BrushError: a mask is not 2-D, or a non-empty mask has no score.
    """
    regions = []
    for label, mask in masks.items():
        mask = np.asarray(mask)
        if mask.ndim == 2 and mask.any() and label not in scores:
            raise BrushError(f"no score given for label {label!r}")
        regions.append((label, mask, float(scores.get(label, 0.0))))
    return regions_to_result(regions, from_name=from_name, to_name=to_name)


def regions_to_result(
    regions: Sequence[tuple[str, np.ndarray, float]], *, from_name: str, to_name: str
) -> list[dict[str, Any]]:
    """One ``brushlabels`` region per non-empty (label, mask, score), in the given order.

    Several regions may carry one label (one per instance); `annotation_masks` reads them back
    as their union.

    Args:
        regions: (label, bool [H, W] mask at the image's natural size, score in [0, 1]).
        from_name: the ``<BrushLabels name>``.
        to_name: the ``<Image name>``.

    Returns:
        Result regions (JSON-ready). Ids are deterministic (hash of control, label and RLE), so
        the same instance gets the same id in every computation; equal masks of one label
        would share an id, which disjoint instances never are.

    Raises:
        BrushError: a mask is not 2-D.
    """
    out = []
    for label, mask, score in regions:
        mask = np.asarray(mask)
        if mask.ndim != 2:
            raise BrushError(f"mask for {label!r} must be 2-D, got shape {mask.shape}")
        if not mask.any():
            continue
        rle = mask_to_rle(mask)
        out.append(
            {
                "id": _region_id(from_name, label, rle),
                "from_name": from_name,
                "to_name": to_name,
                "type": "brushlabels",
                "original_width": int(mask.shape[1]),
                "original_height": int(mask.shape[0]),
                "image_rotation": 0,
                "value": {"format": "rle", "rle": rle, "brushlabels": [label]},
                "score": float(score),
            }
        )
    return out


def _region_id(from_name: str, label: str, rle: list[int]) -> str:
    """Short deterministic region id: equal masks of one label get the same id."""
    digest = hashlib.blake2b(digest_size=5)
    for part in (from_name, label):
        digest.update(part.encode() + b"\0")
    digest.update(bytes(rle))
    return digest.hexdigest()
