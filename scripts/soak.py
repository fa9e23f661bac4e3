"""Soak test (issues 7, 22; not a unit test): tasks through real processes while things break.

Starts a private redis-server with appendonly, the in-memory fake Label Studio of
tests/fakes.py (it serves the project config, the tasks and their images), the API under uvicorn,
one worker (`python -m worker.main`, `GFSAM_PRESET=tiny`, few points) and one interactive worker
(`python -m worker.main --interactive`). A seed annotation makes version v1; the worker
pre-annotates the other `--tasks` tasks and posts them through the LS API, while
`--predict-threads` callers send LS-style /predict requests for random tasks (their inline
replies are stored in the fake LS as Label Studio would) and a separate loop measures /health.
Only 127.0.0.1 is ever contacted. During the run, at fixed shares of the posted predictions:

1. the worker is SIGKILLed in the middle of a job and a replacement started;
2. Redis is stopped while the worker is in the middle of a job (its image download held by the
   fake LS), kept down `--redis-down-s` seconds and started again (same port and data
   directory: the AOF survives); the job RQ could not finish is stranded under the live
   worker and must be requeued (issue 22): its recovery time is measured;
3. `--clickers` (50) concurrent smart-tool clickers send clicks for `--click-s` seconds; half-way
   the interactive worker is SIGKILLed and a replacement started (the lane must be free again
   within seconds, clicks whose callers gave up never run again);
4. the fake LS answers 503 to everything for `--ls-down-s` seconds (60).

At the end it prints predictions lost (tasks without a prediction at the final version) and
duplicated (tasks with more than one prediction of one version), goal 0 / 0, the recovery time
of each fault, the clicks by outcome with their latency, and /health p50/p99 under load and
under the click load. Bounded: `--timeout-s` in total (then it prints what it has and exits 2);
exit 1 when something was lost or duplicated.

    .venv/bin/python scripts/soak.py                 # 100 tasks, tiny preset, 4 points
    .venv/bin/python scripts/soak.py --tasks 20 --ls-down-s 20 --timeout-s 600
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from bootstrap import REPO
from redis import Redis
from rq import Queue
from rq.registry import ScheduledJobRegistry, StartedJobRegistry
from rq.serializers import JSONSerializer

from tests.fakes import TOKEN, FakeLabelStudio, box_mask, brush_region, png_bytes
from tests.service_fixtures import free_port, start_redis, stop_process

P = 1
CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    '<Label value="Object"/></BrushLabels></View>'
)
SETUP = {"project": f"{P}.1795248910", "schema": CONFIG}
QUEUES = ("gfsam-high", "gfsam-batch", "gfsam-background")
SIZE = (96, 72)  # image width, height: download and RLE are not what this measures
INTERACTIVE = "gfsam-interactive"


class SoakTimeout(Exception):
    """The soak ran past --timeout-s."""


@dataclass
class Soak:
    """Processes and measurements of one run."""

    args: argparse.Namespace
    tmp: Path
    ls: FakeLabelStudio
    env: dict[str, str]
    api_url: str
    redis_port: int
    deadline: float
    redis: subprocess.Popen | None = None
    api: subprocess.Popen | None = None
    workers: list[subprocess.Popen] = field(default_factory=list)
    interactive: list[subprocess.Popen] = field(default_factory=list)
    clicks: list[tuple[float, float, str]] = field(default_factory=list)  # (t, seconds, outcome)
    click_window: tuple[float, float] | None = None
    health: list[tuple[float, float, int]] = field(default_factory=list)  # (t, seconds, status)
    predict_calls: Counter[str] = field(default_factory=Counter)
    recovery: dict[str, str] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)
    tasks: list[int] = field(default_factory=list)
    started: float = field(default_factory=time.time)
    worker_lock: threading.Lock = field(default_factory=threading.Lock)
    unplanned: list[str] = field(default_factory=list)  # workers that died unasked
    closing: threading.Event = field(default_factory=threading.Event)

    def elapsed(self) -> float:
        """Seconds since the soak started."""
        return time.time() - self.started

    # ------------------------------------------------------------------ processes

    def start_redis(self) -> None:
        self.redis, _ = start_redis(self.tmp / "redis", appendonly=True, port=self.redis_port)

    def start_worker(self) -> subprocess.Popen:
        log = open(self.tmp / f"worker-{len(self.workers)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.main"], cwd=REPO, env=self.env, stdout=log, stderr=log
        )
        self.workers.append(proc)
        return proc

    def start_interactive(self) -> subprocess.Popen:
        log = open(self.tmp / f"interactive-{len(self.interactive)}.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "worker.main", "--interactive"]
        proc = subprocess.Popen(cmd, cwd=REPO, env=self.env, stdout=log, stderr=log)
        self.interactive.append(proc)
        return proc

    def start_api(self) -> None:
        port = self.api_url.rsplit(":", 1)[1]
        log = open(self.tmp / "api.log", "wb")  # noqa: SIM115
        cmd = [sys.executable, "-m", "uvicorn", "backend.app:create_app", "--factory"]
        self.api = subprocess.Popen(
            [*cmd, "--port", port, "--log-level", "warning"],
            cwd=REPO,
            env=self.env,
            stdout=log,
            stderr=log,
        )

    def watch_workers(self) -> None:
        """Restart a worker that died outside the planned kill (e.g. the OOM killer of a shared
        machine), as `backend.run` would; log progress every minute."""
        last_log = time.time()
        while not self.closing.wait(0.5):
            with self.worker_lock:
                for procs, start in (
                    (self.workers, self.start_worker),
                    (self.interactive, self.start_interactive),
                ):
                    proc = procs[-1]
                    if proc.poll() is not None:
                        self.unplanned.append(f"{self.elapsed():.0f}s rc={proc.returncode}")
                        print(
                            f"[{self.elapsed():6.1f}s] worker died (rc {proc.returncode}): "
                            "replacement started",
                            flush=True,
                        )
                        start()
            if time.time() - last_log > 60:
                last_log = time.time()
                print(f"[{self.elapsed():6.1f}s] {self.posted()} predictions in LS", flush=True)

    def close(self) -> None:
        self.stop.set()
        self.closing.set()
        time.sleep(1)  # the watcher sees `closing` before the workers are stopped
        for proc in [*self.workers, *self.interactive, self.api]:
            if proc is not None:
                stop_process(proc, timeout=15)
        self.ls.stop()
        if self.redis is not None:
            stop_process(self.redis)

    # ------------------------------------------------------------------ observation

    def conn(self) -> Redis:
        return Redis(port=self.redis_port, socket_timeout=5)

    def wait(self, check: Callable[[], object], what: str, timeout_s: float | None = None) -> Any:
        """Poll `check` (exceptions count as not yet) until truthy; SoakTimeout past the bound."""
        end = self.deadline if timeout_s is None else min(self.deadline, time.time() + timeout_s)
        while True:
            try:
                value = check()
            except Exception:
                value = None
            if value:
                return value
            if time.time() > end:
                raise SoakTimeout(f"timed out waiting for {what}")
            time.sleep(0.1)

    def posted(self) -> int:
        with self.ls.lock:
            return len(self.ls.predictions)

    def version(self) -> str:
        reply = httpx.post(f"{self.api_url}/setup", json=SETUP, timeout=10)
        reply.raise_for_status()
        return str(reply.json()["model_version"])

    def versions_by_task(self) -> dict[int, Counter[str]]:
        with self.ls.lock:
            out: dict[int, Counter[str]] = {t: Counter() for t in self.tasks}
            for pred in self.ls.predictions.values():
                out.setdefault(pred["task"], Counter())[pred["model_version"]] += 1
            return out

    def running_job(self) -> str | None:
        """A predict job the worker is running now (its id), or None."""
        conn = self.conn()
        try:
            for name in QUEUES:
                reg = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
                ids = [i for i in reg.get_job_ids() if i.startswith("predict-")]
                if ids:
                    return ids[0]
            return None
        finally:
            conn.close()

    def stranded(self, entry: tuple[str, str]) -> bool:
        """The started-registry entry (job id, execution id) is still there."""
        conn = self.conn()
        try:
            for name in QUEUES:
                reg = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
                if entry in reg.get_job_and_execution_ids():
                    return True
            return False
        finally:
            conn.close()

    def running_entry(self) -> tuple[str, str] | None:
        """(job id, execution id) of a predict job being run now, or None."""
        conn = self.conn()
        try:
            for name in QUEUES:
                reg = StartedJobRegistry(name, connection=conn, serializer=JSONSerializer)
                for job_id, execution in reg.get_job_and_execution_ids():
                    if job_id.startswith("predict-"):
                        return job_id, execution
            return None
        finally:
            conn.close()

    def idle(self) -> bool:
        """No queued, running or scheduled job left (verify jobs included)."""
        conn = self.conn()
        try:
            for name in (*QUEUES, INTERACTIVE):
                if Queue(name, connection=conn, serializer=JSONSerializer).count:
                    return False
                for reg in (StartedJobRegistry, ScheduledJobRegistry):
                    if reg(name, connection=conn, serializer=JSONSerializer).count:
                        return False
            return True
        finally:
            conn.close()

    def next_post_after(self, count: int, what: str) -> float:
        """Seconds until LS holds more than `count` predictions."""
        started = time.time()
        self.wait(lambda: self.posted() > count, what)
        return time.time() - started

    # ------------------------------------------------------------------ load

    def health_loop(self) -> None:
        """Concurrent /health loop: one call every 50 ms, latency and status recorded."""
        with httpx.Client(timeout=30) as client:
            while not self.stop.is_set():
                started = time.perf_counter()
                try:
                    status = client.get(f"{self.api_url}/health").status_code
                except httpx.HTTPError:
                    status = 0
                self.health.append((time.time(), time.perf_counter() - started, status))
                self.stop.wait(0.05)

    def predict_loop(self, seed: int) -> None:
        """LS's side of /predict: a random task, the reply stored as LS stores it."""
        rng = random.Random(seed)
        with httpx.Client(timeout=100) as client:
            while not self.stop.is_set():
                t = rng.choice(self.tasks)
                body = {**SETUP, "tasks": [{"id": t, "data": self.ls.tasks[t]["data"]}]}
                try:
                    reply = client.post(f"{self.api_url}/predict", json=body)
                    self.predict_calls[str(reply.status_code)] += 1
                    if reply.status_code == 200:
                        self.store_inline(t, reply.json())
                except httpx.HTTPError as exc:
                    self.predict_calls[type(exc).__name__] += 1
                self.stop.wait(self.args.predict_pause_s)

    def click_loop(self, seed: int, until: float) -> None:
        """One annotator clicking (smart keypoint on a random task) until `until`."""
        rng = random.Random(1000 + seed)
        w, h = SIZE
        with httpx.Client(timeout=100) as client:
            while time.time() < until and not self.stop.is_set():
                t = rng.choice(self.tasks)
                region = {
                    "from_name": "kp",
                    "to_name": "image",
                    "type": "keypointlabels",
                    "original_width": w,
                    "original_height": h,
                    "is_positive": True,
                    "value": {
                        "x": rng.uniform(5, 95),
                        "y": rng.uniform(5, 95),
                        "keypointlabels": ["Object"],
                    },
                }
                body = {
                    **SETUP,
                    "tasks": [{"id": t, "data": self.ls.tasks[t]["data"]}],
                    "params": {"context": {"result": [region]}},
                }
                started = time.perf_counter()
                try:
                    reply = client.post(f"{self.api_url}/predict", json=body)
                    outcome = str(reply.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                self.clicks.append((time.time(), time.perf_counter() - started, outcome))
                self.stop.wait(rng.uniform(0.1, 0.5))

    def store_inline(self, t: int, reply: dict[str, Any]) -> None:
        """What LS does with an inline reply: store each item that has a `result`."""
        for item in reply.get("results", []):
            if item.get("result") is None:
                continue
            with self.ls.lock:
                i = self.ls._next("prediction")
                self.ls.predictions[i] = {
                    "id": i,
                    "project": P,
                    "task": t,
                    "result": item["result"],
                    "score": item.get("score"),
                    "model_version": item["model_version"],
                }


def seed_event(ls: FakeLabelStudio, ann: dict[str, Any]) -> dict[str, Any]:
    """ANNOTATION_CREATED as LS sends it (the worker reads the facts back from LS)."""
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": P},
        "annotation": {k: ann[k] for k in ("id", "task", "updated_at")},
        "task": {"id": ann["task"]},
    }


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run_faults(s: Soak) -> None:
    """Seed, then the three faults at fixed shares of the posted predictions."""
    n = s.args.tasks
    s.wait(lambda: httpx.get(f"{s.api_url}/health", timeout=5).status_code == 200, "the API", 120)
    httpx.post(f"{s.api_url}/setup", json=SETUP, timeout=10).raise_for_status()
    w, h = SIZE
    seed = s.ls.annotate(s.tasks[0], [brush_region(box_mask(h, w, 10, 50, 20, 70), "Object")])
    s.tasks = s.tasks[1:]  # the seed task is labeled: pre-annotation skips it
    reply = httpx.post(f"{s.api_url}/webhook", json=seed_event(s.ls, seed), timeout=10)
    reply.raise_for_status()
    s.wait(lambda: s.version().endswith("-v1"), "version v1 (seed encoded)")
    print(f"[{s.elapsed():6.1f}s] version v1; {n} tasks to predict", flush=True)
    for thread in [threading.Thread(target=s.health_loop, daemon=True)] + [
        threading.Thread(target=s.predict_loop, args=(i,), daemon=True)
        for i in range(s.args.predict_threads)
    ]:
        thread.start()

    # 1. SIGKILL the worker in the middle of a job, start a replacement
    s.wait(lambda: s.posted() >= n // 5, f"{n // 5} predictions")
    job = s.wait(s.running_job, "a running predict job")
    count = s.posted()
    with s.worker_lock:
        victim = s.workers[-1]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.time()
        s.start_worker()
    task = int(job.split("-")[2])
    print(f"[{s.elapsed():6.1f}s] worker SIGKILLed during {job}; replacement started", flush=True)
    s.recovery["worker kill -> next prediction"] = f"{s.next_post_after(count, 'a post'):.1f} s"
    s.wait(lambda: sum(s.versions_by_task()[task].values()) > 0, f"task {task} delivered")
    s.recovery[f"worker kill -> killed job's task {task} delivered"] = (
        f"{time.time() - killed_at:.1f} s"
    )

    # 2. Redis goes away under a busy worker: the job in flight is stranded (issue 22)
    s.wait(lambda: s.posted() >= 2 * n // 5, f"{2 * n // 5} predictions")
    s.ls.delays["media"] = 3.0  # holds the next job in its download
    entry = s.wait(s.running_entry, "a predict job in flight")
    calls = s.ls.calls["media"]
    s.wait(lambda: s.ls.calls["media"] > calls, "a download in flight")
    entry = s.running_entry() or entry
    count = s.posted()
    assert s.redis is not None
    stop_process(s.redis)
    down_at = time.time()
    time.sleep(s.args.redis_down_s)
    s.ls.delays["media"] = 0.0
    s.start_redis()
    back = time.time()
    print(
        f"[{s.elapsed():6.1f}s] Redis stopped during {entry[0]}, back after {back - down_at:.1f} s",
        flush=True,
    )
    s.wait(lambda: not s.stranded(entry), "the stranded job to be requeued")
    s.recovery[f"Redis back -> stranded job {entry[0]} requeued"] = f"{time.time() - back:.1f} s"
    task = int(entry[0].split("-")[2])
    s.wait(lambda: sum(s.versions_by_task()[task].values()) > 0, f"task {task} delivered")
    s.recovery[f"Redis back -> stranded job's task {task} delivered"] = (
        f"{time.time() - back:.1f} s"
    )
    # 3. 50 concurrent clickers; the interactive worker SIGKILLed half-way
    start = time.time()
    until = start + s.args.click_s
    s.click_window = (start, until)
    clickers = [
        threading.Thread(target=s.click_loop, args=(i, until), daemon=True)
        for i in range(s.args.clickers)
    ]
    for thread in clickers:
        thread.start()
    print(f"[{s.elapsed():6.1f}s] {s.args.clickers} clickers for {s.args.click_s:g} s", flush=True)
    time.sleep(s.args.click_s / 2)
    with s.worker_lock:
        victim = s.interactive[-1]
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        killed_at = time.time()
        s.start_interactive()
    print(f"[{s.elapsed():6.1f}s] interactive worker SIGKILLed; replacement started", flush=True)
    s.wait(
        lambda: any(t > killed_at and o == "200" for t, _, o in list(s.clicks)),
        "a click answered after the kill",
    )
    s.recovery["interactive worker kill -> next click answered"] = (
        f"{time.time() - killed_at:.1f} s"
    )
    for thread in clickers:
        thread.join(timeout=max(1.0, until - time.time() + 110))

    # 4. Label Studio down (503 to everything) for --ls-down-s
    s.wait(lambda: s.posted() >= 3 * n // 5, f"{3 * n // 5} predictions")
    count = s.posted()
    s.ls.down = True
    print(f"[{s.elapsed():6.1f}s] Label Studio down for {s.args.ls_down_s:g} s", flush=True)
    time.sleep(s.args.ls_down_s)
    s.ls.down = False
    back = time.time()
    count = max(count, s.posted())
    if count < n:  # something left to post after the outage
        wait_s = s.next_post_after(count, "a post")
        s.recovery["LS back up -> next prediction"] = f"{wait_s:.1f} s"

    # the end: every task predicted at the final version, then no job left (verifies included)
    final = s.version()
    s.wait(
        lambda: all(c[final] for c in s.versions_by_task().values()),
        f"every task predicted at {final}",
    )
    s.recovery["LS back up -> all tasks predicted"] = f"{time.time() - back:.1f} s"
    s.stop.set()
    s.wait(s.idle, "the queues to drain")
    time.sleep(2)


def report(s: Soak, final: str | None) -> tuple[int, int]:
    """Print the figures; returns (lost, duplicated)."""
    by_task = s.versions_by_task()
    lost = [t for t, c in by_task.items() if final is None or not c[final]]
    dup = [t for t, c in by_task.items() if any(k > 1 for k in c.values())]
    print("\n=== soak figures ===")
    print(f"tasks predicted: {len(by_task)}; final version: {final}")
    print(f"predictions lost: {len(lost)}   duplicated: {len(dup)}   (goal 0 / 0)")
    if lost:
        print(f"  lost tasks: {lost[:20]}")
    if dup:
        print(f"  duplicated tasks: {dup[:20]}")
    with s.ls.lock:
        api_posts = len(s.ls.posts)
        total = len(s.ls.predictions)
    print(f"predictions in LS: {total} ({api_posts} posted by the worker, the rest inline)")
    print(f"/predict calls by outcome: {dict(s.predict_calls)}")
    outcomes = Counter(o for _, _, o in s.clicks)
    answered = [d * 1000 for _, d, o in s.clicks if o == "200"]
    if s.clicks:
        line = f"clicks by outcome: {dict(outcomes)}"
        if answered:
            line += (
                f"; answered p50 {statistics.median(answered):.0f} ms, "
                f"p99 {percentile(answered, 0.99):.0f} ms"
            )
        print(line)
    print(f"workers that died unasked (restarted): {len(s.unplanned)} {s.unplanned}")
    for what, value in s.recovery.items():
        print(f"recovery: {what}: {value}")
    ok = [d * 1000 for _, d, status in s.health if status == 200]
    if ok:
        print(
            f"/health under load: {len(s.health)} calls, {len(s.health) - len(ok)} not 200 "
            f"(Redis restart), p50 {statistics.median(ok):.1f} ms, p99 "
            f"{percentile(ok, 0.99):.1f} ms, max {max(ok):.1f} ms"
        )
    if s.click_window is not None:
        lo, hi = s.click_window
        under = [d * 1000 for t, d, st in s.health if st == 200 and lo <= t <= hi]
        if under:
            print(
                f"/health under {s.args.clickers} clickers: {len(under)} calls, p50 "
                f"{statistics.median(under):.1f} ms, p99 {percentile(under, 0.99):.1f} ms, "
                f"max {max(under):.1f} ms"
            )
    print(f"wall time: {s.elapsed():.0f} s; logs in {s.tmp}")
    return len(lost), len(dup)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tasks", type=int, default=100, help="tasks to predict (+1 seed)")
    parser.add_argument("--max-points", type=int, default=4, help="GFSAM_MAX_POINTS")
    parser.add_argument("--ls-down-s", type=float, default=60.0)
    parser.add_argument("--predict-threads", type=int, default=2, help="concurrent /predict")
    parser.add_argument("--predict-pause-s", type=float, default=2.0)
    parser.add_argument("--redis-down-s", type=float, default=8.0, help="Redis outage")
    parser.add_argument("--clickers", type=int, default=50, help="concurrent smart-tool clickers")
    parser.add_argument("--click-s", type=float, default=40.0, help="length of the click load")
    parser.add_argument("--timeout-s", type=float, default=2400.0, help="bound of the whole run")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="gfsam-soak-"))
    ls = FakeLabelStudio().start()
    ls.configs[P] = CONFIG
    api_url = f"http://127.0.0.1:{free_port()}"
    redis_port = free_port()
    env = dict(
        os.environ,
        REDIS_URL=f"redis://127.0.0.1:{redis_port}/0",
        LABEL_STUDIO_URL=ls.url,
        LABEL_STUDIO_API_KEY=TOKEN,
        DATA_DIR=str(tmp / "data"),
        LOG_LEVEL="WARNING",
        GFSAM_PRESET="tiny",
        GFSAM_MAX_POINTS=str(args.max_points),
        INLINE_VERIFY_DELAY_S="20",  # inline replies are checked within the run
        PREDICT_DEADLINE_S="30",
        OMP_NUM_THREADS="1",
        WORKER_LEASE_S="15",
        INTERACTIVE_DEADLINE_S="30",
    )
    s = Soak(args, tmp, ls, env, api_url, redis_port, time.time() + args.timeout_s)
    w, h = SIZE
    s.tasks = [ls.add_task(P, png_bytes(w, h, seed=i))["id"] for i in range(args.tasks + 1)]
    code = 0
    final: str | None = None
    try:
        s.start_redis()
        s.start_api()
        s.start_worker()
        s.start_interactive()
        threading.Thread(target=s.watch_workers, daemon=True).start()
        run_faults(s)
        final = s.version()
    except SoakTimeout as exc:
        print(f"\nSOAK TIMEOUT after {s.elapsed():.0f} s: {exc}", flush=True)
        code = 2
    finally:
        s.stop.set()
        if final is None:
            try:
                final = s.version()
            except Exception:
                final = None
        lost, dup = report(s, final)
        s.close()
    if code == 0 and (lost or dup):
        code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
