"""Per-target store of decoded SAM masks: each prompt is decoded once per target (issue 12).

A decoded mask depends only on (target embedding, prompt, decoder, precision), not on the
references, the label or the model version. `DecodedMasks` keeps them for one target so that a
second label, or a re-fit that adds a shot, decodes only prompts never decoded before. Two
sections: the single-point prompts of GF-SAM (`masks`, keyed by pixel) and the region prompts
of discovery (`region_mask`: points + box in one decoder call, keyed by the exact prompt, kept
with SAM's IoU score; issue 17).

Memory: masks are kept bit-packed, ``MASK_BYTES`` = 128 KiB each (8x less than bool), bounded by
``max_masks`` (and ``max_regions``) with least-recently-used eviction. Storage: `to_bytes`
writes a blob (`gfsam.encodings._pack`, no pickle) of per-mask zlib streams; a mask read from a
blob is decompressed only when asked for, and its stream is written back as read, so a
re-prediction compresses only the masks it decoded. `from_bytes` restores the same bits, and
still reads the older layout (one zlib stream over the whole npz, point prompts only).
"""

from __future__ import annotations

import hashlib
import logging
import zlib
from collections import OrderedDict
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from gfsam.encodings import TargetEncoding, _pack, _unpack, is_blob
from gfsam.types import FRAME

logger = logging.getLogger(__name__)
MASK_BYTES = FRAME * FRAME // 8
# Two labels at the official 128 prompts each: 32 MiB in memory.
DEFAULT_MAX_MASKS = 256
# zlib level of the blob: 1 is several times faster than 6 and within a few % of its size on
# SAM masks (large smooth regions).
BLOB_LEVEL = 1
_BITS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits order (big-endian within a byte)

# Discovery's region prompts kept per target: its `max_prompts` (12) per version, a few versions.
DEFAULT_MAX_REGIONS = 64
LAYOUT = 2  # per-mask zlib streams + region section; 1 (no "meta_layout"): zlib over the npz

Prompt = tuple[int, int]
DecodeFn = Callable[[np.ndarray], Tensor]
# (points_xy float [N, 2], box_xyxy float [4]) -> (mask bool [S, S], score): one decoder call.
RegionDecodeFn = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, float]]


def pack_masks(masks: Tensor) -> Tensor:
    """Bit-pack masks on their device, in `np.packbits` order along the last axis.

    Args:
        masks: bool [P, S, S].

    Returns:
        uint8 [P, S, S / 8] on the same device.
    """
    if masks.device.type == "cpu":  # numpy's C packing: the same bits, several times faster
        return torch.from_numpy(np.packbits(masks.numpy().astype(bool, copy=False), axis=-1))
    p, h, w = masks.shape
    weights = torch.tensor(_BITS, dtype=torch.uint8, device=masks.device)
    bits = masks.reshape(p, h, w // 8, 8).to(torch.uint8) * weights  # (P, S, S/8, 8)
    return bits.sum(-1, dtype=torch.uint8)  # (P, S, S/8)


def unpack_masks(packed: Tensor) -> Tensor:
    """Inverse of `pack_masks`: uint8 [P, S, S / 8] -> bool [P, S, S] on the same device.

    One gather of 8 bits per byte from a 256-row table (about twice as fast on a CPU as
    shifting and masking each bit plane)."""
    p, h, w8 = packed.shape
    table = _unpack_table(packed.device)  # (256, 8)
    out = torch.empty((p, h, w8 * 8), dtype=torch.bool, device=packed.device)
    torch.index_select(table, 0, packed.reshape(-1).to(torch.int32), out=out.view(-1, 8))
    return out  # (P, S, S)


_TABLES: dict[torch.device, Tensor] = {}


def _unpack_table(device: torch.device) -> Tensor:
    """bool [256, 8]: the bits of each byte value, `np.unpackbits` order."""
    if device not in _TABLES:
        bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1).astype(bool)
        _TABLES[device] = torch.from_numpy(bits).to(device)
    return _TABLES[device]


