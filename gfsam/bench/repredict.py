"""``python -m gfsam benchmark --repredict``: first prediction vs re-prediction after a correction.

One target image, one label. First prediction: encode the target, predict from one shot, cache
the target encoding and the decoded masks (blobs). Re-prediction after one more shot is added to
the label: restore both blobs, predict from two shots, decoding only prompts not decoded before,
store the masks again. Encoding the new shot is paid once per correction, not per image, so it is
reported apart. RANDOM weights: timings only.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from gfsam.bench.synthetic import random_pipeline, synthetic_pair
from gfsam.decoded import DecodedMasks
from gfsam.encodings import Reference, TargetEncoding
from gfsam.pipeline import GFSAM


def _images() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], np.ndarray]:
    """Seed shot, correction shot (another view of the object) and target; uint8 RGB + bool."""

    ref, mask, target = synthetic_pair()
    rng = np.random.default_rng(1)
    shifted = np.roll(ref, (31, -47), axis=(0, 1))  # the object seen elsewhere, new background
    shifted[: ref.shape[0] // 8] = rng.integers(0, 256, shifted[: ref.shape[0] // 8].shape)
    return (ref, mask), (shifted, np.roll(mask, (31, -47), axis=(0, 1))), target


def _first(pipe: GFSAM, image: np.ndarray, seed: Reference) -> tuple[float, bytes, bytes]:
    start = time.perf_counter()
    target = pipe.encode_target(image)
    store = DecodedMasks()
    pipe.predict(target, [seed], decoded=store)
    blobs = target.to_bytes(), store.to_bytes()
    return time.perf_counter() - start, *blobs


def _again(
    pipe: GFSAM, target_blob: bytes, masks_blob: bytes, shots: list[Reference]
) -> tuple[float, DecodedMasks, np.ndarray]:
    start = time.perf_counter()
    target = TargetEncoding.from_bytes(target_blob)
    store = DecodedMasks.from_bytes(masks_blob)
    pred = pipe.predict(target, shots, decoded=store)
    store.to_bytes()
    return time.perf_counter() - start, store, pred.segmentation.mask


def run(args: argparse.Namespace) -> list[str]:
    """Measure; returns the report lines, ending with the one ``reprediction speedup`` line."""
    torch.manual_seed(0)  # the same random encoders (so the same prompts) on every run
    pipe = random_pipeline(args)
    (seed_img, seed_mask), (extra_img, extra_mask), target_img = _images()
    seed = pipe.encode_reference(seed_img, seed_mask)
    first, target_blob, masks_blob = _first(pipe, target_img, seed)
    start = time.perf_counter()
    extra = pipe.encode_reference(extra_img, extra_mask)
    shot_s = time.perf_counter() - start
    after, store, mask = _again(pipe, target_blob, masks_blob, [seed, extra])
    start = time.perf_counter()
    fresh = pipe.predict(TargetEncoding.from_bytes(target_blob), [seed, extra])
    fresh_s = time.perf_counter() - start
    prompts = store.hits + store.misses
    identical = bool(np.array_equal(mask, fresh.segmentation.mask))
    return [
        f"# repredict: sam={args.sam} dino={args.dino} device={args.device} "
        f"max_points={args.max_points}; RANDOM WEIGHTS: timing only, masks are meaningless",
        f"# target blob {len(target_blob) / 2**20:.1f} MiB, mask blob "
        f"{len(masks_blob) / 2**20:.1f} MiB ({len(store)} masks after the correction)",
        f"# new shot encoded once per correction (not per image): {shot_s:.2f}s",
        f"# re-prediction without the mask store (cached target only): {fresh_s:.2f}s; "
        f"masks identical to the store's: {identical}",
        f"reprediction speedup: {first / after:.1f}x (first {first:.2f}s, after a correction "
        f"{after:.2f}s, prompt cache hits {store.hits}/{prompts})",
    ]
