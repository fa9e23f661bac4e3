"""Click latency of the interactive lane (issue 9). Random weights: times only, masks meaningless.

    .venv/bin/python scripts/bench_interactive.py [--sam sam_vit_h] [--threads 2] [--clicks 30]
    .venv/bin/python scripts/bench_interactive.py --sam sam2.1_hiera_tiny   # INTERACTIVE_SAM
    # through Label Studio (a running LS + backend.run, an interactive ML backend):
    .venv/bin/python scripts/bench_interactive.py --ls-url http://localhost:8080 --ls-token T \
        --ml-id 1 --task 3 [--redis-url redis://...  (share of clicks without an encoder run)]
    # the same round trip, starting a real Label Studio 1.23.2 (.lsvenv) and backend.run itself
    # (tiny random models, so the figure is LS + HTTP + queue + polling + a tiny decoder; put
    # the warm ViT-H decoder figure of the first command beside it) (issue 17):
    .venv/bin/python scripts/bench_interactive.py --start-ls [--clicks 30]

Warm: SAM prompt decoding + back to natural size + brush RLE (`worker.clicks.edit_rules.refine` and
`worker.labelstudio.brush_rle.masks_to_result`, what a click job runs after its target is in
memory) for a single
point, point + box and 5 points. Cold: the image encoders (SAM embed) plus one click.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import bootstrap  # noqa: F401  (the repository root on sys.path)
import numpy as np


def _pcts(times: list[float]) -> str:
    ms = sorted(1000 * t for t in times)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):7.1f} ms  p95 {p95:7.1f} ms  (n={len(ms)})"


def _time(fn: Callable[[], object], n: int) -> list[float]:
    fn()  # first call pays lazy allocations
    out = []
    for _ in range(n):
        started = time.perf_counter()
        fn()
        out.append(time.perf_counter() - started)
    return out


def local(args: argparse.Namespace) -> None:
    import torch

    from backend.state.prompts import Prompts
    from gfsam.encoders import MaskEngine, build_encoder
    from gfsam.image import frame_to_sam_uint8, to_frame
    from worker.clicks.edit_rules import refine
    from worker.labelstudio.brush_rle import masks_to_result

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    sam = build_encoder(args.sam, checkpoint=None, device="cpu")  # any mask engine
    assert isinstance(sam, MaskEngine)
    h, w = 480, 640
    image = np.random.default_rng(0).integers(0, 255, (h, w, 3), dtype=np.uint8)
    rng = np.random.default_rng(1)

    def click(kind: str, emb: np.ndarray) -> None:
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(5)]
        if kind == "point":
            p = Prompts(label="x", points=pts[:1], positive=[True], width=w, height=h)
        elif kind == "point+box":
            box = (w * 0.2, h * 0.2, w * 0.7, h * 0.8)
            p = Prompts(label="x", points=pts[:1], positive=[True], box=box, width=w, height=h)
        else:
            p = Prompts(
                label="x", points=pts, positive=[True, True, False, True, False], width=w, height=h
            )
        out = refine(sam, emb, p, (h, w))
        masks_to_result({"x": out.mask}, from_name="tag", to_name="image", scores={"x": out.score})

    started = time.perf_counter()
    with torch.inference_mode():
        emb = sam.embed(frame_to_sam_uint8(to_frame(image)))[0].numpy()
    encode_s = time.perf_counter() - started
    first = _time(lambda: click("point", emb), 0) or [0.0]
    started = time.perf_counter()
    click("point", emb)
    print(f"{args.sam} decoder, random weights, {args.threads} CPU threads, image {w}x{h}")
    print(
        f"cold (SAM image encoder + one click): {encode_s + time.perf_counter() - started:.2f} s"
        f"  (encoder {encode_s:.2f} s; the feature encoder a worker also runs is not included)"
    )
    del first
    for kind in ("point", "point+box", "5 points"):
        print(f"warm {kind:10s} {_pcts(_time(lambda k=kind: click(k, emb), args.clicks))}")


def through_ls(args: argparse.Namespace) -> None:
    import requests

    session = requests.Session()
    session.headers["Authorization"] = f"Token {args.ls_token}"
    task = session.get(f"{args.ls_url}/api/tasks/{args.task}/", timeout=30).json()
    size = None
    for kind, regions in (("point", 1), ("5 points", 5)):
        times = []
        for i in range(args.clicks + 1):
            rng = np.random.default_rng(i)
            result = []
            for j in range(regions):
                result.append(
                    {
                        "from_name": "kp",
                        "to_name": "image",
                        "type": "keypointlabels",
                        "original_width": size or 640,
                        "original_height": 480,
                        "is_positive": j % 2 == 0,
                        "value": {
                            "x": float(rng.uniform(5, 95)),
                            "y": float(rng.uniform(5, 95)),
                            "width": 0.5,
                            "keypointlabels": [args.label],
                        },
                    }
                )
            started = time.perf_counter()
            reply = session.post(
                f"{args.ls_url}/api/ml/{args.ml_id}/interactive-annotating",
                json={"task": task["id"], "context": {"result": result}},
                timeout=120,
            ).json()
            if i:  # the first may encode the image
                times.append(time.perf_counter() - started)
            if "errors" in reply:
                print("LS errors:", reply["errors"])
                return
        print(f"via LS interactive-annotating {kind:8s} {_pcts(times)}")
    if args.redis_url:
        from redis import Redis

        stats = {
            k.decode(): int(v)
            for k, v in Redis.from_url(args.redis_url).hgetall("gfsam:stats").items()
        }
        clicks, encoded = stats.get("click", 0), stats.get("click_encoded", 0)
        if clicks:
            print(
                f"clicks without an encoder run: {clicks - encoded}/{clicks} "
                f"({100 * (clicks - encoded) / clicks:.1f} %)  counters: {stats}"
            )


INTERACTIVE_CONFIG = (
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="tag" toName="image"><Label value="Object"/></BrushLabels>'
    '<KeyPointLabels name="kp" toName="image" smart="true"><Label value="Object"/>'
    "</KeyPointLabels></View>"
)


def with_real_ls(args: argparse.Namespace) -> None:
    """Start Label Studio and `python -m backend.run` (tiny preset), then `through_ls`."""
    import tempfile
    from pathlib import Path

    from tests.e2e_helpers import ELEPHANTS, backend_env, running_backend
    from tests.lsserver import free_port, start_label_studio

    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        (base / "ls").mkdir()
        (base / "backend").mkdir()
        with start_label_studio(base / "ls") as ls:
            project = ls.create_project(INTERACTIVE_CONFIG, title="bench-interactive")["id"]
            ls.import_images(project, sorted(ELEPHANTS.glob("*.jpg"))[:1])
            task = ls.list_tasks(project)[0]["id"]
            port = free_port()
            env = backend_env(ls, port, base / "backend" / "data")
            with running_backend(env, port, base / "backend") as backend:
                ml = ls.connect_ml_backend(project, backend.url, is_interactive=True)
                args.ls_url, args.ls_token, args.ml_id, args.task = ls.url, ls.token, ml["id"], task
                print(
                    f"real Label Studio (cold start {ls.startup_s:.0f}s) + backend.run, tiny "
                    "random models (RANDOM WEIGHTS: times only)"
                )
                through_ls(args)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sam", default="sam_vit_h")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clicks", type=int, default=30)
    parser.add_argument("--ls-url")
    parser.add_argument("--ls-token")
    parser.add_argument("--ml-id", type=int)
    parser.add_argument("--task", type=int)
    parser.add_argument("--label", default="Object")
    parser.add_argument("--redis-url")
    parser.add_argument(
        "--start-ls", action="store_true", help="start a real LS and backend.run (tiny models)"
    )
    args = parser.parse_args()
    if args.start_ls:
        with_real_ls(args)
    elif args.ls_url:
        through_ls(args)
    else:
        local(args)


if __name__ == "__main__":
    main()