def decoder_key(target: TargetEncoding, precision: str) -> str:
    """Identity of the masks a target yields: SAM encoder, decoder precision, embedding digest."""
    digest = hashlib.blake2b(np.ascontiguousarray(target.embedding).tobytes(), digest_size=12)
    return f"{target.sam_encoder}/{precision}/{digest.hexdigest()}"


def region_key(points_xy: np.ndarray, box_xyxy: np.ndarray) -> bytes:
    """Exact identity of a region prompt: its points and box as float64 (float32 values exactly)."""
    points = np.asarray(points_xy, dtype=np.float64).reshape(-1, 2)  # (N, 2)
    box = np.asarray(box_xyxy, dtype=np.float64).reshape(4)  # (4,)
    return np.concatenate([points.ravel(), box]).tobytes()


class _Row:
    """One packed mask, uint8 [S, S/8], held as bits, as its zlib stream, or both.

    A row read from a blob stays compressed until someone asks for it; a decoded row is
    compressed once, when a blob is first written, and that stream is reused by later blobs.
    """

    __slots__ = ("_bits", "_zipped")

    def __init__(self, bits: np.ndarray | None = None, zipped: bytes | None = None) -> None:
        self._bits, self._zipped = bits, zipped

    def bits(self) -> np.ndarray:
        if self._bits is None:
            raw = zlib.decompress(self._zipped or b"")
            if len(raw) != MASK_BYTES:
                raise ValueError(f"DecodedMasks row has {len(raw)} bytes, not {MASK_BYTES}")
            self._bits = np.frombuffer(raw, dtype=np.uint8).reshape(FRAME, FRAME // 8)
        return self._bits

    def zipped(self, level: int) -> bytes:
        if self._zipped is None:
            bits = np.ascontiguousarray(self._bits, dtype=np.uint8)
            self._zipped = zlib.compress(bits.tobytes(), level)
        return self._zipped


def _streams(rows: list[_Row], level: int) -> tuple[np.ndarray, np.ndarray]:
    """(int64 [N] stream sizes, uint8 [sum] the streams end to end)."""
    zipped = [r.zipped(level) for r in rows]
    sizes = np.asarray([len(z) for z in zipped], dtype=np.int64)
    return sizes, np.frombuffer(b"".join(zipped), dtype=np.uint8)


def _split(sizes: np.ndarray, chunks: np.ndarray) -> list[bytes]:
    if sizes.ndim != 1 or (sizes < 0).any() or int(sizes.sum()) != chunks.size:
        raise ValueError("DecodedMasks blob has inconsistent stream sizes")
    data = chunks.tobytes()
    ends = np.cumsum(sizes)
    return [data[int(e - n) : int(e)] for n, e in zip(sizes, ends, strict=True)]


class DecodedMasks:
    """Bounded LRU store of one target's decoded masks (module docstring: the two sections).

    Not thread-safe (like `GFSAM`). ``hits`` and ``misses`` count point prompts served from the
    store and decoded since creation (or `reset_stats`); ``region_hits`` and ``region_misses``
    the same for region prompts; none is serialised.

    Args:
        max_masks: most point-prompt masks kept (each `MASK_BYTES` in memory); the least
            recently used go.
        max_regions: most region-prompt masks kept, likewise.
    """

    def __init__(
        self, max_masks: int = DEFAULT_MAX_MASKS, max_regions: int = DEFAULT_MAX_REGIONS
    ) -> None:
        if max_masks < 1 or max_regions < 1:
            raise ValueError(
                f"max_masks and max_regions must be >= 1, got {max_masks}, {max_regions}"
            )
        self.max_masks, self.max_regions = max_masks, max_regions
        self.key: str | None = None
        self.hits = self.misses = self.region_hits = self.region_misses = 0
        self._masks: OrderedDict[Prompt, _Row] = OrderedDict()
        self._regions: OrderedDict[bytes, tuple[_Row, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._masks

    @property
    def nbytes(self) -> int:
        """Bytes the packed masks take once unpacked from their streams (both sections)."""
        return (len(self._masks) + len(self._regions)) * MASK_BYTES

    @property
    def regions(self) -> int:
        """Region-prompt masks held."""
        return len(self._regions)

    def packed(self, prompt: Prompt) -> np.ndarray:
        """The stored packed mask of a point prompt, uint8 [S, S/8] (KeyError when absent)."""
        return self._masks[prompt].bits()

    def reset_stats(self) -> None:
        """Zero the hit and miss counters (e.g. before one prediction)."""
        self.hits = self.misses = self.region_hits = self.region_misses = 0

    def bind(self, key: str) -> None:
        """Tie the store to one target and decoder (`decoder_key`); another key empties it."""
        if self.key is not None and self.key != key and (self._masks or self._regions):
            logger.warning("decoded masks were for %s, not %s; dropping them", self.key, key)
            self._masks.clear()
            self._regions.clear()
        self.key = key

    def masks(self, prompt_xy: np.ndarray, decode: DecodeFn, device: torch.device) -> Tensor:
        """Masks for the prompts: stored ones as stored, the others decoded in one call.

        Args:
            prompt_xy: int [P, 2] prompt pixels (x, y) in the 1024 frame.
            decode: int64 [N, 2] missing prompts -> bool [N, S, S] (e.g. `decode_points`).
            device: where the returned masks live.

        Returns:
            bool [P, S, S] on `device`, bit-identical to what `decode` returned for each prompt.
        """
        packed = torch.from_numpy(self.packed_masks(prompt_xy, decode))  # (P, S, S/8)
        return unpack_masks(packed.to(device, torch.uint8))  # (P, S, S)

    def packed_masks(self, prompt_xy: np.ndarray, decode: DecodeFn) -> np.ndarray:
        """`masks` still packed (`pack_masks`' layout): for a caller that combines or compares
        masks as bits and unpacks only the few it keeps.

        Returns:
            uint8 [P, S, S/8] on the CPU (a new array).
        """
        wanted = [(int(x), int(y)) for x, y in np.asarray(prompt_xy).reshape(-1, 2)]
        missing = list(dict.fromkeys(p for p in wanted if p not in self._masks))
        fresh: dict[Prompt, np.ndarray] = {}
        if missing:
            decoded = decode(np.asarray(missing, dtype=np.int64))  # (N, S, S)
            fresh = dict(zip(missing, pack_masks(decoded).cpu().numpy(), strict=True))
        self.misses += len(missing)
        self.hits += len(wanted) - len(missing)
        rows = [fresh[p] if p in fresh else self._masks[p].bits() for p in wanted]
        out = np.stack(rows) if rows else np.zeros((0, FRAME, FRAME // 8), dtype=np.uint8)
        for p in wanted:  # most recently used last
            if p in self._masks:
                self._masks.move_to_end(p)
        self._masks.update((p, _Row(bits=b)) for p, b in fresh.items())
        while len(self._masks) > self.max_masks:
            self._masks.popitem(last=False)
        return out

    def region_mask(
        self, points_xy: np.ndarray, box_xyxy: np.ndarray, decode: RegionDecodeFn
    ) -> tuple[np.ndarray, float]:
        """The mask and score of one region prompt (points + box), decoded only when new.

        Args:
            points_xy: float [N, 2] frame pixels. box_xyxy: float [4] frame pixels.
            decode: the decoder call for a prompt not stored yet (e.g. `sam_prompt_fn`'s).

        Returns:
            (bool [S, S], score): bit-identical to what `decode` returned for this prompt.
        """
        key = region_key(points_xy, box_xyxy)
        if key in self._regions:
            self.region_hits += 1
            self._regions.move_to_end(key)
            row, score = self._regions[key]
            return np.unpackbits(row.bits(), axis=-1).view(bool), score
        self.region_misses += 1
        mask, score = decode(points_xy, box_xyxy)
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != (FRAME, FRAME):  # not storable: served as decoded
            return mask, float(score)
        self._regions[key] = (_Row(bits=np.packbits(mask, axis=-1)), float(score))
        while len(self._regions) > self.max_regions:
            self._regions.popitem(last=False)
        return mask, float(score)

    def to_bytes(self, level: int = BLOB_LEVEL) -> bytes:
        """Serialise (a blob without pickle of per-mask zlib streams); `from_bytes` restores every
        bit. Streams read from a blob are written back as read (no recompression)."""
        prompts = np.asarray(list(self._masks), dtype=np.int64).reshape(-1, 2)  # (N, 2), LRU order
        sizes, chunks = _streams(list(self._masks.values()), level)
        keys = [np.frombuffer(k, dtype=np.float64) for k in self._regions]
        r_sizes, r_chunks = _streams([row for row, _ in self._regions.values()], level)
        arrays = {
            "prompts": prompts,
            "sizes": sizes,
            "chunks": chunks,
            "region_lens": np.asarray([len(k) for k in keys], dtype=np.int64),  # (R,)
            "region_vals": np.concatenate(keys) if keys else np.zeros(0, np.float64),
            "region_scores": np.asarray([s for _, s in self._regions.values()], np.float64),
            "region_sizes": r_sizes,
            "region_chunks": r_chunks,
        }
        return _pack("DecodedMasks", arrays, key=self.key or "", layout=LAYOUT)

    @classmethod
    def from_bytes(
        cls,
        blob: bytes,
        max_masks: int = DEFAULT_MAX_MASKS,
        max_regions: int = DEFAULT_MAX_REGIONS,
    ) -> DecodedMasks:
        """Inverse of `to_bytes` (keeps the newest `max_masks` / `max_regions`), also of the
        older layout (one zlib stream, point prompts only). Raises ValueError otherwise."""
        store = cls(max_masks, max_regions)
        if not is_blob(blob):  # layout 1: zlib over the npz
            try:
                npz = zlib.decompress(blob)
            except zlib.error as exc:
                raise ValueError(f"not a DecodedMasks blob: {exc}") from exc
            d = _unpack(npz, "DecodedMasks")
            prompts, bits = d["prompts"], d["bits"]
            if bits.shape[1:] != (FRAME, FRAME // 8) or prompts.shape != (bits.shape[0], 2):
                raise ValueError(f"DecodedMasks blob has bad shapes {prompts.shape}, {bits.shape}")
            store.key = str(d["meta_key"]) or None
            start = max(0, len(prompts) - max_masks)
            for (x, y), row in zip(prompts[start:], bits[start:], strict=True):
                store._masks[(int(x), int(y))] = _Row(bits=row)
            return store
        d = _unpack(blob, "DecodedMasks")
        if int(d.get("meta_layout", -1)) != LAYOUT:
            raise ValueError(f"DecodedMasks blob of layout {d.get('meta_layout')}, not {LAYOUT}")
        prompts, streams = d["prompts"], _split(d["sizes"], d["chunks"])
        if prompts.shape != (len(streams), 2):
            raise ValueError(f"DecodedMasks blob has bad shapes {prompts.shape}, {len(streams)}")
        lens, vals, scores = d["region_lens"], d["region_vals"], d["region_scores"]
        r_streams = _split(d["region_sizes"], d["region_chunks"])
        if not len(lens) == len(scores) == len(r_streams) or int(lens.sum()) != vals.size:
            raise ValueError("DecodedMasks blob has an inconsistent region section")
        store.key = str(d["meta_key"]) or None
        start = max(0, len(prompts) - max_masks)
        for (x, y), z in zip(prompts[start:], streams[start:], strict=True):
            store._masks[(int(x), int(y))] = _Row(zipped=z)
        ends = np.cumsum(lens)
        keys = [vals[int(e - n) : int(e)].tobytes() for n, e in zip(lens, ends, strict=True)]
        start = max(0, len(keys) - max_regions)
        for k, s, z in zip(keys[start:], scores[start:], r_streams[start:], strict=True):
            store._regions[k] = (_Row(zipped=z), float(s))
        return store
