"""Latency of "find all like this" on a warm image (its encodings cached), on the CPU: the
worker's own path (`worker.clicks.click.find_all` then the answer's regions: geometry cleaning
and RLE) with SAM ViT-H + DINOv2 ViT-L carrying RANDOM WEIGHTS (speed only: every mask is
meaningless). Random weights select few prompts; real ones up to `--max-points`, so the SAM
decoder is also timed on exactly that many prompts, and the upper bound printed replaces the
measured decode by it. Left out: Label Studio, HTTP and the queue (a few ms to tens of ms; see
scripts/bench_interactive.py for the round trip through LS).

    .venv/bin/python scripts/bench_find_all.py [--threads 2] [--repeat 5] [--preset tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time

import bootstrap  # noqa: F401  (the repository root on sys.path)
import numpy as np
import torch

from backend.state.prompts import Prompts
from backend.state.schemas import LabelConfigSummary
from backend.state.settings import Settings
from worker import runtime
from worker.clicks import click as clicks
from worker.clicks.edit_rules import refine


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--max-points", type=int, default=128)
    parser.add_argument("--preset", default=None, help="tiny: a quick wiring run")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    settings = Settings(
        redis_url="redis://unused",
        label_studio_api_key="unused",
        gfsam_random_weights=True,
        gfsam_preset=args.preset,
        gfsam_max_points=args.max_points,
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
    prompts = Prompts(label="Obj", points=[(320.0, 240.0)], positive=[True], width=640, height=480)

    def once() -> tuple[float, int]:
        t0 = time.perf_counter()
        clicked = refine(pipe.sam, target.embedding, prompts, (480, 640)).mask
        if not clicked.any():
            clicked[200:280, 280:360] = True  # random weights may decode nothing
        found = clicks.find_all(rt, target, "Obj", clicked)
        regions = clicks._regions(rt, cfg, "image", prompts, found, 0.5)
        return time.perf_counter() - t0, len(regions)

    once()  # warm-up
    runs = [once() for _ in range(args.repeat)]
    warm = statistics.median(r[0] for r in runs)
    emb = torch.from_numpy(target.embedding)[None]
    xy = rng.integers(0, 1024, (args.max_points, 2))
    pipe.sam.decode_points(emb, xy, pipe.config.prompt_batch)  # warm-up
    t0 = time.perf_counter()
    pipe.sam.decode_points(emb, xy, pipe.config.prompt_batch)
    decode_all = time.perf_counter() - t0
    name = args.preset or "sam_vit_h + dinov2_vitl14"
    print(f"RANDOM WEIGHTS ({name}; speed only), {args.threads} threads, 640x480 image")
    print(f"target encoding (cold, not part of a warm find all): {encode_s:.1f}s")
    print(f"find all, warm, median of {args.repeat}: {warm:.2f}s ({runs[-1][1]} regions)")
    print(f"SAM decoder on {args.max_points} prompts: {decode_all:.2f}s")
    print(
        f"find all warm upper bound (measured + {args.max_points}-prompt decode): "
        f"{warm + decode_all:.2f}s (goal: under 2 s)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
