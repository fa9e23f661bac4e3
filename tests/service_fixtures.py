"""Fixtures for the service tests: a real redis-server, a fake LS, settings, app client, worker.

Registered for every module by conftest.py. `svc` bundles what a service test needs (API client,
Redis, settings, fake LS, fake pipeline, store and queues). Redis: `TEST_REDIS_URL`, else a
private `redis-server --port <free> --save "" --appendonly no` per session; without
redis-server the tests skip locally and fail in CI (`CI`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from backend.app import create_app
from backend.state.jobs import Jobs
from backend.state.settings import Settings
from backend.state.store import Store
from tests.fakes import (
    FAKE_SETTINGS,
    TOKEN,
    FakeLabelStudio,
    FakePipeline,
    OraclePipeline,
    fake_model,
    oracle_model,
)
from worker import runtime
from worker.contract import SegmentationModel


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_redis(
    directory: Path, *, appendonly: bool = False, port: int | None = None
) -> tuple[subprocess.Popen, str]:
    """Start a private redis-server in `directory`; returns (process, url) once it answers."""
    exe = shutil.which("redis-server")
    if exe is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (CI must install it)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    directory.mkdir(parents=True, exist_ok=True)
    args = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--logfile",
        "redis.log",
    ]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    conn = Redis.from_url(url)
    for _ in range(200):
        try:
            conn.ping()
            return proc, url
        except Exception:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}") from None
            time.sleep(0.025)
    proc.kill()
    raise RuntimeError("redis-server did not answer within 5 s")


def stop_process(proc: subprocess.Popen, timeout: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("TEST_REDIS_URL"):
        yield os.environ["TEST_REDIS_URL"]
        return
    proc, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    stop_process(proc)


@pytest.fixture
def redis_conn(redis_url: str) -> Iterator[Redis]:
    conn = Redis.from_url(redis_url)
    conn.flushdb()
    yield conn
    conn.flushdb()
    conn.close()


@pytest.fixture
def fake_ls() -> Iterator[FakeLabelStudio]:
    ls = FakeLabelStudio().start()
    yield ls
    ls.stop()


@pytest.fixture
def service_settings(redis_url: str, fake_ls: FakeLabelStudio, tmp_path: Path) -> Settings:
    return Settings(
        redis_url=redis_url,
        label_studio_url=fake_ls.url,
        label_studio_api_key=TOKEN,
        data_dir=tmp_path / "data",
        retry_intervals_s=[0],
        predict_deadline_s=5.0,
        inline_verify_delay_s=0,
        refit_debounce_s=0.0,  # each annotation re-fits at once (tests/test_scale.py: windows)
        ls_timeout_s=5.0,
        refit_lock_wait_s=5.0,
        # Self-measurement (issue 19) changes posted scores once a project is measured; the
        # tests that measure turn it on (tests/test_quality_worker.py, the e2e tests).
        calibrate=False,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest.fixture
def service_client(service_settings: Settings, redis_conn: Redis) -> Iterator[TestClient]:
    with TestClient(create_app(service_settings)) as client:
        yield client


@pytest.fixture
def fake_pipeline(service_settings: Settings) -> Iterator[FakePipeline]:
    """Installs a FakePipeline as this process's worker model (with the fake LS client)."""
    pipeline = FakePipeline()
    runtime.install(changed(service_settings, **FAKE_SETTINGS), fake_model(pipeline))
    yield pipeline
    runtime.reset()


def make_jobs(conn: Redis, settings: Settings) -> Jobs:
    """The enqueue API on `conn`, with its own store (as the app and the workers build it)."""
    return Jobs(conn, settings, Store(conn, settings))


def run_worker(conn: Redis, settings: Settings, max_jobs: int | None = None) -> bool:
    """Run the queued jobs (all, or `max_jobs`) in this process, high queue first."""
    queues = make_jobs(conn, settings).queues
    worker = SimpleWorker(queues, connection=conn, serializer=JSONSerializer)
    return worker.work(burst=True, logging_level="WARNING", max_jobs=max_jobs)


