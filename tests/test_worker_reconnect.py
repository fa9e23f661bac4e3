"""Issue 7, finding 12: a standalone `python -m worker.main` reconnects when Redis restarts
during a job instead of exiting."""

from __future__ import annotations

from typing import Any

import pytest
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from backend.state.settings import Settings
from worker import main


class FlakyWorker:
    """Stands in for the RQ worker: the first `work` loses Redis, the next one ends normally."""

    runs: list[str] = []

    def __init__(self, queues: Any, *, connection: Redis, name: str, **_: Any) -> None:
        self.key = f"rq:worker:{name}"

    def work(self, **_: Any) -> bool:
        FlakyWorker.runs.append(self.key)
        if len(FlakyWorker.runs) == 1:
            raise RedisConnectionError("Connection closed by server.")
        return True


def test_worker_reconnects_after_losing_redis(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> None:
    class NoMaintenance:
        def __init__(self, *args: Any) -> None: ...
        def start(self) -> None: ...
        def stop(self) -> None: ...
        def running(self, job_id: str | None) -> None: ...

    monkeypatch.setattr(main, "load_or_explain", lambda settings, **_: 0)
    monkeypatch.setattr(main, "Maintenance", NoMaintenance)
    monkeypatch.setattr(main, "JobLoggingWorker", FlakyWorker)
    settings = Settings(redis_url=redis_url, _env_file=None)  # type: ignore[call-arg]
    assert main.run(settings) == 0
    assert len(FlakyWorker.runs) == 2
