"""A REAL worker process (`python -m worker.main`, GFSAM_PRESET=tiny random weights) against a
real redis-server (append-only) and the fake LS, on real images from shared/assets/data.

Covers: the whole seed -> pre-annotation path in another process, SIGKILL of the worker in the
middle of a job (during the image download, and during the POST to LS) followed by a new
worker, and a Redis restart that must keep versions and shots.
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from redis import Redis

from backend.app import create_app
from backend.state.settings import Settings
from backend.state.store import Store
from tests.fakes import TOKEN, FakeLabelStudio, brush_region
from tests.service_fixtures import free_port, make_jobs, start_redis, stop_process, wait_until
from worker.labelstudio.brush_rle import rle_to_mask

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LEASE_S = 3  # the workers' lease (WORKER_LEASE_S): a job stranded longer is recovered
ASSETS = REPO.parent / "shared" / "assets" / "data" / "fss1000_subset"
SETUP = {
    "project": "1.1795248910",
    "schema": (
        '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
        '<Label value="Apple"/></BrushLabels></View>'
    ),
}


def image_bytes(name: str) -> bytes:
    return (ASSETS / "images" / "apple" / name).read_bytes()


def apple_mask(name: str) -> np.ndarray:
    return np.asarray(Image.open(ASSETS / "masks" / "apple" / name).convert("L")) >= 128


def rotated_jpeg(data: bytes) -> bytes:
    """The same photo stored landscape-on-its-side: EXIF Orientation 6 (rotate 90 CW to view)."""
    img = Image.open(io.BytesIO(data)).rotate(90, expand=True).resize((224, 160))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    return buf.getvalue()


class Env:
    """Redis (append-only), fake LS, API client and worker processes of one test."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.redis, self.url = start_redis(tmp / "redis", appendonly=True, port=self.port)
        self.ls = FakeLabelStudio().start()
        self.settings = Settings(
            redis_url=self.url,
            label_studio_url=self.ls.url,
            label_studio_api_key=TOKEN,
            data_dir=tmp / "data",
            predict_deadline_s=5.0,
            _env_file=None,  # type: ignore[call-arg]
        )
        self.conn = Redis.from_url(self.url)
        self.store = Store(self.conn, self.settings)
        self.workers: list[subprocess.Popen] = []

    def start_worker(self) -> subprocess.Popen:
        env = dict(
            os.environ,
            REDIS_URL=self.url,
            LABEL_STUDIO_URL=self.ls.url,
            LABEL_STUDIO_API_KEY=TOKEN,
            GFSAM_PRESET="tiny",
            GFSAM_MAX_POINTS="8",
            DATA_DIR=str(self.tmp / "data"),
            WORKER_LEASE_S=str(LEASE_S),
            RECOVERY_INTERVAL_S="1",
            RETRY_INTERVALS_S="[1]",
            LS_TIMEOUT_S="5",
            LOG_LEVEL="INFO",
            PYTHONUNBUFFERED="1",
        )
        log = open(self.tmp / f"worker{len(self.workers)}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-m", "worker.main"],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(proc)
        return proc

    def idle(self) -> bool:
        """No job queued, scheduled or running on either queue."""
        jobs = make_jobs(self.conn, self.settings)
        return not any(
            q.count or q.started_job_registry.count or q.scheduled_job_registry.count
            for q in jobs.queues
        )

    def flush_append_only_file(self) -> None:
        """Make Redis write everything to its append-only file now (instead of waiting for
        `appendfsync everysec`), polling until the rewrite has finished."""
        self.conn.execute_command("BGREWRITEAOF")

        def done() -> bool:
            info = self.conn.info("persistence")
            return not (info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"])

        wait_until(done, 10, "the append-only file rewrite")

    def restart_redis(self) -> None:
        stop_process(self.redis)  # SIGTERM: Redis flushes its append-only file
        self.redis, _ = start_redis(self.tmp / "redis", appendonly=True, port=self.port)

    def close(self) -> None:
        for proc in self.workers:
            stop_process(proc, timeout=15)
        self.ls.stop()
        self.conn.close()
        stop_process(self.redis)


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    e = Env(tmp_path)
    yield e
    e.close()


def seed_project(env: Env, client: TestClient, n_targets: int) -> list[int]:
    """Setup, the seed annotation on 1.jpg, and `n_targets` unlabeled tasks; sends the webhook."""
    env.ls.configs[1] = SETUP["schema"]  # the worker reads the project's config from LS
    assert client.post("/setup", json=SETUP).status_code == 200
    seed = env.ls.add_task(1, image_bytes("1.jpg"), "1.jpg")
    names = ["2.jpg", "3.jpg", "4.jpg", "5.jpg"][:n_targets]
    targets = [env.ls.add_task(1, image_bytes(n), n)["id"] for n in names]
    ann = env.ls.annotate(seed["id"], [brush_region(apple_mask("1.png"), "Apple")])
    event = {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 1, "label_config": SETUP["schema"]},
        "annotation": {k: ann[k] for k in ("id", "task", "updated_at")},
        "task": {"id": seed["id"], "data": seed["data"]},
    }
    assert client.post("/webhook", json=event).json()["status"] == "ok"
    return targets


