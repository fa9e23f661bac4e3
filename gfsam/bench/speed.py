"""``python -m gfsam benchmark``: where the time goes (no accuracy is measured here).

Part 1 runs the image-level pipeline with RANDOM weights (default tiny encoders) on a synthetic
image pair and reports per-stage medians. Part 2 runs the token-level algorithm (faithful
config) on the golden parity cases, with the recorded SAM masks as the mask function, next to the
official code's time from ``official_timing.csv`` (2 CPU threads, median of 3 after a warm-up).

``--preset fast --against default`` instead compares two presets (their real engines, RANDOM
weights: speed only): a first prediction (target encoding + prediction, the reference encoded
beforehand) and a cold click (the interactive worker's mask-engine pass at its default
`INTERACTIVE_PRECISION` "auto", + one prompt decode) each, ending with the line
``fast preset: <r>x faster first prediction (default <s>s, fast <s>s; sam .., dino ..,
prompts <cap>)``.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from gfsam.bench.synthetic import median_timings, random_pipeline, synthetic_pair
from gfsam.precision import resolve_precision
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
# The encoder stages by role (their timing keys keep the names of the default engines).
DISPLAY_STAGES = ("mask_enc", "feat_enc", *TOKEN_STAGES)
# The interactive worker's default `INTERACTIVE_PRECISION`: the cold click is timed as it runs.
CLICK_PRECISION = "auto"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Benchmark options (the model options come from `gfsam.cli`)."""
    p.add_argument("--repeat", type=int, default=3, help="timed runs per measurement (median)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs first")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (CI machines: 2)")
    p.add_argument(
        "--blas-threads",
        type=int,
        default=1,
        help="numpy's BLAS threads, as the worker's BLAS_THREADS (default 1; 0: numpy's own)",
    )
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
    p.add_argument(
        "--preset",
        help="instead: time this preset's engines (fast, default, quality; tiny for tests)",
    )
    p.add_argument("--against", help="with --preset: the preset it is compared with")
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


def preset_timings(
    args: argparse.Namespace, preset: str
) -> tuple[tuple[str, str], dict[str, float]]:
    """(mask engine, feature engine) and the median seconds of one preset's first prediction
    (stages, ``total``; ``prompts`` decoded, ``max_points``) and cold click (``click_encoder``,
    ``click_decode``, ``click``), RANDOM weights."""
    import time

    from gfsam.bench.synthetic import median_timings
    from gfsam.pipeline import build_pipeline

    torch.manual_seed(0)
    pipe = build_pipeline(preset=preset, random_weights=True, device=args.device)
    ref_img, ref_mask, tgt_img = synthetic_pair()
    ref = pipe.encode_reference(ref_img, ref_mask)
    prompts: list[int] = []

    def once(timings: dict[str, float]) -> None:
        pred = pipe.predict(pipe.encode_target(tgt_img, timings=timings), [ref], timings=timings)
        prompts.append(pred.segmentation.n_points)

    stats = median_timings(once, args.repeat, args.warmup)
    stats["prompts"] = float(prompts[-1])
    stats["max_points"] = float(pipe.config.max_points)
    point = np.array([[FRAME / 3, FRAME / 2]])

    def click(timings: dict[str, float]) -> None:  # the interactive worker's cold click
        start = time.perf_counter()
        emb = pipe.encode_mask_engine(tgt_img, precision=CLICK_PRECISION)
        timings["click_encoder"] = time.perf_counter() - start
        start = time.perf_counter()
        pipe.sam.decode_prompts(emb, point, np.array([1]), multimask=True)
        timings["click_decode"] = time.perf_counter() - start

    clicks = median_timings(click, args.repeat, args.warmup)
    stats |= {"click": clicks["total"], **{k: v for k, v in clicks.items() if k != "total"}}
    stats["click_bf16"] = float(resolve_precision(CLICK_PRECISION, pipe.device) == "bf16")
    return (pipe.sam.spec.name, pipe.dino.spec.name), stats


def compare_presets(args: argparse.Namespace) -> list[str]:
    """The preset comparison's lines (see the module docstring); RANDOM weights."""
    presets = [args.against, args.preset] if args.against else [args.preset]
    engines, results = {}, {}
    for p in presets:  # one pipeline at a time (the previous one is freed on return)
        engines[p], results[p] = preset_timings(args, p)
    lines = [
        f"# presets {' vs '.join(presets)}: device={args.device} threads="
        f"{torch.get_num_threads()} repeat={args.repeat} warmup={args.warmup}",
        "# RANDOM WEIGHTS: speed only; masks, scores and prompt counts are meaningless",
        f"{'preset':<10}{'sam':<20}{'dino':<16}{'cap':>5}{'prompts':>8}"
        + "".join(f"{s[:10]:>11}" for s in (*DISPLAY_STAGES, "total", "click_enc", "click")),
    ]
    for p, r in results.items():
        sam, dino = engines[p]
        stages = "".join(
            f"{r.get(s, 0.0):>11.3f}" for s in (*PIPELINE_STAGES, "total", "click_encoder", "click")
        )
        lines.append(
            f"{p:<10}{sam:<20}{dino:<16}{int(r['max_points']):>5}{int(r['prompts']):>8}{stages}"
        )
    fast = results[args.preset]
    sam, dino = engines[args.preset]
    lines.append(
        f"cold click ({args.preset}, {'bf16' if fast['click_bf16'] else 'fp32'}): "
        f"{fast['click']:.2f}s = {sam} encoder "
        f"{fast['click_encoder']:.2f}s + one decode {fast['click_decode']:.3f}s"
    )
    if args.against:
        base = results[args.against]
        lines.append(
            f"{args.preset} preset: {base['total'] / fast['total']:.1f}x faster first prediction "
            f"({args.against} {base['total']:.1f}s, {args.preset} {fast['total']:.1f}s; "
            f"sam {sam}, dino {dino}, prompts {int(fast['max_points'])})"
        )
    return lines


def run(args: argparse.Namespace) -> int:
    """Print the two benchmark tables; returns the exit code."""
    if args.preset and not args.gpu:
        if torch.device(args.device).type == "cpu":
            torch.set_num_threads(args.threads)
        with torch.inference_mode():
            print("\n".join(compare_presets(args)), flush=True)
        return 0
    if args.gpu:
        from gfsam.bench.gpu import run as run_gpu

        print("\n".join(run_gpu(args)))
        return 0
    if torch.device(args.device).type == "cpu":
        torch.set_num_threads(args.threads)
    # the worker's BLAS_THREADS: numpy's small matmuls off torch's cores (restored on return)
    blas = threadpool_limits(args.blas_threads or None, user_api="blas")
    with blas, torch.inference_mode():
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
