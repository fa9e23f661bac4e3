"""``python -m gfsam eval {fss,project,replay,find-all,draw}``: argument parsing and dispatch.

Contract (other checks call it; keep flags and JSON keys): ``python -m gfsam eval project
--data DIR --encoders oracle --oracle-noise S --oracle-confuse R --seen 1,3,5 --shots K
--assign split [--discover] [--discover-baseline] --seed N --json OUT``. Issue 17 added
``--oracle-class-cos C --oracle-bg-share B --oracle-sam-error P``, the assign modes
``label-gate`` and ``present``, ``--discover-after MODE`` and ``--split tune|report|all`` (the
HSNet split file moved to ``--split-file``).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path
from typing import Any

import torch

from gfsam.eval.data import (
    HALVES,
    Dataset,
    read_coco20i,
    read_fss1000,
    read_label_folder,
    read_pascal5i,
    select_half,
)
from gfsam.eval.models import EvalModel, OracleModel, RealModel
from gfsam.eval.oracle import OracleParams
from gfsam.eval.report import Output, plot_curve, write_json
from gfsam.find_all import FindAllParams
from gfsam.geometry import GeometryParams
from gfsam.shots import ShotPolicy

EXIT_INPUT, EXIT_USAGE = 1, 2
LAYOUTS = ("folder", "fss1000", "coco20i", "pascal5i")


def _ids(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class ids, got {text!r}"
        ) from exc


ASSIGNS = ("argmax", "label-gate", "split", "present")


def _assigns(text: str) -> list[str]:
    modes = [x.strip() for x in text.split(",") if x.strip()]
    bad = [m for m in modes if m not in ASSIGNS]
    if bad or not modes:
        raise argparse.ArgumentTypeError(
            f"--assign takes {', '.join(ASSIGNS)} (comma-separated), got {text!r}"
        )
    return modes


def _replay_assigns(text: str) -> list[str]:
    modes = _assigns(text)
    if modes[0] not in ("argmax", "split"):
        raise argparse.ArgumentTypeError(f"replay assigns with argmax or split, got {text!r}")
    return modes


def load_dataset(args: argparse.Namespace) -> Dataset:
    """The dataset named by ``--data``, ``--layout``, ``--fold`` and ``--split-file``, halved
    by ``--split`` (`gfsam.eval.data.select_half`)."""
    if args.layout == "folder":
        ds = read_label_folder(args.data)
    elif args.layout == "fss1000":
        ds = read_fss1000(args.data, args.split_file)
    elif args.split_file is None:
        raise ValueError(f"--layout {args.layout} needs --split-file (HSNet fold file or TSV)")
    else:
        reader = read_coco20i if args.layout == "coco20i" else read_pascal5i
        ds = reader(args.data, args.fold, args.split_file)
    return select_half(ds, args.split)


def oracle_params(args: argparse.Namespace) -> OracleParams:
    """The oracle knobs of the command line (`gfsam.eval.oracle`: the cosines they give)."""
    return OracleParams(
        sigma=args.oracle_noise,
        rho=args.oracle_confuse,
        seed=args.seed,
        class_cos=args.oracle_class_cos,
        bg_share=args.oracle_bg_share,
        sam_error=args.oracle_sam_error,
    )


def build_model(args: argparse.Namespace) -> EvalModel:
    """Oracle or real encoders; real random weights only with ``--random-weights``."""
    if args.encoders == "oracle":
        return OracleModel(oracle_params(args))
    from gfsam.pipeline import build_pipeline

    pipe = build_pipeline(
        sam=args.sam,
        dino=args.dino,
        model_dir=args.model_dir,
        device=args.device,
        random_weights=args.random_weights,
    )
    return RealModel(pipe)


def cmd_eval(args: argparse.Namespace) -> int:
    """Run one protocol, print its table, write ``--json`` / ``--plot``."""
    from gfsam.encoders.weights import WeightsNotFoundError

    torch.set_num_threads(args.threads)
    try:
        ds = load_dataset(args)
        model = build_model(args)
    except WeightsNotFoundError as exc:
        sys.stderr.write(f"error: {exc}\npass --random-weights for a (meaningless) smoke run\n")
        return EXIT_USAGE
    except (ValueError, FileNotFoundError) as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_INPUT
    out = Output(model.note)
    if isinstance(model, OracleModel):
        out.line(model.dino.params.describe())
    result = _run(args, ds, model, out)
    result["encoders"] = args.encoders
    result["split"] = args.split
    if isinstance(model, OracleModel):
        result["oracle"] = dataclasses.asdict(model.dino.params)
    if args.json is not None:
        write_json(args.json, result, model.note)
        out.line(f"wrote {args.json}")
    if args.plot is not None and "curve" in result:
        plot_curve(args.plot, result["curve"], "replay: mean IoU on unannotated images", model.note)
        out.line(f"wrote {args.plot}")
    return 0


def cmd_draw(args: argparse.Namespace) -> int:
    """Write a synthetic look-alike folder (`gfsam.eval.synthetic`)."""
    from gfsam.eval.synthetic import SyntheticSpec, draw_dataset

    try:
        spec = SyntheticSpec(args.images, args.pairs, pair_share=args.pair_share, seed=args.seed)
    except ValueError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return EXIT_INPUT
    names = draw_dataset(args.out, spec)
    sys.stdout.write(
        f"wrote {len(names)} images to {args.out} (odd class = seen, even = look-alike)\n"
    )
    return 0


def _run(args: argparse.Namespace, ds: Dataset, model: EvalModel, out: Output) -> dict[str, Any]:
    if args.protocol == "fss":
        from gfsam.eval.fss import run_fss

        return run_fss(ds, model, out, shots=args.shots, episodes=args.episodes, seed=args.seed)
    if args.protocol == "project":
        from gfsam.eval.project import run_project

        return run_project(
            ds,
            model,
            out,
            seen=args.seen or sorted(ds.by_class()),
            shots=args.shots,
            seed=args.seed,
            assigns=args.assign,
            discover=args.discover or args.discover_baseline,
            discover_baseline=args.discover_baseline,
            discover_after=args.discover_after,
            limit=args.limit,
            geometry=GeometryParams() if args.geometry else None,
        )
    if args.protocol == "find-all":
        from gfsam.eval.find_all import run_find_all

        params = FindAllParams(
            seed_ratio=args.seed_ratio, keep_ratio=args.seed_ratio, max_decodes=args.max_decodes
        )
        return run_find_all(ds, model, out, limit=args.limit, params=params)
    from gfsam.eval.replay import run_replay

    return run_replay(
        ds,
        model,
        out,
        classes=args.seen,
        limit=args.limit or 16,
        policy=ShotPolicy(max_shots=args.shots),
        assign=args.assign[0],
        calibrate=args.calibrate,
        calibrate_every=args.calibrate_every,
        calibrate_tasks=args.calibrate_tasks,
        calibrate_modes=args.calibrate_modes == "on",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, required=True, metavar="DIR")
    p.add_argument("--layout", choices=LAYOUTS, default="folder", help="dataset layout")
    p.add_argument("--fold", type=int, default=0, help="COCO-20i / PASCAL-5i fold")
    p.add_argument(
        "--split-file", type=Path, help="HSNet split file (fold pkl/txt, fss test.txt) or TSV"
    )
    p.add_argument(
        "--split",
        choices=HALVES,
        default="all",
        help="half of the images by a fixed hash of their ids: tune constants on 'tune', "
        "report on 'report'",
    )
    p.add_argument("--encoders", choices=("oracle", "real"), default="oracle")
    p.add_argument("--oracle-noise", type=float, default=0.0, metavar="SIGMA")
    p.add_argument(
        "--oracle-confuse",
        type=float,
        default=0.0,
        metavar="R",
        help="even classes look like c - 1: cosine about R / sqrt(1 + R^2) (0.6 -> 0.51)",
    )
    p.add_argument(
        "--oracle-class-cos",
        type=float,
        default=1.0,
        metavar="C",
        help="expected cosine between two instances of one class (1.0: all identical)",
    )
    p.add_argument(
        "--oracle-bg-share",
        type=float,
        default=0.0,
        metavar="B",
        help="probability that a background component is a shared stuff identity",
    )
    p.add_argument(
        "--oracle-sam-error",
        type=float,
        default=0.0,
        metavar="P",
        help="probability that a SAM decode returns a part, a merge or a bleed",
    )
    p.add_argument("--sam", default="sam_vit_h")
    p.add_argument("--dino", default="dinov2_vitl14")
    p.add_argument("--device", default="cpu")
    p.add_argument("--model-dir", type=Path)
    p.add_argument("--random-weights", action="store_true", help="numbers become MEANINGLESS")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shots", type=int, default=1, metavar="K")
    p.add_argument("--seen", type=_ids, metavar="IDS", help="class ids, comma-separated")
    p.add_argument("--limit", type=int, help="at most this many targets (replay: images)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument(
        "--geometry",
        action="store_true",
        help="project: also score the first --assign with clean geometry (defects per 100 "
        "regions before/after, its IoU as '<mode>+clean')",
    )
    p.add_argument("--json", type=Path, metavar="OUT")
    p.add_argument("--plot", type=Path, metavar="OUT.png")
    p.set_defaults(func=cmd_eval)


def add_eval_parser(sub: Any) -> None:
    """Register ``eval`` and its protocols on the top-level subparsers."""
    p = sub.add_parser("eval", help="measure quality: fss, project, replay (oracle or real)")
    psub = p.add_subparsers(dest="protocol", required=True)
    fss = psub.add_parser("fss", help="1-way K-shot episodes (HSNet sampling)")
    _common(fss)
    fss.add_argument("--episodes", type=int, default=1000)
    proj = psub.add_parser("project", help="multi-label project: seen mIoU, contamination")
    _common(proj)
    proj.add_argument(
        "--assign",
        type=_assigns,
        default=["argmax"],
        metavar="MODES",
        help="comma-separated: argmax, label-gate, split, present (an oracle-only upper "
        "bound: argmax over the labels truly in the image); 'none' is always scored",
    )
    proj.add_argument(
        "--discover", action="store_true", help="discover unlabelled objects (recall, precision)"
    )
    proj.add_argument(
        "--discover-baseline",
        action="store_true",
        help="also discover without the 'unannotated only' restriction (implies --discover)",
    )
    proj.add_argument(
        "--discover-after",
        choices=ASSIGNS,
        default="split",
        metavar="MODE",
        help="the assignment discovery runs after (default split)",
    )
    draw = psub.add_parser(
        "draw", help="write a synthetic label-map folder: seen objects beside look-alikes"
    )
    draw.add_argument("--out", type=Path, required=True, metavar="DIR")
    draw.add_argument("--images", type=int, default=60)
    draw.add_argument(
        "--pairs", type=int, default=3, help="class pairs (odd seen, even look-alike)"
    )
    draw.add_argument("--pair-share", type=float, default=0.4, metavar="P")
    draw.add_argument("--seed", type=int, default=0)
    draw.set_defaults(func=cmd_draw)
    fa = psub.add_parser(
        "find-all", help='"find all like this" from one click: instance recall, decodes'
    )
    _common(fa)
    fa.add_argument(
        "--seed-ratio",
        type=float,
        default=FindAllParams().seed_ratio,
        metavar="R",
        help="cells seed a region from this share of the way to the clicked object's level "
        "(the mask gate uses the same share)",
    )
    fa.add_argument("--max-decodes", type=int, default=FindAllParams().max_decodes, metavar="N")
    rep = psub.add_parser("replay", help="the correction loop under the backend's shot policy")
    _common(rep)
    rep.add_argument("--assign", type=_replay_assigns, default=["split"], metavar="argmax|split")
    rep.set_defaults(shots=ShotPolicy().max_shots)  # replay: --shots is the shot cap K (5)
    rep.add_argument(
        "--calibrate",
        action="store_true",
        help="replay the backend's self-tuning (issue 19): thresholds and scores chosen from the "
        "images annotated so far, measured on the rest",
    )
    rep.add_argument("--calibrate-every", type=int, default=5, metavar="N", help="checkpoints")
    rep.add_argument(
        "--calibrate-tasks",
        type=int,
        default=20,
        metavar="N",
        help="tune on the N most recent annotated images (the worker's CALIBRATE_TASKS)",
    )
    rep.add_argument(
        "--calibrate-modes",
        choices=["on", "off"],
        default="on",
        help="per class, label-gate and argmax compete with split's offsets (CALIBRATE_MODES)",
    )
