"""Benchmark worker.labelstudio.brush_rle against label-studio-sdk's pure-Python brush RLE codec.

Usage: python scripts/bench_rle.py [--width 2000] [--height 1500] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import bootstrap  # noqa: F401  (the repository root on sys.path)
import numpy as np
from label_studio_sdk.converter.brush import decode_rle, mask2rle

from worker.labelstudio.brush_rle import mask_to_rle, rle_to_mask


def best_of(fn: Callable[[], object], repeat: int) -> float:
    """Fastest wall time of `repeat` calls, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def masks(width: int, height: int) -> dict[str, np.ndarray]:
    """A smooth disk and 50 % random noise, bool [H, W]."""
    yy, xx = np.mgrid[:height, :width]
    radius = min(width, height) / 3
    smooth = (xx - width / 2) ** 2 + (yy - height / 2) ** 2 < radius**2
    noise = np.random.default_rng(0).random((height, width)) < 0.5
    return {"smooth": smooth, "noise": noise}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=2000)
    parser.add_argument("--height", type=int, default=1500)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    header = f"{'mask':8} {'op':6} {'rle bytes':>10} {'sdk s':>8} {'ours s':>8} {'speedup':>8}"
    print(f"{args.width}x{args.height}, best of {args.repeat} (SDK decode: 1 run)")
    print(header)
    for name, mask in masks(args.width, args.height).items():
        rle = mask_to_rle(mask)
        assert rle == mask2rle(mask.astype(np.uint8) * 255), "encoder differs from SDK"
        sdk = best_of(lambda m=mask: mask2rle(m.astype(np.uint8) * 255), args.repeat)
        ours = best_of(lambda m=mask: mask_to_rle(m), args.repeat)
        print(f"{name:8} {'encode':6} {len(rle):>10} {sdk:8.3f} {ours:8.4f} {sdk / ours:7.1f}x")
        h, w = mask.shape
        assert np.array_equal(rle_to_mask(rle, w, h), mask), "decoder differs from input"
        sdk = best_of(lambda r=rle, s=(h, w, 4): decode_rle(r).reshape(s)[:, :, 3] >= 128, 1)
        ours = best_of(lambda r=rle, w=w, h=h: rle_to_mask(r, w, h), args.repeat)
        print(f"{name:8} {'decode':6} {len(rle):>10} {sdk:8.3f} {ours:8.4f} {sdk / ours:7.1f}x")


if __name__ == "__main__":
    main()
