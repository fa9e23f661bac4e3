"""What the protocols run: one `EvalModel` interface over the oracle and the real encoders.

Both produce the library's own `Reference`, `TargetEncoding` and `Prediction`; the oracle runs the
unchanged token-level pipeline (`gfsam.core.segment_weighted`: PNA, PMC, gates) with its tokens
and its mask function, the real model is `gfsam.pipeline.GFSAM` itself. Encodings are cached per
item for the run (a target is encoded once, however many episodes or labels use it).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Protocol, TypeVar

import numpy as np
import torch

from gfsam.assign import PointMasks
from gfsam.core import segment_weighted
from gfsam.decoded import pack_masks
from gfsam.discover import PromptMaskFn, sam_prompt_fn
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.eval.data import Item, load_labels
from gfsam.eval.oracle import ORACLE_NOTE, OracleDino, OracleParams, OracleSam, frame_labels
from gfsam.image import load_image, mask_from_frame, mask_to_frame, read_tensor
from gfsam.pipeline import GFSAM
from gfsam.points import reference_weights
from gfsam.types import GFSAMConfig, PromptDecoder

RANDOM_NOTE = "RANDOM WEIGHTS: every number here is MEANINGLESS"
V = TypeVar("V")


class EvalModel(Protocol):
    """Encode references and targets of dataset items, predict one label."""

    note: str | None  # said on every output line (oracle / random weights), None for real

    def encode_reference(self, item: Item, mask: np.ndarray) -> Reference: ...

    def encode_target(self, item: Item) -> TargetEncoding: ...

    def predict(self, target: TargetEncoding, references: Sequence[Reference]) -> Prediction: ...

    def prompt_fn(self, target: TargetEncoding) -> PromptMaskFn: ...

    def point_masks(self, target: TargetEncoding) -> PointMasks: ...

    @property
    def decoder(self) -> PromptDecoder: ...


class _Lru(OrderedDict[str, V]):
    """A tiny bounded cache: encodings are large, episodes revisit few items."""

    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def get_or(self, key: str, make: Callable[[], V]) -> V:
        if key in self:
            self.move_to_end(key)
            return self[key]
        value = self[key] = make()
        while len(self) > self.size:
            self.popitem(last=False)
        return value


class OracleModel:
    """GF-SAM on oracle encoders (`gfsam.eval.oracle`); logic only, never model quality."""

    note: str | None = ORACLE_NOTE

    def __init__(self, params: OracleParams, config: GFSAMConfig | None = None) -> None:
        self.dino, self.sam = OracleDino(params), OracleSam(params)
        self.config = config or GFSAMConfig()
        self._framed: _Lru[tuple[np.ndarray, np.ndarray, tuple[int, int]]] = _Lru(64)

    def _encode(self, item: Item) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
        def make() -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
            labels = load_labels(item)
            framed = frame_labels(labels)  # (S, S)
            h, w = labels.shape
            return framed, self.dino.tokens(framed, item.key), (h, w)

        return self._framed.get_or(item.key, make)

    def encode_reference(self, item: Item, mask: np.ndarray) -> Reference:
        """A shot: oracle tokens of the item and cell weights of `mask` (bool [H, W])."""
        _, tokens, size = self._encode(item)
        fg, bg = reference_weights(mask_to_frame(mask))  # (T,), (T,)
        return Reference(tokens, fg.numpy(), bg.numpy(), int(mask.sum()), size, self.dino.name)

    def encode_target(self, item: Item) -> TargetEncoding:
        """A target: oracle tokens plus the component map as the 'SAM embedding'."""
        framed, tokens, size = self._encode(item)
        emb = self.sam.embed(framed)  # (1, S, S)
        return TargetEncoding(emb, tokens, size, self.sam.name, self.dino.name)

    def predict(self, target: TargetEncoding, references: Sequence[Reference]) -> Prediction:
        """`GFSAM.predict` with the oracle's mask function (same stages, same config)."""
        if not references:
            raise ValueError("references must hold at least one Reference")
        ref = torch.from_numpy(np.stack([r.tokens for r in references])).float()  # (K, T, d)
        fg = torch.from_numpy(np.stack([r.fg for r in references]))  # (K, T)
        bg = torch.from_numpy(np.stack([r.bg for r in references]))  # (K, T)
        tgt = read_tensor(target.tokens).float()  # (T, d)

        def mask_fn(prompt_xy: np.ndarray) -> torch.Tensor:
            return self.sam.decode_points(target.embedding, prompt_xy)

        seg = segment_weighted(ref, fg, bg, tgt, mask_fn, self.config)
        return Prediction(
            mask=mask_from_frame(seg.mask, target.image_size),
            score=float(seg.score),
            abstained=bool(seg.abstained),
            fallback=bool(seg.fallback),
            segmentation=seg,
        )

    def prompt_fn(self, target: TargetEncoding) -> PromptMaskFn:
        """Box + points prompts on the target, answered by the oracle SAM (discovery)."""
        return sam_prompt_fn(self.sam, target.embedding)

    def point_masks(self, target: TargetEncoding) -> PointMasks:
        """Single-point masks as GF-SAM decoded them, packed (the split assignment's carving)."""
        return lambda xy: np.packbits(self.sam.decode_points(target.embedding, xy).numpy(), axis=-1)

    @property
    def decoder(self) -> PromptDecoder:
        """The oracle SAM's prompt decoder (clicks, find all)."""
        return self.sam


class RealModel:
    """`gfsam.pipeline.GFSAM` on dataset items (real or, flagged, random weights)."""

    def __init__(self, pipe: GFSAM, cache_items: int = 16) -> None:
        self.pipe = pipe
        self.note: str | None = RANDOM_NOTE if pipe.random_weights else None
        self._targets: _Lru[TargetEncoding] = _Lru(cache_items)
        self._refs: _Lru[Reference] = _Lru(cache_items)

    def encode_reference(self, item: Item, mask: np.ndarray) -> Reference:
        key = f"{item.key}#{hash(mask.tobytes())}"
        return self._refs.get_or(
            key, lambda: self.pipe.encode_reference(load_image(item.image), mask)
        )

    def encode_target(self, item: Item) -> TargetEncoding:
        return self._targets.get_or(
            item.key, lambda: self.pipe.encode_target(load_image(item.image))
        )

    def predict(self, target: TargetEncoding, references: Sequence[Reference]) -> Prediction:
        return self.pipe.predict(target, references)

    def prompt_fn(self, target: TargetEncoding) -> PromptMaskFn:
        """Box + points prompts through the SAM decoder on the cached embedding."""
        return sam_prompt_fn(self.pipe.sam, target.embedding)

    def point_masks(self, target: TargetEncoding) -> PointMasks:
        """Single-point masks through the pipeline's decoder, as GF-SAM decodes them, packed."""
        emb = torch.from_numpy(target.embedding).to(self.pipe.device)[None]
        batch, precision = self.pipe.config.prompt_batch, self.pipe.precision
        return lambda xy: pack_masks(
            self.pipe.sam.decode_points(emb, xy, batch, precision=precision)
        ).numpy()

    @property
    def decoder(self) -> PromptDecoder:
        """The pipeline's prompt decoder (clicks, find all)."""
        return self.pipe.sam