@dataclass
class Service:
    """One service under test: the API (TestClient, lifespan run), a real Redis, the settings
    it was built with, the fake Label Studio and the fake pipeline installed as the worker's
    model, plus a store and queues on the same Redis."""

    client: TestClient
    conn: Redis
    settings: Settings
    ls: FakeLabelStudio
    pipeline: SegmentationModel  # FakePipeline, OraclePipeline or the tiny GFSAM (`model=`)
    store: Store
    jobs: Jobs

    def run_worker(self, max_jobs: int | None = None) -> bool:
        """Run the queued jobs in this process (high queue first) with the fake pipeline."""
        return run_worker(self.conn, self.settings, max_jobs)


@pytest.fixture
def make_service(
    service_settings: Settings, redis_conn: Redis, fake_ls: FakeLabelStudio
) -> Iterator[Callable[..., Service]]:
    """A factory: `make_service(model=..., **setting_changes)` starts the service with changed
    settings and installs the worker's model:

    - ``"fake"`` (default): `FakePipeline`, with `FAKE_SETTINGS` (argmax, no discovery: its
      encodings carry no features) under the changes;
    - ``"oracle"``: `OraclePipeline` (split and discovery for real), production defaults;
    - ``"tiny"``: the real GFSAM with tiny random encoders (``GFSAM_PRESET=tiny``).
    """
    clients: list[TestClient] = []

    def make(model: str = "fake", **changes: object) -> Service:
        if model == "fake":
            changes = {**FAKE_SETTINGS, **changes}
        elif model == "tiny":
            changes = {"gfsam_preset": "tiny", **changes}
        settings = changed(service_settings, **changes)
        pipeline: SegmentationModel
        if model == "fake":
            pipeline = FakePipeline()
            runtime.install(settings, fake_model(pipeline))
        elif model == "oracle":
            pipeline = OraclePipeline()
            runtime.install(settings, oracle_model(pipeline))
        elif model == "tiny":
            rt = runtime.install(settings, runtime.build_model(settings))
            pipeline = rt.model.pipeline
        else:
            raise ValueError(f"unknown test model {model!r}")
        client = TestClient(create_app(settings))
        client.__enter__()
        clients.append(client)
        jobs = make_jobs(redis_conn, settings)
        return Service(client, redis_conn, settings, fake_ls, pipeline, jobs.store, jobs)

    yield make
    for client in clients:
        client.__exit__(None, None, None)
    runtime.reset()


@pytest.fixture
def svc(make_service: Callable[..., Service]) -> Service:
    """The service with the test settings (see `service_settings`)."""
    return make_service()


def wait_until(
    condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.02
) -> object:
    """Poll `condition` until it returns something truthy (returned) or fail after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.1f}s waiting for {what}")
        time.sleep(poll_s)


def changed(settings: Settings, **changes: object) -> Settings:
    """A validated copy of `settings` with `changes` (model_copy would skip validation)."""
    return Settings(**{**settings.model_dump(), **changes}, _env_file=None)  # type: ignore[arg-type]


@pytest.fixture
def store(redis_conn: Redis, tmp_path: Path) -> Store:
    """A store on the test Redis with short lock waits (no API, no worker)."""
    settings = Settings(
        redis_url="redis://unused",
        data_dir=tmp_path,
        refit_lock_wait_s=0.3,
        _env_file=None,  # type: ignore[call-arg]
    )
    return Store(redis_conn, settings, owner="test")


def tick_scheduler(conn: Redis, settings: Settings) -> None:
    """What a worker's maintenance thread does every second: move due scheduled jobs (retries,
    debounced re-fits, later checks) to their queues."""
    from rq.scheduler import RQScheduler

    names = [settings.queue_high, settings.queue_batch, settings.queue_background]
    scheduler = RQScheduler(names, connection=conn, serializer=JSONSerializer)
    scheduler.acquire_locks()
    scheduler.enqueue_scheduled_jobs()
    scheduler.release_locks()
