"""Command line: ``python -m gfsam {segment,weights,benchmark,eval} ...``.

Exit codes: 0 success; 1 invalid input, failed download or failed verification; 2 usage
errors and missing model weights (with instructions to get them).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from gfsam.encoders import DEFAULT_DINO, DEFAULT_SAM, SPECS
from gfsam.encoders.weights import (
    WeightsDownloadError,
    WeightsNotFoundError,
    download_weights,
    expected_sha256,
    file_sha256,
    record_sha256,
    resolve_checkpoint,
)
from gfsam.types import GFSAMConfig

EXIT_INPUT, EXIT_NO_WEIGHTS = 1, 2
OVERLAY_RGB = np.array([255, 0, 0], dtype=np.float32)
OVERLAY_ALPHA = 0.5
RANDOM_BANNER = "WARNING: RANDOM WEIGHTS - this mask is MEANINGLESS (smoke test only)"


def _model_dir(arg: Path | None) -> Path:
    return arg or Path(os.environ.get("MODEL_DIR", "models"))


def _official_name(name: str) -> str:
    official = [n for n, s in SPECS.items() if s.url is not None]
    if name not in official:
        raise argparse.ArgumentTypeError(f"unknown encoder {name!r}; choose from {official}")
    return name


def _names(args: argparse.Namespace) -> list[str]:
    if args.preset:
        from gfsam.pipeline import PRESETS

        preset = PRESETS[args.preset]
        return [*args.names, preset.sam, preset.dino]
    return list(args.names) or [DEFAULT_SAM, DEFAULT_DINO]


def _no_weights_message(exc: WeightsNotFoundError, model_dir: Path | None) -> str:
    target = _model_dir(model_dir)
    return (
        f"error: {exc}\n\nGF-SAM needs the official SAM and DINOv2 checkpoints. Get them "
        f"with\n  python -m gfsam weights download --model-dir {target}\n(needs internet), "
        f"or copy the files listed by `python -m gfsam weights verify` into {target}.\n"
        "For a smoke test without weights pass --random-weights (outputs are meaningless)."
    )


def _save_outputs(mask: np.ndarray, target: np.ndarray, out: Path, overlay: Path | None) -> None:
    Image.fromarray(mask.astype(np.uint8) * 255).save(out)
    if overlay is not None:
        tinted = target.astype(np.float32)
        tinted[mask] = (1 - OVERLAY_ALPHA) * tinted[mask] + OVERLAY_ALPHA * OVERLAY_RGB
        Image.fromarray(tinted.round().astype(np.uint8)).save(overlay)


def cmd_segment(args: argparse.Namespace) -> int:
    """Segment one target from K reference (image, mask) pairs and write a PNG mask."""
    from gfsam.image import load_image, load_mask
    from gfsam.pipeline import build_pipeline

    base = GFSAMConfig.faithful() if args.faithful else GFSAMConfig()
    config = dataclasses.replace(base, max_points=args.max_points)
    try:
        pipe = build_pipeline(
            sam=args.sam,
            dino=args.dino,
            preset=args.preset,
            model_dir=args.model_dir,
            device=args.device,
            random_weights=args.random_weights,
            config=config,
        )
    except WeightsNotFoundError as exc:
        print(_no_weights_message(exc, args.model_dir), file=sys.stderr)
        return EXIT_NO_WEIGHTS
    if pipe.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    try:
        refs = [
            pipe.encode_reference(load_image(img), load_mask(msk)) for img, msk in args.reference
        ]
        target = load_image(args.target)
        pred = pipe.predict(target, refs)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    _save_outputs(pred.mask, target, args.out, args.overlay)
    seg = pred.segmentation
    print(
        f"wrote {args.out} ({pred.mask.shape[1]}x{pred.mask.shape[0]}): "
        f"foreground={pred.mask.mean():.3f} score={pred.score:.3f} "
        f"abstained={pred.abstained} fallback={pred.fallback} points={seg.n_points} "
        f"clusters={seg.n_clusters}"
    )
    if pipe.random_weights:
        print(RANDOM_BANNER, file=sys.stderr)
    return 0


def cmd_weights_download(args: argparse.Namespace) -> int:
    """Download official checkpoints (explicit step; needs internet)."""
    try:
        paths = download_weights(_names(args), _model_dir(args.model_dir), SPECS)
    except WeightsDownloadError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_INPUT
    for path in paths:
        print(f"ok {path}")
    return 0


def cmd_weights_verify(args: argparse.Namespace) -> int:
    """Check that each checkpoint exists and matches its published (or recorded) sha256."""
    failed = False
    for name in _names(args):
        spec = SPECS[name]
        try:
            path = resolve_checkpoint(spec, args.model_dir)
        except WeightsNotFoundError as exc:
            print(f"MISSING  {name}: {spec.url}\n{exc}")
            failed = True
            continue
        actual = file_sha256(path)
        expected, source = expected_sha256(spec, path)
        prefix_ok = spec.sha256_prefix is None or actual.startswith(spec.sha256_prefix)
        if not prefix_ok or (expected is not None and actual != expected):
            status = "MISMATCH"
        elif expected is None:
            status = "UNKNOWN"  # nothing published, nothing recorded yet
        else:
            status = "ok"
        note = {"published": "", "recorded": " (against the sha256 recorded at install)"}.get(
            source, f" (none published; record it: python -m gfsam weights record {name})"
        )
        if spec.sha256_prefix is not None:
            note += f" (file-name hash prefix {spec.sha256_prefix}: {'ok' if prefix_ok else 'NO'})"
        failed |= status == "MISMATCH"
        print(f"{status:8s} {name}: {path} sha256={actual}{note}")
    return EXIT_INPUT if failed else 0


def cmd_weights_record(args: argparse.Namespace) -> int:
    """Record the sha256 of installed checkpoints that have no published one (SAM 2.1, DINOv3),
    so that later loads check it (trust on first use)."""
    failed = False
    for name in _names(args):
        spec = SPECS[name]
        try:
            path = resolve_checkpoint(spec, args.model_dir)
        except WeightsNotFoundError as exc:
            print(f"MISSING  {name}: {spec.url}\n{exc}")
            failed = True
            continue
        if spec.sha256 is not None:
            print(f"skip     {name}: a sha256 is published ({spec.sha256})")
            continue
        digest = file_sha256(path)
        if spec.sha256_prefix is not None and not digest.startswith(spec.sha256_prefix):
            print(f"MISMATCH {name}: {path} sha256={digest} (file name says {spec.sha256_prefix})")
            failed = True
            continue
        record_sha256(path, digest)
        print(f"recorded {name}: {path} sha256={digest}")
    return EXIT_INPUT if failed else 0


def cmd_weights_list(args: argparse.Namespace) -> int:
    """List every engine with official weights: file, source URL and checksum source."""
    for name, spec in SPECS.items():
        if spec.url is None:
            continue
        if spec.sha256 is not None:
            check = f"sha256 {spec.sha256[:12]}... (published)"
        elif spec.sha256_prefix is not None:
            check = (
                f"sha256 prefix {spec.sha256_prefix} (file name); full value recorded at install"
            )
        else:
            check = "no sha256 published; recorded at install"
        print(f"{name:24s} {spec.family:7s} {spec.filename}\n{'':33s}{spec.url}\n{'':33s}{check}")
    return 0


def _add_models(p: argparse.ArgumentParser, sam: str | None, dino: str | None) -> None:
    p.add_argument(
        "--sam",
        default=sam,
        choices=[n for n in SPECS if n.startswith("sam")],
        help=f"mask engine (default: {sam or f'the preset, else {DEFAULT_SAM}'})",
    )
    p.add_argument(
        "--dino",
        default=dino,
        choices=[n for n in SPECS if n.startswith("dino")],
        help=f"feature engine (default: the preset's, else {DEFAULT_DINO})"
        if dino is None
        else None,
    )
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0")


def _segment_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("segment", help="segment a target from reference image/mask pairs")
    p.add_argument(
        "--reference",
        nargs=2,
        action="append",
        required=True,
        type=Path,
        metavar=("IMG", "MASK"),
        help="reference image and its mask (repeatable)",
    )
    p.add_argument("--target", required=True, type=Path, metavar="IMG")
    p.add_argument("--out", required=True, type=Path, metavar="MASK.png")
    p.add_argument("--overlay", type=Path, metavar="OVERLAY.png")
    p.add_argument("--model-dir", type=Path, help="checkpoint directory (default $MODEL_DIR)")
    _add_models(p, None, None)
    p.add_argument(
        "--preset",
        choices=["fast", "default", "quality", "tiny", "tiny_sam2"],
        help="engines and prompt cap (GFSAM_PRESET); tiny ones need --random-weights",
    )
    p.add_argument(
        "--faithful",
        action="store_true",
        help="official behaviour, including the one-gate fallback",
    )
    p.add_argument(
        "--max-points", type=int, default=128, help="prompt cap (official 128, for efficiency)"
    )
    p.add_argument(
        "--random-weights",
        action="store_true",
        help="random encoders: smoke test only, the mask is meaningless",
    )
    p.set_defaults(func=cmd_segment)


def _weights_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("weights", help="list, download, verify or record official checkpoints")
    wsub = p.add_subparsers(dest="weights_cmd", required=True)
    wsub.add_parser("list", help=cmd_weights_list.__doc__).set_defaults(func=cmd_weights_list)
    for name, func in (
        ("download", cmd_weights_download),
        ("verify", cmd_weights_verify),
        ("record", cmd_weights_record),
    ):
        w = wsub.add_parser(name, help=func.__doc__)
        w.add_argument("--model-dir", type=Path, help="checkpoint directory (default $MODEL_DIR)")
        w.add_argument(
            "names",
            nargs="*",
            type=_official_name,
            metavar="NAME",
            help=f"encoders (default: {DEFAULT_SAM} {DEFAULT_DINO})",
        )
        w.add_argument(
            "--preset",
            choices=["fast", "default", "quality"],
            help="also the engines of this preset (GFSAM_PRESET)",
        )
        w.set_defaults(func=func)


def _benchmark_parser(sub: argparse._SubParsersAction) -> None:
    from gfsam.bench.speed import add_arguments, run

    p = sub.add_parser("benchmark", help="per-stage timings (random weights) and golden cases")
    _add_models(p, "sam_tiny", "dinov2_tiny")
    add_arguments(p)
    p.set_defaults(func=run)


def _eval_parser(sub: argparse._SubParsersAction) -> None:
    from gfsam.eval.cli import add_eval_parser

    add_eval_parser(sub)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m gfsam", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    _segment_parser(sub)
    _weights_parser(sub)
    _benchmark_parser(sub)
    _eval_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return int(args.func(args))
