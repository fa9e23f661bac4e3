"""Fixtures for the service tests: a real redis-server, a fake LS, settings, app client, worker.

Import explicitly in a test module (`from tests.service_fixtures import redis_conn, ...`), or
from conftest.py. Redis: `TEST_REDIS_URL`, else a private `redis-server --port <free> --save ""
--appendonly no` per session; without redis-server the tests skip locally and fail in CI (`CI`).
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from redis import Redis
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from backend.app import create_app
from backend.jobs import Jobs
from backend.settings import Settings
from tests.fakes import TOKEN, FakeLabelStudio, FakePipeline, fake_model
from worker import models


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
        ls_timeout_s=5.0,
        refit_lock_wait_s=5.0,
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
    models.install(service_settings, fake_model(pipeline))
    yield pipeline
    models.reset()


def run_worker(conn: Redis, settings: Settings, max_jobs: int | None = None) -> bool:
    """Run the queued jobs (all, or `max_jobs`) in this process, high queue first."""
    worker = SimpleWorker(Jobs(conn, settings).queues, connection=conn, serializer=JSONSerializer)
    return worker.work(burst=True, logging_level="WARNING", max_jobs=max_jobs)


def changed(settings: Settings, **changes: object) -> Settings:
    """A validated copy of `settings` with `changes` (model_copy would skip validation)."""
    return Settings(**{**settings.model_dump(), **changes}, _env_file=None)  # type: ignore[arg-type]
