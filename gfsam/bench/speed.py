"""``python -m gfsam benchmark``: where the time goes (no accuracy is measured here).

Part 1 runs the image-level pipeline with RANDOM weights (default tiny encoders) on a synthetic
image pair and reports per-stage medians. Part 2 runs the token-level algorithm (faithful
config) on the golden parity cases, with the recorded SAM masks as the mask function, next to the
official code's time from ``official_timing.csv`` (2 CPU threads, median of 3 after a warm-up).
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from gfsam.bench.synthetic import median_timings, random_pipeline, synthetic_pair
from gfsam.types import FRAME, GFSAMConfig

if TYPE_CHECKING:
    pass

DEFAULT_GOLDEN = Path(__file__).resolve().parents[1].parent / "shared/golden/gfsam-parity"
PIPELINE_STAGES = (
    "sam_encoder",
    "dinov2_encoder",
    "point_selection",
    "mask_decoding",
    "clustering",
    "gates",
    "merge",
)
TOKEN_STAGES = PIPELINE_STAGES[2:]


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Benchmark options (the model options come from `gfsam.cli`)."""
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (CI machines: 2)")
    p.add_argument("--max-points", type=int, default=128, help="pipeline part: prompt cap")
    p.add_argument("--golden", type=Path, default=DEFAULT_GOLDEN, help="golden cases folder")
    p.add_argument("--cases", help="comma-separated case names (default: all)")
    p.add_argument("--no-pipeline", action="store_true", help="skip part 1")
    p.add_argument("--no-golden", action="store_true", help="skip part 2")
    p.add_argument(
        "--repredict",
        action="store_true",
        help="instead: first prediction vs re-prediction after one more shot (mask store)",
    )
    p.add_argument(
        "--prompts",
        type=int,
        metavar="N",
        help="--repredict: pin the prompt selection to N cells (random weights select few)",
    )
    p.add_argument(
        "--shared",
        metavar="S[,S...]",
        help="--repredict with --prompts: prompts kept by the correction (default N); a list "
        "gives one line each",
    )
    p.add_argument(
        "--gpu",
        action="store_true",
        help="instead: CUDA throughput fp32 vs bf16 (needs --device cuda[:N])",
    )
    p.add_argument("--images", type=int, default=32, help="--gpu: images per precision")
    p.add_argument("--encode-batch", type=int, default=8, help="--gpu: images per encoder call")


def pipeline_stages(args: argparse.Namespace) -> dict[str, float]:
    """Median seconds per stage of encode_target + predict with random-weight encoders."""
    pipe = random_pipeline(args)
    ref_img, ref_mask, tgt_img = synthetic_pair()
    ref = pipe.encode_reference(ref_img, ref_mask)

    def once(timings: dict[str, float]) -> None:
        pipe.predict(pipe.encode_target(tgt_img, timings=timings), [ref], timings=timings)

    return median_timings(once, args.repeat, args.warmup)


def _official_times(golden: Path) -> dict[str, float]:
    path = golden / "official_timing.csv"
    if not path.is_file():
        return {}
    with open(path, newline="") as f:
        return {row["case"]: float(row["median_s"]) for row in csv.DictReader(f)}


def golden_case(path: Path, args: argparse.Namespace) -> dict[str, float]:
    """Median token-level seconds (and stages) of one golden case, plus N, clusters and IoU."""
    from gfsam.core import segment_tokens

    with np.load(path, allow_pickle=False) as z:
        case = {k: z[k] for k in ("ref_tokens", "ref_masks", "tgt_tokens", "bank", "owner", "mask")}
    bank = np.unpackbits(case["bank"], axis=-1, count=FRAME).astype(bool)  # (M, S, S)
    owner = case["owner"].astype(np.int64)  # (S, S)

    def mask_fn(xy: np.ndarray) -> np.ndarray:
        return bank[owner[xy[:, 1], xy[:, 0]]]  # (P, S, S)

    cfg, result = GFSAMConfig.faithful(), {}

    def once(timings: dict[str, float]) -> None:
        result["seg"] = segment_tokens(
            case["ref_tokens"], case["ref_masks"], case["tgt_tokens"], mask_fn, cfg, timings=timings
        )

    stats = median_timings(once, args.repeat, args.warmup)
    seg, expected = result["seg"], np.unpackbits(case["mask"], axis=-1, count=FRAME).astype(bool)
    union = np.logical_or(seg.mask, expected).sum()
    iou = 1.0 if union == 0 else np.logical_and(seg.mask, expected).sum() / union
    return {**stats, "n": seg.n_points, "clusters": seg.n_clusters, "iou": float(iou)}


def _print_pipeline(args: argparse.Namespace, stats: dict[str, float]) -> None:
    print(
        f"# pipeline stages: sam={args.sam} dino={args.dino} device={args.device} "
        f"threads={torch.get_num_threads()} repeat={args.repeat} max_points={args.max_points}"
    )
    print("# RANDOM WEIGHTS: timing only, masks are meaningless")
    print(f"{'stage':<16}{'median_s':>10}")
    for stage in (*PIPELINE_STAGES, "total"):
        print(f"{stage:<16}{stats.get(stage, 0.0):>10.4f}")


def _print_golden(args: argparse.Namespace, paths: list[Path]) -> None:
    official = _official_times(args.golden)
    print(
        f"# golden token-level cases: {args.golden} (faithful config, threads="
        f"{torch.get_num_threads()}, median of {args.repeat}); ratio = ours / official"
    )
    cols = "".join(f"{s[:10]:>11}" for s in TOKEN_STAGES)
    print(
        f"{'case':<26}{'N':>4}{'L':>3}{'ours_s':>9}{'official_s':>11}{'ratio':>7}{'iou':>7}{cols}"
    )
    for path in paths:
        r = golden_case(path, args)
        ref = official.get(path.stem)
        ratio = f"{r['total'] / ref:>7.2f}" if ref else f"{'n/a':>7}"
        ref_s = f"{ref:>11.4f}" if ref else f"{'n/a':>11}"
        stages = "".join(f"{r.get(s, 0.0):>11.4f}" for s in TOKEN_STAGES)
        print(
            f"{path.stem:<26}{int(r['n']):>4}{int(r['clusters']):>3}{r['total']:>9.4f}"
            f"{ref_s}{ratio}{r['iou']:>7.3f}{stages}"
        )


def _golden_paths(args: argparse.Namespace) -> list[Path]:
    paths = sorted(args.golden.glob("*.npz"))
    if args.cases:
        wanted = {c.strip() for c in args.cases.split(",") if c.strip()}
        paths = [p for p in paths if p.stem in wanted]
        missing = wanted - {p.stem for p in paths}
        if missing:
            raise SystemExit(f"error: golden cases not found in {args.golden}: {sorted(missing)}")
    return paths


def run(args: argparse.Namespace) -> int:
    """Print the two benchmark tables; returns the exit code."""
    if args.gpu:
        from gfsam.bench.gpu import run as run_gpu

        print("\n".join(run_gpu(args)))
        return 0
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    with torch.inference_mode():
        if args.repredict:
            from gfsam.bench.repredict import run as run_repredict

            print("\n".join(run_repredict(args)))
            return 0
        if not args.no_pipeline:
            _print_pipeline(args, pipeline_stages(args))
        if not args.no_golden:
            paths = _golden_paths(args)
            if not paths:
                print(f"error: no golden cases (*.npz) in {args.golden}")
                return 1
            _print_golden(args, paths)
    return 0