def test_real_worker_seeds_and_preannotates(env: Env) -> None:
    rotated = env.ls.add_task(1, rotated_jpeg(image_bytes("6.jpg")), "6.jpg")["id"]
    with TestClient(create_app(env.settings)) as client:
        targets = seed_project(env, client, 2)
        env.start_worker()
        wait_until(lambda: len(env.ls.posts) == 3, 240, "3 predictions posted")
        assert client.post("/setup", json=SETUP).json()["model_version"] == "gfsam-p1-v1"
        # a job counts itself done after its POST and its cache writes (`TargetCache.flush`)
        wait_until(lambda: client.get("/projects/1").json()["counts"]["done"] == 3, 30, "done")
        status = client.get("/projects/1").json()
    by_task = {p["task"]: p for p in env.ls.posts}
    assert sorted(by_task) == sorted([*targets, rotated])
    for pred in env.ls.posts:
        assert pred["model_version"] == "gfsam-p1-v1" and 0.0 <= pred["score"] <= 1.0
        for region in pred["result"]:
            w, h = region["original_width"], region["original_height"]
            assert rle_to_mask(region["value"]["rle"], w, h).shape == (h, w)
    assert by_task[rotated]["result"], "the tiny model abstained: no size to check"
    for region in by_task[rotated]["result"]:  # natural size after EXIF rotation: 160 x 224
        assert (region["original_width"], region["original_height"]) == (160, 224)
    assert status["counts"]["done"] == 3 and status["shots"] == {"Apple": [1]}


@pytest.mark.parametrize("stage", ["media", "post"])
def test_worker_killed_mid_job_delivers_exactly_once(env: Env, stage: str) -> None:
    with TestClient(create_app(env.settings)) as client:
        (target,) = seed_project(env, client, 1)
        env.ls.delays[stage] = 4.0  # holds the job in the download, or in the POST to LS
        first = env.start_worker()
        wait_until(lambda: env.store.data.reference_set(1).n == 1, 120, "version v1")
        # the predict job's own download (the seed's came first) or its POST
        reached = 2 if stage == "media" else 1
        wait_until(lambda: env.ls.calls[stage] >= reached, 120, f"the job to reach {stage}")
        first.send_signal(signal.SIGKILL)
        first.wait()
        env.ls.delays[stage] = 0.0
        env.start_worker()
        wait_until(
            lambda: env.store.progress.counts(1).done == 1, 180, "the requeued job to finish"
        )
        wait_until(lambda: env.idle(), 60, "the worker to run out of work")  # nothing more to post
    assert [p["task"] for p in env.ls.posts] == [target]
    assert len(env.ls.predictions_for(target)) == 1
    assert env.store.coord.delivery_claim(1, target, "gfsam-p1-v1") == "api"


def test_redis_restart_keeps_versions_and_shots(env: Env) -> None:
    with TestClient(create_app(env.settings)) as client:
        seed_project(env, client, 1)
        env.start_worker()
        wait_until(lambda: len(env.ls.posts) == 1, 180, "the pre-annotation")
        before = env.store.data.reference_set(1)
        env.flush_append_only_file()
        env.restart_redis()
        after = wait_until(lambda: _try(lambda: env.store.data.reference_set(1)), 10, "Redis back")
        assert after == before and after.version == "gfsam-p1-v1"
        assert client.post("/setup", json=SETUP).json()["model_version"] == "gfsam-p1-v1"
        assert client.get("/projects/1").json()["shots"] == {"Apple": [1]}
        # the same worker keeps working after the restart: a correction makes v2
        task = env.ls.add_task(1, image_bytes("7.jpg"), "7.jpg")
        ann = env.ls.annotate(task["id"], [brush_region(apple_mask("7.png"), "Apple")])
        event = {
            "action": "ANNOTATION_CREATED",
            "project": {"id": 1},
            "annotation": {k: ann[k] for k in ("id", "task", "updated_at")},
            "task": {"id": task["id"], "data": task["data"]},
        }
        client.post("/webhook", json=event)
        wait_until(lambda: env.store.data.reference_set(1).n == 2, 120, "version v2")


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:
        return None


