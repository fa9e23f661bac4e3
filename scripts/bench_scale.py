"""Scale simulation: a 10,000-task project, the look-ahead + feed policy next to today's
re-predict-everything policy (`LOOKAHEAD_TASKS` unset), measured side by side in one run.

A private redis-server, the fake Label Studio of tests/fakes.py (in memory, counts requests),
the API in-process (TestClient) and the worker's jobs run in-process with the null model of
tests/fakes.py (FakePipeline: no compute, real RLE, real POSTs to the fake LS). Per policy:

- sync time: the first sync of an annotated project (lists the tasks, applies the seed,
  queues pre-annotation), and Redis memory per task right after it;
- Redis memory at steady state (issue 17): per task once the next 50 carry the newest
  version, with the predictions stored (their number printed), and per stored prediction;
- two corrections in a row (an annotator fixes two tasks while pre-annotation runs): Label
  Studio requests and wall time until the next 50 unlabeled tasks in LS's order carry the
  newest version (the worker runs between the checks, as a real one would).

Every task has its own image (issue 17: one shared image let every cache hit), small ones
(64 x 48, seeded noise): what a prediction weighs in Redis grows with its RLE, i.e. with the
image size and the mask's shape, which this simulation does not vary.

    .venv/bin/python scripts/bench_scale.py [--tasks 10000]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bootstrap  # noqa: F401  (the repository root on sys.path)
from fastapi.testclient import TestClient
from redis import Redis

from backend.app import create_app
from backend.state.settings import Settings
from tests.fakes import FAKE_SETTINGS, TOKEN, FakeLabelStudio, box_mask, brush_region, fake_model
from tests.project_helpers import event, fixture, png_bytes
from tests.service_fixtures import (
    make_jobs,
    run_worker,
    start_redis,
    stop_process,
)
from worker import runtime
from worker import tasks as _jobs  # noqa: F401  (imports torch & co before any timing)

H, W = 48, 64
NEXT = 50
LIMIT_S = 600.0  # a policy that has not served the next 50 by then is reported as > this


class CountingLS(FakeLabelStudio):
    """The fake LS, counting every request it answers."""

    def __init__(self) -> None:
        super().__init__()
        self.requests = 0

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> Any:
        self.requests += 1
        return super().handle(method, path, query, body)


def newest_reached(ls: FakeLabelStudio, tasks: list[int], version: str) -> bool:
    with ls.lock:
        return all(any(p["model_version"] == version for p in ls.predictions_for(t)) for t in tasks)


def redis_bytes(conn: Redis) -> int:
    """Bytes held by every key (MEMORY USAGE), which the allocator's totals blur."""
    return sum(conn.memory_usage(name) or 0 for name in conn.scan_iter(count=1000))


def run_until(conn: Redis, settings: Settings, done: Callable[[], bool], limit_s: float) -> float:
    """Run worker jobs (in-process, 5 at a time) until `done()`; returns the wall time."""
    started = time.perf_counter()
    while not done():
        if time.perf_counter() - started > limit_s:
            return float("inf")  # not reached: reported as "> limit"
        run_worker(conn, settings, max_jobs=5)
    return time.perf_counter() - started


def correct(client: TestClient, ls: FakeLabelStudio, task: int, size: int) -> None:
    ann = ls.annotate(task, [brush_region(box_mask(H, W, 0, size, 0, size), "Object")])
    body = event("ANNOTATION_CREATED", ann, ls)
    assert client.post("/webhook", json=body).status_code == 200


def simulate(n_tasks: int, lookahead: int | None, redis_url: str, tmp: Path) -> dict[str, float]:
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    ls = CountingLS().start()
    settings = Settings(
        redis_url=redis_url,
        label_studio_url=ls.url,
        label_studio_api_key=TOKEN,
        data_dir=tmp / f"data-{lookahead}",
        refit_debounce_s=0.0,  # each correction its own version: the worst case for the queue
        lookahead_tasks=lookahead,
        inline_verify_delay_s=0,
        **FAKE_SETTINGS,  # type: ignore[arg-type]
        _env_file=None,  # type: ignore[call-arg]
    )
    runtime.install(settings, fake_model())
    tasks = [ls.add_task(1, png_bytes(W, H, seed=1 + i))["id"] for i in range(n_tasks)]
    ls.annotate(tasks[0], [brush_region(box_mask(H, W, 10, 30, 20, 50), "Object")])
    out: dict[str, float] = {}
    with TestClient(create_app(settings)) as client:
        started = time.perf_counter()
        assert client.post("/setup", json=fixture("setup.json")).status_code == 200
        run_worker(conn, settings, max_jobs=1)  # the sync: seed applied, pre-annotation queued
        out["sync_s"] = time.perf_counter() - started
        out["redis_bytes_per_task"] = redis_bytes(conn) / n_tasks
        run_worker(conn, settings, max_jobs=20)  # pre-annotation under way
        ls.requests = 0
        correct(client, ls, tasks[1], 40)
        correct(client, ls, tasks[2], 30)  # a second correction right after: v3
        unlabeled = [t for t in tasks[3:]][:NEXT]
        out["next50_s"] = run_until(
            conn, settings, lambda: newest_reached(ls, unlabeled, "gfsam-p1-v3"), LIMIT_S
        )
        out["ls_requests"] = ls.requests
        stored = sum(1 for _ in conn.scan_iter(match="gfsam:pred:*", count=1000))
        held = redis_bytes(conn)
        out["predictions_stored"] = stored
        out["redis_bytes_per_task_steady"] = held / n_tasks
        out["redis_bytes_per_prediction"] = (held - out["redis_bytes_per_task"] * n_tasks) / max(
            stored, 1
        )
        jobs = make_jobs(conn, settings)
        out["jobs_waiting"] = sum(q.count for q in jobs.queues)
    ls.stop()
    runtime.reset()
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tasks", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        proc, url = start_redis(Path(tmp) / "redis")
        try:
            new = simulate(args.tasks, 50, url, Path(tmp))
            old = simulate(args.tasks, None, url, Path(tmp))
        finally:
            stop_process(proc)
    rows = [
        ("first sync of the annotated project", "sync_s", "s"),
        ("Redis memory per task after it", "redis_bytes_per_task", "B"),
        ("predictions stored at steady state (next 50 served)", "predictions_stored", ""),
        ("Redis memory per task at steady state", "redis_bytes_per_task_steady", "B"),
        ("Redis memory per stored prediction (growth / count)", "redis_bytes_per_prediction", "B"),
        ("LS requests for two corrections until the next 50", "ls_requests", ""),
        ("time until the next 50 tasks carry the newest version", "next50_s", "s"),
        ("predict jobs still waiting in Redis then", "jobs_waiting", ""),
    ]
    print(
        f"scale simulation: {args.tasks} tasks, each its own {W}x{H} image, null model "
        "(FakePipeline), fake LS, real Redis"
    )
    print(f"{'':55s} {'look-ahead 50':>14s} {'everything':>12s} {'ratio':>7s}")
    for name, key, unit in rows:
        a, b = new[key], old[key]
        ratio = (
            "    -" if not a else f">{LIMIT_S / a:5.1f}x" if b == float("inf") else f"{b / a:6.1f}x"
        )
        shown_b = f">{LIMIT_S:9.0f}" if b == float("inf") else f"{b:10.2f}"
        print(f"{name:55s} {a:12.2f}{unit:>2s} {shown_b}{unit:>2s} {ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
