"""What every benchmark mode shares: synthetic images and the RANDOM-WEIGHT pipeline the
options describe (timing only: every mask of it is meaningless), and median-of-runs timing."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from gfsam.types import GFSAMConfig

if TYPE_CHECKING:
    from gfsam.pipeline import GFSAM

SYNTHETIC_HW = (480, 640)


def median_timings(
    fn: Callable[[dict[str, float]], None], repeat: int, warmup: int
) -> dict[str, float]:
    for _ in range(warmup):
        fn({})
    runs = []
    for _ in range(max(repeat, 1)):
        timings: dict[str, float] = {}
        start = time.perf_counter()
        fn(timings)
        timings["total"] = time.perf_counter() - start
        runs.append(timings)
    keys = {k for run in runs for k in run}
    return {k: statistics.median(run.get(k, 0.0) for run in runs) for k in keys}


def synthetic_pair() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    h, w = SYNTHETIC_HW
    ref = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = True
    return ref, mask, rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def random_pipeline(args: argparse.Namespace) -> GFSAM:
    """The pipeline the benchmark options describe, with RANDOM weights (timing only)."""
    from gfsam.pipeline import build_pipeline

    return build_pipeline(
        sam=args.sam,
        dino=args.dino,
        device=args.device,
        random_weights=True,
        config=GFSAMConfig(max_points=args.max_points),
    )
