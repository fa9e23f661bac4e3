"""Latency of "find all like this" on a warm image (its encodings cached), on the CPU: the
worker's own path (the click's decode, `worker.clicks.click.find_all`, then the answer's
regions: geometry cleaning and RLE) with SAM ViT-H + DINOv2 ViT-L carrying RANDOM WEIGHTS
(speed only: every mask is meaningless).

Random weights make the similarity map noise, so how many masks a find all decodes on it says
nothing; the headline is a WORST case: the cached tokens are edited to show 16 separate objects
exactly like the clicked one (more than the decode budget, `FIND_ALL_MAX_DECODES` = 10), so the
budget is spent; the decoder runs on the real (random-weight) embedding.
The first version (GF-SAM with the clicked shot) decoded one mask per selected prompt, up to
128: the decoder on 128 prompts is timed beside it. Left out: Label Studio, HTTP and the queue
(a few ms to tens of ms; scripts/bench_interactive.py measures the round trip through LS).

    .venv/bin/python scripts/bench_find_all.py [--threads 2] [--repeat 5] [--preset tiny]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from typing import Any

import bootstrap  # noqa: F401  (the repository root on sys.path)
import numpy as np
import torch

from backend.state.prompts import Prompts
from backend.state.schemas import LabelConfigSummary
from backend.state.settings import Settings
from gfsam.encodings import TargetEncoding
from gfsam.types import GRID
from worker import runtime
from worker.clicks import click as clicks
from worker.clicks.edit_rules import refine

CLICKED = (slice(200, 280), slice(280, 360))  # image pixels of the clicked object (640 x 480)
CROWD = [(x, y) for x in (2, 9, 27, 33) for y in (2, 8, 28, 33)]  # cells (x, y) of 16 look-alikes


def crowd(target: TargetEncoding) -> TargetEncoding:
    """The target with 16 separate 2 x 2-cell objects whose tokens equal the clicked object's:
    more alike objects than the decode budget, so the budget bounds the time."""
    tokens = target.tokens.copy()
    grid = tokens.reshape(GRID, GRID, -1)  # (G, G, C)
    grid[15:22, 16:21] = grid[18, 18]  # the clicked object's cells, one look
    for x, y in CROWD:
        grid[y : y + 2, x : x + 2] = grid[18, 18]
    return dataclasses.replace(target, tokens=tokens)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--preset", default=None, help="tiny: a quick wiring run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(
        redis_url="redis://unused",
        label_studio_api_key="unused",
        gfsam_random_weights=True,
        gfsam_preset=args.preset,
        _env_file=None,  # type: ignore[call-arg]
    )
    rt = runtime.install(settings, runtime.build_model(settings))
    pipe = rt.model.pipeline
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)
    started = time.perf_counter()
    target = pipe.encode_target(image)  # what the target cache holds for a warm image
    encode_s = time.perf_counter() - started
    cfg = LabelConfigSummary(from_name="tag", to_name="image", data_key="image", labels=["Obj"])
    prompts = Prompts(
        label="Obj",
        points=[(320.0, 240.0)],
        positive=[True],
        width=640,
        height=480,
        gesture="find_all",
    )
    decoded = [0]  # masks decoded by the last find all
    batched = pipe.sam.decode_boxes

    def counting(embedding: np.ndarray, points: np.ndarray, boxes: np.ndarray) -> Any:
        decoded[0] += len(points)
        return batched(embedding, points, boxes)

    pipe.sam.decode_boxes = counting  # type: ignore[method-assign]

    def once(scene: TargetEncoding) -> tuple[float, int]:
        decoded[0] = 0
        t0 = time.perf_counter()
        refine(pipe.sam, target.embedding, prompts, (480, 640))  # the click's own decode
        clicked = np.zeros((480, 640), dtype=bool)
        clicked[CLICKED] = True  # random weights decode noise: a fixed object instead
        found = clicks.find_all(rt, scene, clicked)
        regions = clicks._regions(rt, cfg, "image", prompts, found, 0.5)
        return time.perf_counter() - t0, len(regions)

    def median(scene: TargetEncoding) -> tuple[float, int]:
        once(scene)  # warm-up
        runs = [once(scene) for _ in range(args.repeat)]
        return statistics.median(r[0] for r in runs), runs[-1][1]

    worst_s, worst_regions = median(crowd(target))
    worst_decodes = decoded[0]
    typical_s, typical_regions = median(target)
    typical_decodes = decoded[0]
    emb = torch.from_numpy(target.embedding)[None]
    xy = rng.integers(0, 1024, (128, 2))
    pipe.sam.decode_points(emb, xy, pipe.config.prompt_batch)  # warm-up
    t0 = time.perf_counter()
    pipe.sam.decode_points(emb, xy, pipe.config.prompt_batch)
    decode_128 = time.perf_counter() - t0
    name = args.preset or "sam_vit_h + dinov2_vitl14"
    print(f"RANDOM WEIGHTS ({name}; speed only), {args.threads} threads, 640x480 image")
    print(f"target encoding (cold, not part of a warm find all): {encode_s:.1f}s")
    print(
        f"find all, warm, random-weight similarity: {typical_s:.2f}s ({typical_decodes} "
        f"decodes, {typical_regions} regions)"
    )
    print(f"first version's decoder alone on 128 prompts (GF-SAM's cap): {decode_128:.2f}s")
    print(
        f"find all, warm, worst case (16 look-alikes: {worst_decodes} decodes of a budget of "
        f"{settings.find_all_max_decodes}, median of {args.repeat}): {worst_s:.2f}s "
        f"({worst_regions} regions; goal: under 2 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
