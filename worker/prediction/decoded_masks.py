"""Decoded SAM masks of a target kept next to its encoding, so a re-prediction decodes only new
prompts (issue 12; `gfsam.decoded.DecodedMasks`, architecture §1).

The blob lives in the target cache under ``{image sha256}.masks`` (file ``{sha}.masks.bin``, in
the same byte budget and LRU as the encodings). It is loaded before `predict_labels`; discovery
(`worker.discovery.candidates`) reads and adds its region prompts through the same store; `save`
writes it back once, only when something new was decoded: a pre-annotation after its discovery
(or when the job raised after decoding), through the cache's writer thread. A blob that cannot
be read is ignored (logged): it costs decoding time, never a wrong mask (the store empties
itself when its decoder key does not match the target; the cache is per model). Counters:
``prompt_cache_hit`` / ``prompt_cache_miss`` in the store's stats, and ``region_cache_hit`` /
``region_cache_miss`` for discovery's region prompts.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from backend.state.store import Store
from gfsam.assign import PointMasks
from gfsam.decoded import DEFAULT_MAX_MASKS, DecodedMasks
from gfsam.encodings import Prediction, Reference, TargetEncoding
from gfsam.types import GFSAMConfig
from worker.runtime import Runtime

logger = logging.getLogger(__name__)

SUFFIX = ".masks"


def capacity(config: GFSAMConfig, labels: int) -> int:
    """Masks kept per target: every prompt of every label of one prediction, at least the default
    (as `GFSAM.predict_labels` sizes its own per-call store)."""
    return max(DEFAULT_MAX_MASKS, labels * config.max_points)


def load(rt: Runtime, sha: str, labels: int) -> DecodedMasks:
    """The target's stored masks (empty store when none or unreadable)."""
    size = capacity(rt.model.pipeline.config, labels)
    blob = rt.targets.get(sha + SUFFIX)
    if blob is not None:
        try:
            return DecodedMasks.from_bytes(blob, max_masks=size)
        except ValueError as exc:
            logger.warning("decoded masks of %s unreadable, decoding again: %s", sha[:12], exc)
    return DecodedMasks(size)


def save(
    rt: Runtime, store: Store, sha: str, decoded: DecodedMasks, *, later: bool = False
) -> None:
    """Count the store's point and region prompt hits and misses; store the masks when some
    are new. A pre-annotation saves once, after discovery added its region prompts, and
    ``later`` (`TargetCache.put_later`: compressed and written on the cache's thread while the
    job stores and delivers; nothing touches `decoded` after this call)."""
    for name, amount in (
        ("prompt_cache_hit", decoded.hits),
        ("prompt_cache_miss", decoded.misses),
        ("region_cache_hit", decoded.region_hits),
        ("region_cache_miss", decoded.region_misses),
    ):
        if amount:
            store.progress.incr_stat(name, amount)
    if decoded.misses or decoded.region_misses:
        if later:
            rt.targets.put_later(sha + SUFFIX, decoded.to_bytes)
        else:
            rt.targets.put(sha + SUFFIX, decoded.to_bytes())


def predict_labels(
    rt: Runtime,
    store: Store,
    sha: str,
    target: TargetEncoding,
    references: Mapping[str, Sequence[Reference]],
    *,
    keep: bool = False,
) -> tuple[dict[str, Prediction], PointMasks, DecodedMasks]:
    """`predict_labels` with the target's stored masks.

    Args:
        rt: the worker's runtime (pipeline, target cache).
        store: for the hit / miss counters.
        sha: sha256 of the image bytes (the target cache key).
        target: its encoding. references: label -> shots, in config order.
        keep: the caller `save`s the store itself (after discovery); else saved here.

    Returns:
        (label -> prediction, as `predict_labels` returns them; the prompts' SAM masks for
        the split assignment's carving, `point_masks`; the store, for discovery's region
        prompts).
    """
    decoded = load(rt, sha, len(references))
    preds = rt.model.pipeline.predict_labels(target, references, decoded=decoded)
    if not keep:
        save(rt, store, sha, decoded)
    return dict(preds), point_masks(rt, target, decoded), decoded


def point_masks(rt: Runtime, target: TargetEncoding, decoded: DecodedMasks) -> PointMasks:
    """Prompt pixels -> their SAM masks, packed (`PointMasks`), read from `decoded` (the
    prediction just put every gated prompt there); a prompt evicted since is decoded again, one
    positive point through the model's prompt decoder (the contract's `decode_prompts`)."""
    sam = rt.model.pipeline.sam

    def decode(prompt_xy: np.ndarray) -> torch.Tensor:
        one = np.ones(1, dtype=np.int64)
        masks = [
            sam.decode_prompts(target.embedding, np.asarray([xy], dtype=np.float32), one)[0]
            for xy in prompt_xy
        ]
        return torch.from_numpy(np.stack(masks).astype(bool))  # (N, S, S)

    def masks(prompt_xy: np.ndarray) -> np.ndarray:
        return decoded.packed_masks(prompt_xy, decode)  # (P, S, S/8)

    return masks
