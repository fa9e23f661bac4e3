"""`python -m backend.run`: everything on one machine, supervised.

Starts, in order: Redis (unless REDIS_URL is set: a private `redis-server` on a free loopback
port, `--appendonly yes` in DATA_DIR/redis, so a restart keeps versions and shots), WORKERS
worker processes (`python -m worker.main`), INTERACTIVE_WORKERS smart-tool workers
(`python -m worker.main --interactive`, default 1) and the API (uvicorn on HOST:PORT, default
:9090).

- A worker that exits with a configuration code (2: no weights, 3: no LS key / Redis URL) stops
  everything with that code: the backend refuses to run without what it needs.
- A worker or the embedded Redis that dies otherwise is restarted (Redis on the same port and
  data dir; jobs of the dead worker are requeued by the other workers' recovery).
- SIGTERM/SIGINT: stop the API, then the workers (RQ warm shutdown: the current job finishes,
  up to SHUTDOWN_GRACE_S, then SIGKILL; a killed job is requeued on the next start), then Redis
  (which flushes its append-only file). Children also get SIGTERM if this process dies.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from backend.state.logs import setup_logging
from backend.state.settings import Settings, get_settings

logger = logging.getLogger(__name__)

CONFIG_EXIT_CODES = (2, 3)
RESTART_BACKOFF_S = 2.0


def _die_with_parent() -> None:
    """Linux: deliver SIGTERM to this child when the supervisor dies (even by SIGKILL)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    restart: bool
    proc: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self, env: dict[str, str]) -> None:
        logger.info("starting %s: %s", self.name, " ".join(self.argv[:3]))
        self.proc = subprocess.Popen(
            self.argv, env=env, preexec_fn=_die_with_parent, start_new_session=True
        )

    def stop(self, grace_s: float) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop within %.0fs: killing it", self.name, grace_s)
            self.proc.kill()
            self.proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def redis_child(settings: Settings) -> tuple[Child, str]:
    """The embedded Redis: loopback only, append-only persistence in DATA_DIR/redis."""
    exe = shutil.which(settings.redis_server)
    if exe is None:
        raise SystemExit(
            f"{settings.redis_server!r} not found: install redis-server or set "
            "REDIS_URL to an existing Redis"
        )
    directory = (settings.data_dir / "redis").resolve()
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    argv = [
        exe,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--dir",
        str(directory),
        "--appendonly",
        "yes",
        "--appendfsync",
        "everysec",
        "--save",
        "",
        "--protected-mode",
        "yes",
        "--logfile",
        str(directory / "redis.log"),
    ]
    return Child("redis", argv, restart=True), f"redis://127.0.0.1:{port}/0"


def wait_for_port(url: str, timeout_s: float = 10.0) -> None:
    host, port = url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex((host, int(port))) == 0:
                return
        time.sleep(0.05)
    raise SystemExit(f"Redis at {host}:{port} did not come up within {timeout_s:.0f}s")


def plan(settings: Settings) -> tuple[list[Child], dict[str, str]]:
    """Children in start order and the environment they share."""
    children: list[Child] = []
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if not settings.redis_url:
        redis, url = redis_child(settings)
        children.append(redis)
        env["REDIS_URL"] = url
    py = sys.executable
    for i in range(settings.workers):
        children.append(Child(f"worker-{i}", [py, "-m", "worker.main"], restart=True))
    for i in range(settings.interactive_workers):  # the smart-tool lane (issue 9)
        argv = [py, "-m", "worker.main", "--interactive"]
        children.append(Child(f"worker-interactive-{i}", argv, restart=True))
    api = [
        py,
        "-m",
        "uvicorn",
        "backend.app:create_app",
        "--factory",
        "--host",
        settings.bind_host,
        "--port",
        str(settings.port),
        "--log-level",
        settings.log_level.lower(),
        "--timeout-graceful-shutdown",
        "5",
    ]
    children.append(Child("api", api, restart=False))
    return children, env


def supervise(
    children: list[Child], env: dict[str, str], stop: threading.Event, grace_s: float
) -> int:
    """Start children, restart the restartable ones, stop all in reverse order. Returns a code."""
    code = 0
    for child in children:
        child.start(env)
        if child.name == "redis":
            wait_for_port(env["REDIS_URL"])
    while not stop.wait(0.2):
        exited = [c for c in children if c.proc is not None and c.proc.poll() is not None]
        for child in exited:
            rc = child.proc.returncode if child.proc else 1
            if rc in CONFIG_EXIT_CODES or not child.restart or _too_many(child):
                logger.error("%s exited with code %s: shutting down", child.name, rc)
                code = rc or 1
                stop.set()
                break
            logger.warning("%s exited with code %s: restarting", child.name, rc)
            time.sleep(RESTART_BACKOFF_S)
            child.start(env)
    for child in reversed(children):
        child.stop(grace_s if child.name.startswith("worker") else 10.0)
    return code


def _too_many(child: Child, window_s: float = 60.0, limit: int = 5) -> bool:
    now = time.monotonic()
    child.restarts = [t for t in child.restarts if now - t < window_s] + [now]
    return len(child.restarts) > limit


def main(argv: list[str] | None = None) -> int:
    settings = get_settings()
    setup_logging(settings.log_level, settings.log_format, "run")
    if settings.random_weights:
        logger.warning(
            "RANDOM WEIGHTS (%s): predictions are noise, wiring checks only", settings.model_class
        )
    stop = threading.Event()
    handler: Callable[[int, object], None] = lambda signum, frame: stop.set()  # noqa: E731
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    Path(settings.data_dir).mkdir(parents=True, exist_ok=True)
    children, env = plan(settings)
    if not settings.host and settings.basic_auth_user is None:
        logger.warning(
            "no BASIC_AUTH_USER/PASS: listening on 127.0.0.1 only; set both (and HOST=0.0.0.0) "
            "to serve Label Studio on another machine (README, 'Production setup')"
        )
    logger.info(
        "GF-SAM backend on %s:%s (Redis %s)",
        settings.bind_host,
        settings.port,
        "embedded" if not settings.redis_url else "external",
    )
    return supervise(children, env, stop, settings.shutdown_grace_s)


if __name__ == "__main__":
    sys.exit(main())
