"""``python -m gfsam benchmark --gpu --device cuda``: pre-annotation throughput, fp32 vs bf16.

For each precision: `encode_targets` in batches of ``--encode-batch`` images, then
`predict_labels` (one label, one shot, all prompts of the label in one decoder call) per image.
Prints images/s, per-stage seconds per image, peak GPU memory, and the agreement (mask IoU)
between the fp32 and bf16 results. RANDOM weights: throughput is representative (same FLOPs;
the prompt count per image is printed because it drives the decoder cost), the agreement is not.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np
import torch

from gfsam.bench.synthetic import synthetic_pair
from gfsam.encodings import Reference
from gfsam.pipeline import GFSAM, build_pipeline
from gfsam.types import GFSAMConfig

STAGES = ("sam_encoder", "dinov2_encoder", "point_selection", "mask_decoding", "gates", "merge")
WARMUP_IMAGES = 2


def _images(n: int) -> list[np.ndarray]:
    """n synthetic 480x640 targets: the benchmark pair's target, shifted (uint8 RGB)."""

    _, _, target = synthetic_pair()
    return [np.roll(target, 17 * i, axis=1) for i in range(n)]


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def _pass(
    pipe: GFSAM, ref: Reference, images: list[np.ndarray], batch: int
) -> tuple[float, dict[str, float], list[np.ndarray], int]:
    """Wall seconds, stage seconds, 1024-frame masks and prompts of one pre-annotation pass."""
    timings: dict[str, float] = {}
    masks, prompts = [], 0
    torch.cuda.synchronize(pipe.device)
    start = time.perf_counter()
    for i in range(0, len(images), batch):
        for target in pipe.encode_targets(images[i : i + batch], timings=timings):
            pred = pipe.predict_labels(target, {"object": [ref]}, timings=timings)["object"]
            masks.append(pred.segmentation.mask)
            prompts += pred.segmentation.n_points
    torch.cuda.synchronize(pipe.device)
    return time.perf_counter() - start, timings, masks, prompts


def _measure(pipe: GFSAM, images: list[np.ndarray], args: argparse.Namespace) -> dict[str, Any]:

    ref_img, ref_mask, _ = synthetic_pair()
    ref = pipe.encode_reference(ref_img, ref_mask)
    _pass(pipe, ref, images[:WARMUP_IMAGES], args.encode_batch)  # cuDNN autotune, allocator
    torch.cuda.reset_peak_memory_stats(pipe.device)
    wall, timings, masks, prompts = _pass(pipe, ref, images, args.encode_batch)
    n = len(images)
    return {
        "ips": n / wall,
        "stages": {k: timings.get(k, 0.0) / n for k in STAGES},
        "peak_gib": torch.cuda.max_memory_allocated(pipe.device) / 2**30,
        "masks": masks,
        "prompts": prompts / n,
    }


def _decoder_agreement(pipes: dict[str, GFSAM], images: list[np.ndarray]) -> float:
    """Mean per-prompt mask IoU, fp32 vs bf16 encoder + decoder, on the same 128 prompts."""
    xy = np.stack(np.meshgrid(np.arange(16, 1024, 86), np.arange(16, 1024, 86)), -1)
    xy = xy.reshape(-1, 2)[:128]  # (P, 2) a spread of prompt pixels
    ious = []
    for image in images[:4]:
        out = {}
        for name, pipe in pipes.items():
            emb = torch.from_numpy(pipe.encode_target(image).embedding).to(pipe.device)
            out[name] = pipe.sam.decode_points(emb, xy, len(xy), precision=pipe.precision)
        a, b = out["fp32"].cpu().numpy(), out["bf16"].cpu().numpy()
        ious += [_iou(a[i], b[i]) for i in range(len(xy))]
    return float(np.mean(ious))


def _report(
    args: argparse.Namespace, results: dict[str, dict[str, Any]], decoder_iou: float
) -> list[str]:
    name = torch.cuda.get_device_name(torch.device(args.device))
    lines = [
        f"# gpu benchmark: preset={args.preset or '-'} sam={args.sam} dino={args.dino} "
        f"device={args.device} ({name}), "
        f"images={args.images}, encode batch={args.encode_batch}, "
        f"max_points={args.max_points} (one decoder call per label)",
        "# RANDOM WEIGHTS: throughput and memory are representative; IoUs are not accuracy",
        f"{'precision':<10}{'images/s':>10}{'peak_GiB':>10}{'prompts':>9}"
        + "".join(f"{s[:12]:>13}" for s in STAGES),
    ]
    for prec, r in results.items():
        stages = "".join(f"{r['stages'][s]:>13.4f}" for s in STAGES)
        lines.append(
            f"{prec:<10}{r['ips']:>10.2f}{r['peak_gib']:>10.2f}{r['prompts']:>9.1f}{stages}"
        )
    ious = [_iou(a, b) for a, b in zip(*(r["masks"] for r in results.values()), strict=True)]
    speed = results["bf16"]["ips"] / results["fp32"]["ips"]
    return lines + [
        f"fp32 vs bf16 final mask IoU: mean {np.mean(ious):.4f}, min {np.min(ious):.4f}",
        f"fp32 vs bf16 per-prompt SAM mask IoU (same prompts): mean {decoder_iou:.4f}",
        f"gpu throughput: fp32 {results['fp32']['ips']:.2f} images/s, "
        f"bf16 {results['bf16']['ips']:.2f} images/s ({speed:.2f}x)",
    ]


def run(args: argparse.Namespace) -> list[str]:
    """Measure both precisions on CUDA; returns the report lines.

    Raises:
        SystemExit: no CUDA device (exit status 1, message on stderr; nothing measured).
    """
    device = torch.device(args.device)
    if device.type != "cuda" or not torch.cuda.is_available():
        raise SystemExit(
            f"error: the GPU benchmark needs CUDA: pass --device cuda[:N] on a machine with a "
            f"CUDA GPU (got --device {args.device}; torch.cuda.is_available() = "
            f"{torch.cuda.is_available()}). Nothing was measured."
        )
    cap = args.max_points
    if args.preset:  # the preset's engines and prompt cap (--sam / --dino ignored)
        from gfsam.pipeline import PRESETS

        cap = PRESETS[args.preset].max_points or cap
    config = GFSAMConfig(max_points=cap, prompt_batch=cap)
    engines = {} if args.preset else {"sam": args.sam, "dino": args.dino}
    fp32 = build_pipeline(
        **engines, preset=args.preset, device=device, random_weights=True, config=config
    )
    args.sam, args.dino, args.max_points = fp32.sam.spec.name, fp32.dino.spec.name, cap
    bf16 = GFSAM(fp32.sam, fp32.dino, config, device=device, precision="bf16")
    pipes = {"fp32": fp32, "bf16": bf16}  # the same encoder modules, two precisions
    images = _images(args.images)
    with torch.inference_mode():
        results = {name: _measure(pipe, images, args) for name, pipe in pipes.items()}
        decoder_iou = _decoder_agreement(pipes, images)
    return _report(args, results, decoder_iou)
