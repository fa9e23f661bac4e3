"""A real Label Studio 1.23.2 for tests, and helpers for its REST API.

Starts ``label-studio start`` from a separate virtualenv (``LS_VENV``, default ``<repo>/.lsvenv``)
on a free localhost port with a throw-away data dir and the environment of
``docs/labelstudio-protocol.md`` §8.1, then drives the §8.3 REST sequence over ``requests``.
Nothing leaves localhost: version checks, analytics and Sentry are switched off.

Usage in a test module::

    @pytest.fixture(scope="module")
    def ls(tmp_path_factory):
        with start_label_studio(tmp_path_factory.mktemp("ls")) as server:
            yield server

If the virtualenv is missing, ``start_label_studio`` fails the test when ``CI`` is set and skips
it otherwise. Install it with
``python3 -m venv .lsvenv && .lsvenv/bin/pip install label-studio==1.23.2``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import requests

logger = logging.getLogger(__name__)

LS_VERSION = "1.23.2"
REPO = Path(__file__).resolve().parents[1]
USERNAME = "gfsam-test@example.com"
PASSWORD = "gfsam-test-password"
LEGACY_TOKEN = "gfsam0legacy0token0for0tests"
STARTUP_TIMEOUT_S = 240.0  # cold start (migrations on a fresh SQLite) measured at ~25-60 s
# Environment names passed through from the test process; everything else is dropped, so that
# e.g. a PORT, DATA_DIR or REDIS_URL meant for our backend cannot reconfigure Label Studio.
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "TMPDIR")


class LabelStudioAPIError(AssertionError):
    """A REST call to the test Label Studio returned an unexpected status."""


def ls_venv() -> Path:
    """The Label Studio virtualenv: ``$LS_VENV`` or ``<repo>/.lsvenv``."""
    return Path(os.environ.get("LS_VENV") or REPO / ".lsvenv")


def require_label_studio() -> Path:
    """Path of the ``label-studio`` executable; fail (CI) or skip (local) when it is missing."""
    exe = ls_venv() / "bin" / "label-studio"
    found = sorted(ls_venv().glob("lib/python*/site-packages/label_studio-*.dist-info"))
    versions = [d.name.removeprefix("label_studio-").removesuffix(".dist-info") for d in found]
    if exe.is_file() and versions == [LS_VERSION]:
        return exe
    message = (
        f"Label Studio {LS_VERSION} not found at {exe} (installed: {versions or 'none'}); create "
        f"it with `python3 -m venv .lsvenv && .lsvenv/bin/pip install label-studio=={LS_VERSION}`"
        " or set LS_VENV"
    )
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def free_port() -> int:
    """A currently unused TCP port on 127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ls_environment(base: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for ``label-studio start`` (protocol §8.1), isolated under ``base``."""
    env = {name: os.environ[name] for name in _PASS_ENV if name in os.environ}
    env.update(
        HOME=str(base / "home"),
        LABEL_STUDIO_BASE_DATA_DIR=str(base / "data"),
        LABEL_STUDIO_USERNAME=USERNAME,  # set explicitly: LS falls back to a plain $USERNAME
        LABEL_STUDIO_PASSWORD=PASSWORD,
        LABEL_STUDIO_USER_TOKEN=LEGACY_TOKEN,
        LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",
        ML_BLOCK_LOCAL_IP="false",  # the backend runs on 127.0.0.1
        SSRF_PROTECTION_ENABLED="false",  # else its /webhook is refused when the backend is added
        LATEST_VERSION_CHECK="false",
        COLLECT_ANALYTICS="false",
        SENTRY_DSN="",
        FRONTEND_SENTRY_DSN="",
        LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",  # for /data/local-files/?d= tests
        LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(base / "local-files"),
        PYTHONUNBUFFERED="1",
    )
    env.update(extra or {})
    return env


@dataclass
class LabelStudio:
    """A running Label Studio and a REST client for it, authenticated with the legacy token."""

    url: str
    token: str
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes]
    startup_s: float = 0.0
    session: requests.Session = field(default_factory=requests.Session)
    _pat: str | None = None

    def __post_init__(self) -> None:
        self.session.trust_env = False
        self.session.headers["Authorization"] = f"Token {self.token}"

    # ------------------------------------------------------------------ plumbing

    def request(
        self,
        method: str,
        path: str,
        *,
        expect: Sequence[int] = (200, 201, 204),
        timeout: float = 30.0,
        **kw: Any,
    ) -> requests.Response:
        """One REST call; raises LabelStudioAPIError (with the LS log tail) on another status."""
        reply = self.session.request(method, self.url + path, timeout=timeout, **kw)
        if reply.status_code not in expect:
            raise LabelStudioAPIError(
                f"{method} {path} -> {reply.status_code} (expected {list(expect)}): "
                f"{reply.text[:500]}\n--- label studio log ---\n{self.log_tail(30)}"
            )
        return reply

    def json(self, method: str, path: str, **kw: Any) -> Any:
        """REST call returning the decoded JSON body (None for 204)."""
        reply = self.request(method, path, **kw)
        return None if reply.status_code == 204 or not reply.content else reply.json()

    def log_tail(self, lines: int = 60) -> str:
        """Last lines of the server log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # ------------------------------------------------------------------ projects and tasks

    def create_project(self, label_config: str, title: str = "gfsam-test", **extra: Any) -> dict:
        """POST /api/projects (§8.3 step 1)."""
        body = {"title": title, "label_config": label_config, **extra}
        return self.json("POST", "/api/projects/", json=body)

    def get_project(self, project_id: int) -> dict:
        """GET /api/projects/{id}."""
        return self.json("GET", f"/api/projects/{project_id}/")

    def import_images(self, project_id: int, paths: Sequence[Path]) -> dict:
        """Multipart upload, one task per file; every file needs its own form field name."""
        handles = [Path(p).open("rb") for p in paths]
        try:
            files = {f"file{i}": (fh.name.rsplit("/", 1)[-1], fh) for i, fh in enumerate(handles)}
            reply = self.json("POST", f"/api/projects/{project_id}/import", files=files)
        finally:
            for fh in handles:
                fh.close()
        if reply.get("task_count") != len(paths):
            raise LabelStudioAPIError(f"imported {reply.get('task_count')} of {len(paths)} files")
        return reply

    def add_local_storage(self, project_id: int, files: Sequence[Path], folder: str) -> dict:
        """Copy files under the document root, add a Local Files storage and sync it.

        The synced tasks' images are ``/data/local-files/?d=<folder>/<name>``.
        """
        target = self.local_files_root / folder
        target.mkdir(parents=True, exist_ok=True)
        for path in files:
            (target / Path(path).name).write_bytes(Path(path).read_bytes())
        body = {
            "project": project_id,
            "path": str(target),
            "title": folder,
            "use_blob_urls": True,
            "regex_filter": ".*",
        }
        storage = self.json("POST", "/api/storages/localfiles/", json=body)
        self.json("POST", f"/api/storages/localfiles/{storage['id']}/sync", timeout=120.0)
        return storage

    @property
    def local_files_root(self) -> Path:
        """LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of this server."""
        return self.data_dir.parent / "local-files"

    def list_tasks(self, project_id: int) -> list[dict]:
        """GET /api/projects/{id}/tasks (plain list, sorted by id); LS answers 404 when empty."""
        path = f"/api/projects/{project_id}/tasks/?page_size=10000"
        reply = self.request("GET", path, expect=(200, 404))
        return [] if reply.status_code == 404 else sorted(reply.json(), key=lambda t: t["id"])

    def get_task(self, task_id: int, *, timeout: float = 150.0) -> dict:
        """GET /api/tasks/{id}: what opening a task in the UI does (may call /predict)."""
        return self.json("GET", f"/api/tasks/{task_id}/", timeout=timeout)

    def upload_file(self, task: dict) -> Path:
        """Where LS keeps an uploaded task's image on disk (``data.image`` is /data/upload/...)."""
        path = unquote(urlsplit(task["data"]["image"]).path)
        return self.data_dir / "media" / path.removeprefix("/data/")

    # ------------------------------------------------------------------ ML backend, webhooks

    def connect_ml_backend(
        self, project_id: int, url: str, title: str = "gfsam", **extra: Any
    ) -> dict:
        """POST /api/ml (§8.3 step 3); LS calls /health and /setup twice while creating it."""
        body = {"url": url, "project": project_id, "title": title, **extra}
        return self.json("POST", "/api/ml/", json=body, timeout=60.0)

    def get_ml_backend(self, ml_id: int) -> dict:
        """GET /api/ml/{id}: LS re-runs /health and /setup, so model_version is fresh."""
        return self.json("GET", f"/api/ml/{ml_id}", timeout=60.0)

    def webhooks(self, project_id: int) -> list[dict]:
        """GET /api/webhooks?project={id}."""
        return self.json("GET", f"/api/webhooks/?project={project_id}")

    # ------------------------------------------------------------------ annotations

    def create_annotation(self, task_id: int, result: list[dict], **extra: Any) -> dict:
        """POST /api/tasks/{id}/annotations (sends ANNOTATION_CREATED)."""
        body = {"result": result, "lead_time": 3.2, **extra}
        return self.json("POST", f"/api/tasks/{task_id}/annotations/", json=body, timeout=120.0)

    def update_annotation(self, annotation_id: int, result: list[dict]) -> dict:
        """PATCH /api/annotations/{id} (sends ANNOTATION_UPDATED)."""
        path = f"/api/annotations/{annotation_id}/"
        return self.json("PATCH", path, json={"result": result}, timeout=120.0)

    def delete_annotation(self, annotation_id: int) -> None:
        """DELETE /api/annotations/{id} (sends ANNOTATIONS_DELETED)."""
        self.request("DELETE", f"/api/annotations/{annotation_id}/", timeout=120.0)

    # ------------------------------------------------------------------ predictions

    def predictions(self, *, task: int | None = None, project: int | None = None) -> list[dict]:
        """GET /api/predictions?task= or ?project=."""
        params = {k: v for k, v in (("task", task), ("project", project)) if v is not None}
        return self.json("GET", "/api/predictions/", params=params)

    def create_prediction(self, task_id: int, result: list[dict], **extra: Any) -> dict:
        """POST /api/predictions."""
        body = {"task": task_id, "result": result, **extra}
        return self.json("POST", "/api/predictions/", json=body)

    def dm_action(
        self, project_id: int, action: str, ids: Sequence[int] | None = None, timeout: float = 150.0
    ) -> dict:
        """POST /api/dm/actions?id=<action> on the given task ids, or on all tasks."""
        if ids is None:
            selected: dict[str, Any] = {"all": True, "excluded": []}
        else:
            selected = {"all": False, "included": list(ids)}
        path = f"/api/dm/actions/?id={action}&project={project_id}"
        return self.json("POST", path, json={"selectedItems": selected}, timeout=timeout)

    def retrieve_predictions(self, project_id: int, ids: Sequence[int] | None = None) -> dict:
        """DM "Retrieve Predictions": one synchronous /predict call for all selected tasks."""
        return self.dm_action(project_id, "retrieve_tasks_predictions", ids)

    def delete_predictions(self, project_id: int, ids: Sequence[int] | None = None) -> dict:
        """DM "Delete Predictions"."""
        return self.dm_action(project_id, "delete_tasks_predictions", ids)

    # ------------------------------------------------------------------ tokens (§8.2)

    def create_pat(self) -> str:
        """A Personal Access Token (JWT refresh token) for the admin; cached (LS allows one)."""
        if self._pat is None:
            self._pat = self.json("POST", "/api/token/")["token"]
        return self._pat

    def refresh(self, pat: str) -> str:
        """Exchange a PAT for a 5-minute access token."""
        reply = requests.post(f"{self.url}/api/token/refresh/", json={"refresh": pat}, timeout=30)
        if reply.status_code != 200:
            raise LabelStudioAPIError(f"token refresh -> {reply.status_code}: {reply.text[:300]}")
        return str(reply.json()["access"])

    def jwt_settings(self, *, api_tokens: bool = True, legacy_tokens: bool = True) -> dict:
        """Enable or disable PATs and legacy tokens for the organisation."""
        body = {"api_tokens_enabled": api_tokens, "legacy_api_tokens_enabled": legacy_tokens}
        return self.json("POST", "/api/jwt/settings", json=body)


def _wait_healthy(server: LabelStudio, deadline: float) -> None:
    """Poll /health until LS answers UP; fail with the log tail on exit or timeout."""
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(
                f"label-studio exited with {server.process.returncode} during startup:\n"
                + server.log_tail()
            )
        try:
            reply = requests.get(server.url + "/health", timeout=2)
            if reply.ok and reply.json().get("status") == "UP":
                return
        except (requests.RequestException, ValueError):
            pass
        time.sleep(0.5)
    raise TimeoutError(f"label-studio not healthy after startup timeout:\n{server.log_tail()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM the server's process group, then SIGKILL after 15 s."""
    if process.poll() is not None:
        return
    pgid = os.getpgid(process.pid)
    os.killpg(pgid, signal.SIGTERM)
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        os.killpg(pgid, signal.SIGKILL)
        process.wait(timeout=15)


@contextmanager
def start_label_studio(
    base: Path, *, env: dict[str, str] | None = None, startup_timeout: float = STARTUP_TIMEOUT_S
) -> Iterator[LabelStudio]:
    """Run Label Studio under ``base`` (data dir, home, log) for the duration of the block.

    Args:
        base: an empty directory owned by the test.
        env: extra environment for the server (e.g. ``ML_TIMEOUT_PREDICT``).
        startup_timeout: seconds to wait for ``/health``.

    Yields:
        The running server; ``startup_s`` holds the measured cold-start time.
    """
    exe = require_label_studio()
    (base / "home").mkdir(parents=True, exist_ok=True)
    data_dir = base / "data"
    port = free_port()
    log_path = base / "label-studio.log"
    cmd = [str(exe), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)]
    cmd += ["--data-dir", str(data_dir)]
    start = time.monotonic()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            cmd,
            env=ls_environment(base, env),
            cwd=base,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # own process group, so stopping it reaches its children
        )
    server = LabelStudio(f"http://127.0.0.1:{port}", LEGACY_TOKEN, data_dir, log_path, process)
    try:
        _wait_healthy(server, start + startup_timeout)
        server.startup_s = time.monotonic() - start
        logger.info("label-studio %s up on %s in %.1fs", LS_VERSION, server.url, server.startup_s)
        yield server
    finally:
        server.session.close()
        _stop(process)
