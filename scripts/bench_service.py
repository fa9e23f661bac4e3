"""Service benchmark on localhost: LS-facing latency under load, and the target-encoding cache.

Starts a private redis-server, the fake Label Studio of tests/fakes.py, the API (uvicorn) and one
worker process (`python -m worker.main`, random weights), then:

1. seeds a project so the worker pre-annotates `--tasks` COCO images (a busy batch), and while it
   is busy measures /health, /setup and /webhook latency (p50/p99 over `--calls` calls each);
2. sends a correction (a new shot), which re-predicts every unlabeled task at the new version,
   and prints the per-task job time of the first prediction next to the re-prediction (same
   images: the target encoding comes from the disk cache the second time).

    .venv/bin/python scripts/bench_service.py                       # tiny preset
    .venv/bin/python scripts/bench_service.py --sam sam_vit_b --dino dinov2_vits14 --tasks 6
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from bootstrap import REPO
from PIL import Image
from redis import Redis
from rq.job import Job
from rq.serializers import JSONSerializer

from backend.state.settings import Settings
from backend.state.store import Store
from tests.fakes import TOKEN, FakeLabelStudio, box_mask, brush_region
from tests.service_fixtures import free_port, start_redis, stop_process

COCO = REPO.parent / "shared" / "assets" / "data" / "coco128_seg" / "images"
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Object"/></BrushLabels></View>'
)
SETUP = {"project": "1.1795248910", "schema": CONFIG}


def percentiles(samples: list[float]) -> str:
    ms = sorted(1000 * s for s in samples)
    p99 = ms[min(len(ms) - 1, int(round(0.99 * (len(ms) - 1))))]
    return f"p50 {statistics.median(ms):7.2f} ms   p99 {p99:7.2f} ms   max {ms[-1]:7.2f} ms"


def timed(call: Callable[[], httpx.Response], n: int) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        reply = call()
        out.append(time.perf_counter() - started)
        reply.raise_for_status()
    return out


def wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.1)


def event(ann: dict[str, Any], ls: FakeLabelStudio) -> dict[str, Any]:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1, "label_config": CONFIG},
        "annotation": {k: ann[k] for k in ("id", "task", "updated_at")},
        "task": {"id": ann["task"], "data": ls.tasks[ann["task"]]["data"]},
    }


def job_seconds(conn: Redis, task: int, n: int) -> float:
    job = Job.fetch(f"predict-1-{task}-{n}", connection=conn, serializer=JSONSerializer)
    assert job.started_at is not None and job.ended_at is not None
    return (job.ended_at - job.started_at).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="tiny", help="gfsam preset (ignored with --sam)")
    parser.add_argument("--sam", help="SAM encoder name, random weights (e.g. sam_vit_b)")
    parser.add_argument("--dino", help="DINOv2 encoder name, random weights (e.g. dinov2_vits14)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-points", type=int, default=16, help="GFSAM_MAX_POINTS")
    parser.add_argument("--tasks", type=int, default=12, help="images pre-annotated (batch)")
    parser.add_argument("--calls", type=int, default=200, help="calls per latency figure")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gfsam-bench-"))
    redis, redis_url = start_redis(tmp / "redis")
    ls = FakeLabelStudio().start()
    port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=redis_url,
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=TOKEN,
        DATA_DIR=str(tmp / "data"),
        LOG_LEVEL="WARNING",
        GFSAM_DEVICE=args.device,
        GFSAM_MAX_POINTS=str(args.max_points),
    )
    if args.sam or args.dino:
        env.update(GFSAM_RANDOM_WEIGHTS="1", GFSAM_SAM=args.sam or "", GFSAM_DINO=args.dino or "")
    else:
        env["GFSAM_PRESET"] = args.preset
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "backend.app:create_app",
                "--factory",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            cwd=REPO,
            env=env,
        ),
        subprocess.Popen([sys.executable, "-m", "worker.main"], cwd=REPO, env=env),
    ]
    conn = Redis.from_url(redis_url)
    store = Store(conn, Settings(redis_url=redis_url, _env_file=None))  # type: ignore[call-arg]
    try:
        return run(args, ls, conn, store, f"http://127.0.0.1:{port}")
    finally:
        for proc in procs:
            stop_process(proc, timeout=30)
        ls.stop()
        stop_process(redis)


def run(args: argparse.Namespace, ls: FakeLabelStudio, conn: Redis, store: Store, url: str) -> int:
    client = httpx.Client(base_url=url, timeout=10)
    wait(lambda: _up(client), 60, "the API")
    images = sorted(COCO.glob("*.jpg"))[: args.tasks + 2]
    tasks = [ls.add_task(1, p.read_bytes(), p.name)["id"] for p in images]
    client.post("/setup", json=SETUP).raise_for_status()
    h, w = np.asarray(Image.open(images[0])).shape[:2]
    seed = ls.annotate(
        tasks[0], [brush_region(box_mask(h, w, h // 4, 3 * h // 4, w // 4, 3 * w // 4), "Object")]
    )
    client.post("/webhook", json=event(seed, ls)).raise_for_status()
    wait(lambda: store.progress.counts(1).running > 0, 600, "the worker to start the batch")
    started = time.perf_counter()
    dup = event(seed, ls)
    lat = {
        "GET /health": timed(lambda: client.get("/health"), args.calls),
        "POST /setup": timed(lambda: client.post("/setup", json=SETUP), args.calls),
        "POST /webhook": timed(lambda: client.post("/webhook", json=dup), args.calls),
    }
    busy = store.progress.counts(1)
    print(
        f"latency while the worker is busy (batch of {len(tasks) - 1} tasks; at the end "
        f"{busy.queued} queued, {busy.running} running, {busy.done} done; "
        f"{time.perf_counter() - started:.1f}s of calls):"
    )
    for name, samples in lat.items():
        print(f"  {name:14s} {percentiles(samples)}")
    targets = tasks[2:]
    wait(lambda: len(ls.posts) >= len(tasks) - 1, 3600, "the first batch")
    h1, w1 = np.asarray(Image.open(images[1])).shape[:2]
    fix = ls.annotate(tasks[1], [brush_region(box_mask(h1, w1, 0, h1 // 2, 0, w1 // 2), "Object")])
    client.post("/webhook", json=event(fix, ls)).raise_for_status()
    wait(
        lambda: sum(p["model_version"] == "gfsam-p1-v2" for p in ls.posts) >= len(targets),
        3600,
        "the re-predictions",
    )
    first = [job_seconds(conn, t, 1) for t in targets]
    again = [job_seconds(conn, t, 2) for t in targets]
    stats = store.progress.stats()
    print(
        f"per-task job time over {len(targets)} images (download + encode/cache + predict + "
        "RLE + POST):"
    )
    print(
        f"  first prediction (target encoded):  mean {np.mean(first):.3f} s  "
        f"median {np.median(first):.3f} s"
    )
    print(
        f"  re-prediction after a correction:   mean {np.mean(again):.3f} s  "
        f"median {np.median(again):.3f} s  (target cache hits: "
        f"{stats.get('target_cache_hit', 0)}, target encodes: {stats.get('target_encode', 0)})"
    )
    return 0


def _up(client: httpx.Client) -> bool:
    try:
        return client.get("/health").status_code == 200
    except httpx.HTTPError:
        return False


if __name__ == "__main__":
    sys.exit(main())