def _processes_of(data_dir: Path) -> list[int]:
    """Pids of one backend.run: DATA_DIR in their environment, or (redis-server, which rewrites
    its environment for its process title) running in DATA_DIR/redis."""
    marker, redis_dir = f"DATA_DIR={data_dir}".encode(), str((data_dir / "redis").resolve())
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if (
                marker in (entry / "environ").read_bytes()
                or os.readlink(entry / "cwd") == redis_dir
            ):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def _run_env(tmp: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GFSAM_", "REDIS_URL"))}
    env.update(
        DATA_DIR=str(tmp / "data"),
        PORT=str(free_port()),
        LABEL_STUDIO_API_KEY=TOKEN,
        LABEL_STUDIO_URL="http://127.0.0.1:9",
        MODEL_DIR=str(tmp / "models"),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def test_backend_run_refuses_without_weights(tmp_path: Path) -> None:
    env = _run_env(tmp_path)
    done = subprocess.run(
        [sys.executable, "-m", "backend.run"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 2
    assert "weights for 'sam_vit_h' not found" in done.stderr
    assert str(tmp_path / "models") in done.stderr
    assert "python -m gfsam weights download" in done.stderr
    assert _processes_of(tmp_path / "data") == []


def test_backend_run_serves_and_stops_cleanly(tmp_path: Path) -> None:
    env = _run_env(tmp_path, GFSAM_PRESET="tiny")
    proc = subprocess.Popen(
        [sys.executable, "-m", "backend.run"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{env['PORT']}"
    try:
        health = wait_until(lambda: _try(lambda: httpx.get(f"{url}/health").json()), 120, "API")
        assert health["random_weights"] is True and "RANDOM-WEIGHTS" in health["model_class"]
        setup = httpx.post(f"{url}/setup", json=SETUP).json()
        assert setup == {"model_version": "gfsam-p1-v0"}
        # run, redis, worker, the interactive worker, api
        assert len(_processes_of(tmp_path / "data")) == 5
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-2000:]
    assert "RANDOM WEIGHTS" in out
    assert _processes_of(tmp_path / "data") == []
    assert any((tmp_path / "data" / "redis").glob("appendonly*"))


def test_redis_restart_under_a_busy_worker_requeues_its_job(env: Env) -> None:
    """Issue 22, item 1: Redis dies while the worker is in the middle of a job; the worker lives
    on under the same name (lease renewed) and the job's bookkeeping is lost with the outage, so
    the job stays "started" in RQ's registry. It must be requeued within the lease, not after
    the job timeout (600 s)."""
    with TestClient(create_app(env.settings)) as client:
        (target,) = seed_project(env, client, 1)
        env.ls.delays["media"] = 3.0  # holds the predict job in its download
        worker = env.start_worker()
        wait_until(lambda: env.store.data.reference_set(1).n == 1, 120, "version v1")
        wait_until(lambda: env.ls.calls["media"] >= 2, 120, "the predict job's download")
        started = make_jobs(env.conn, env.settings).batch.started_job_registry
        (entry,) = started.get_job_and_execution_ids()  # (job id, execution id)
        env.flush_append_only_file()
        stop_process(env.redis)  # the job finishes its download while Redis is away
        time.sleep(8.0)
        env.ls.delays["media"] = 0.0
        env.redis, _ = start_redis(env.tmp / "redis", appendonly=True, port=env.port)
        back = time.monotonic()
        wait_until(
            lambda: _try(lambda: entry not in started.get_job_and_execution_ids()),
            60,
            "the stranded job to leave the started registry",
        )
        assert time.monotonic() - back < 2 * LEASE_S + 5  # within the lease, not the job timeout
        wait_until(lambda: len(env.ls.posts) >= 1, 180, "the stranded job's task to be posted")
        assert worker.poll() is None, "the worker lives on through the restart"
        wait_until(lambda: env.idle(), 60, "the worker to run out of work")
    assert [p["task"] for p in env.ls.posts] == [target]
