"""Per-target store of decoded SAM masks: each prompt is decoded once per target (issue 12).

A decoded mask depends only on (target embedding, prompt pixel, decoder, precision), not on the
references, the label or the model version. `DecodedMasks` keeps them for one target so that a
second label, or a re-fit that adds a shot, decodes only prompts never decoded before.

Memory: masks are kept bit-packed, ``MASK_BYTES`` = 128 KiB each (8x less than bool), bounded by
``max_masks`` with least-recently-used eviction. Storage: `to_bytes` writes an npz (no pickle)
compressed with zlib; `from_bytes` restores the same bits.
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

from gfsam.encodings import TargetEncoding, _pack, _unpack
from gfsam.types import FRAME

logger = logging.getLogger(__name__)
MASK_BYTES = FRAME * FRAME // 8
# Two labels at the official 128 prompts each: 32 MiB in memory.
DEFAULT_MAX_MASKS = 256
# zlib level of the blob: 1 is several times faster than 6 and within a few % of its size on
# SAM masks (large smooth regions).
BLOB_LEVEL = 1
_BITS = (128, 64, 32, 16, 8, 4, 2, 1)  # np.packbits order (big-endian within a byte)

Prompt = tuple[int, int]
DecodeFn = Callable[[np.ndarray], Tensor]


def pack_masks(masks: Tensor) -> Tensor:
    """Bit-pack masks on their device, in `np.packbits` order along the last axis.

    Args:
        masks: bool [P, S, S].

    Returns:
        uint8 [P, S, S / 8] on the same device.
    """
    p, h, w = masks.shape
    weights = torch.tensor(_BITS, dtype=torch.uint8, device=masks.device)
    bits = masks.reshape(p, h, w // 8, 8).to(torch.uint8) * weights  # (P, S, S/8, 8)
    return bits.sum(-1, dtype=torch.uint8)  # (P, S, S/8)


def unpack_masks(packed: Tensor) -> Tensor:
    """Inverse of `pack_masks`: uint8 [P, S, S / 8] -> bool [P, S, S] on the same device."""
    p, h, w8 = packed.shape
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed[..., None] >> shifts) & 1  # (P, S, S/8, 8)
    return bits.reshape(p, h, w8 * 8).to(torch.bool)  # (P, S, S)


def decoder_key(target: TargetEncoding, precision: str) -> str:
    """Identity of the masks a target yields: SAM encoder, decoder precision, embedding digest."""
    digest = hashlib.blake2b(np.ascontiguousarray(target.embedding).tobytes(), digest_size=12)
    return f"{target.sam_encoder}/{precision}/{digest.hexdigest()}"


class DecodedMasks:
    """Bounded LRU store of one target's decoded masks, keyed by prompt pixel (x, y).

    Not thread-safe (like `GFSAM`). ``hits`` and ``misses`` count prompts served from the store
    and prompts decoded since creation (or `reset_stats`); they are not serialised.

    Args:
        max_masks: most masks kept (each `MASK_BYTES` in memory); the least recently used go.
    """

    def __init__(self, max_masks: int = DEFAULT_MAX_MASKS) -> None:
        if max_masks < 1:
            raise ValueError(f"max_masks must be >= 1, got {max_masks}")
        self.max_masks = max_masks
        self.key: str | None = None
        self.hits = 0
        self.misses = 0
        self._masks: OrderedDict[Prompt, np.ndarray] = OrderedDict()  # uint8 [S, S/8] each

    def __len__(self) -> int:
        return len(self._masks)

    def __contains__(self, prompt: object) -> bool:
        return prompt in self._masks

    @property
    def nbytes(self) -> int:
        """Bytes held in memory by the packed masks."""
        return len(self._masks) * MASK_BYTES

    def reset_stats(self) -> None:
        """Zero ``hits`` and ``misses`` (e.g. before one prediction)."""
        self.hits = self.misses = 0

    def bind(self, key: str) -> None:
        """Tie the store to one target and decoder (`decoder_key`); another key empties it."""
        if self.key is not None and self.key != key and self._masks:
            logger.warning("decoded masks were for %s, not %s; dropping them", self.key, key)
            self._masks.clear()
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
        wanted = [(int(x), int(y)) for x, y in np.asarray(prompt_xy).reshape(-1, 2)]
        missing = list(dict.fromkeys(p for p in wanted if p not in self._masks))
        fresh: dict[Prompt, np.ndarray] = {}
        if missing:
            decoded = decode(np.asarray(missing, dtype=np.int64))  # (N, S, S)
            fresh = dict(zip(missing, pack_masks(decoded).cpu().numpy(), strict=True))
        self.misses += len(missing)
        self.hits += len(wanted) - len(missing)
        rows = [fresh[p] if p in fresh else self._masks[p] for p in wanted]
        packed = torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, FRAME, FRAME // 8)
        out = unpack_masks(packed.to(device, torch.uint8))  # (P, S, S)
        for p in wanted:  # most recently used last
            if p in self._masks:
                self._masks.move_to_end(p)
        self._masks.update(fresh)
        while len(self._masks) > self.max_masks:
            self._masks.popitem(last=False)
        return out

    def to_bytes(self, level: int = BLOB_LEVEL) -> bytes:
        """Serialise (npz without pickle, zlib-compressed); `from_bytes` restores every bit."""
        prompts = np.asarray(list(self._masks), dtype=np.int64).reshape(-1, 2)  # (N, 2)
        bits = (
            np.stack(list(self._masks.values()))
            if self._masks
            else np.zeros((0, FRAME, FRAME // 8), np.uint8)
        )  # (N, S, S/8), LRU order
        npz = _pack("DecodedMasks", {"prompts": prompts, "bits": bits}, key=self.key or "")
        return zlib.compress(npz, level)

    @classmethod
    def from_bytes(cls, blob: bytes, max_masks: int = DEFAULT_MAX_MASKS) -> DecodedMasks:
        """Inverse of `to_bytes` (keeps the newest `max_masks`). Raises ValueError otherwise."""
        try:
            npz = zlib.decompress(blob)
        except zlib.error as exc:
            raise ValueError(f"not a DecodedMasks blob: {exc}") from exc
        d = _unpack(npz, "DecodedMasks")
        prompts, bits = d["prompts"], d["bits"]
        if bits.shape[1:] != (FRAME, FRAME // 8) or prompts.shape != (bits.shape[0], 2):
            raise ValueError(f"DecodedMasks blob has bad shapes {prompts.shape}, {bits.shape}")
        store = cls(max_masks)
        store.key = str(d["meta_key"]) or None
        start = max(0, len(prompts) - max_masks)
        for (x, y), row in zip(prompts[start:], bits[start:], strict=True):
            store._masks[(int(x), int(y))] = row
        return store
