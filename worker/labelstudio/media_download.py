"""Media download from Label Studio and allowed hosts: the client's media part.

`MediaClient.download` fetches a task's image (``/data/upload``, local files, http(s), cloud URIs
presigned by LS) within ``max_bytes`` and a total deadline, following redirects by hand so that
every hop is checked by the media policy (`worker.labelstudio.media_policy`) and our token only
goes to Label Studio's own origin.

Each download runs on a session of its own whose connections report to the download
(`_Fetch`) as soon as they are connected, before anything is sent: the address connected to is
checked against the policy there (DNS rebinding), and the socket is registered so that the
deadline, armed before the first request, cuts connect, headers and body alike (a server sending
its headers slowly cannot hold the worker). Every failure of an origin other than Label Studio's
is one generic, permanent `MediaRefused` (issue 22).
"""

from __future__ import annotations

import base64
import contextvars
import logging
import socket
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool

from worker.labelstudio.errors import (
    LabelStudioError,
    LabelStudioUnavailable,
    MediaDeadline,
    MediaRefused,
    MediaTooLarge,
)
from worker.labelstudio.media_policy import GENERIC_REASON, MediaPolicy
from worker.labelstudio.transport import Transport, safe_url

__all__ = ["CLOUD_SCHEMES", "MediaClient"]

logger = logging.getLogger("worker.labelstudio.client")  # the client's one logger

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")  # resolved by LS's presign endpoint
_CHUNK = 1 << 16
_MAX_REDIRECTS = 5


class _Fetch:
    """One download: its deadline (armed at once) and the sockets it opened; `check` vets the
    address of each new connection of the current hop (None: Label Studio's origin)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False
        self.check: Callable[[str | None], None] | None = None
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def connected(self, sock: socket.socket) -> None:
        """A connection of this download is up: cut it at the deadline; vet its peer.

        Raises:
            MediaRefused: the address connected to is not allowed (nothing was sent).
        """
        with self._lock:
            self._sockets.append(sock)
            fired = self.fired
        if fired:
            _shut(sock)
        if self.check is not None:
            try:
                peer: str | None = str(sock.getpeername()[0])
            except OSError:
                peer = None
            try:
                self.check(peer)
            except MediaRefused:
                sock.close()
                raise

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def cancel(self) -> None:
        self._timer.cancel()


def _shut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


_current: contextvars.ContextVar[_Fetch | None] = contextvars.ContextVar(
    "media_fetch", default=None
)


def _on_connect(sock: socket.socket) -> None:
    fetch = _current.get()
    if fetch is not None:
        fetch.connected(sock)


class _CheckedHTTPConnection(HTTPConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _on_connect(sock)
        return sock


class _CheckedHTTPSConnection(HTTPSConnection):
    def _new_conn(self) -> socket.socket:
        sock = super()._new_conn()
        _on_connect(sock)  # before the TLS handshake: nothing sent yet
        return sock


class _CheckedHTTPPool(HTTPConnectionPool):
    ConnectionCls = _CheckedHTTPConnection


class _CheckedHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _CheckedHTTPSConnection


class _CheckedAdapter(HTTPAdapter):
    """requests' adapter whose connections report to the running download."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {
            "http": _CheckedHTTPPool,
            "https": _CheckedHTTPSPool,
        }


def _media_session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # no proxies or .netrc credentials from the environment
    adapter = _CheckedAdapter(max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class MediaClient(Transport):
    """The transport plus media downloads.

    Args:
        url: Label Studio base URL (``LABEL_STUDIO_URL``).
        api_key: legacy token or Personal Access Token (``LABEL_STUDIO_API_KEY``).
        timeout: connect and read timeout of every request, in seconds.
        max_bytes: largest media file ``download`` accepts.
        media_policy: origins and addresses ``download`` may fetch (None: any, no checks).
        media_deadline_s: total time of one ``download`` (connect, headers, body, redirects).
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        *,
        timeout: float = 30.0,
        max_bytes: int = 256 * 1024**2,
        media_policy: MediaPolicy | None = None,
        media_deadline_s: float = 60.0,
    ) -> None:
        super().__init__(url, api_key, timeout=timeout)
        self.max_bytes = max_bytes
        self.media_policy = media_policy
        self.media_deadline_s = media_deadline_s

    def media_url(self, url: str, *, task_id: int | None = None) -> tuple[str, bool]:
        """Absolute URL to fetch for task data ``url``, and whether it gets our token.

        Raises:
            LabelStudioError: a cloud URI without ``task_id``, or an unsupported scheme.
        """
        scheme = urlsplit(url).scheme.lower()
        if scheme in CLOUD_SCHEMES:
            if task_id is None:
                raise LabelStudioError(f"{scheme}:// media needs a task id to presign")
            uri = base64.urlsafe_b64encode(url.encode()).decode()
            return f"{self.url}/tasks/{int(task_id)}/presign/?fileuri={uri}", True
        if scheme in ("http", "https"):
            return url, self._same_origin(url)
        if scheme == "" and url.startswith("/"):
            if self._prefix and not url.startswith(self._prefix + "/"):
                url = self._prefix + url
            return self._origin + url, True
        raise LabelStudioError(f"unsupported media URL scheme {scheme!r}: {safe_url(url)}")

    def _same_origin(self, url: str) -> bool:
        try:
            return urlsplit(url).netloc.lower() == self._netloc
        except ValueError:
            return False

    def download(self, url: str, *, task_id: int | None = None) -> bytes:
        """Fetch a task's media file (``/data/upload``, local files, http(s), cloud URIs).

        Args:
            url: the task data value, as LS stores or sends it.
            task_id: required for ``s3://``, ``gs://`` and ``azure-blob://`` URIs.

        Returns:
            The file's bytes.

        Raises:
            From Label Studio's own origin: MediaNotFound (404), LabelStudioAuthError
            (401/403), MediaTooLarge (over ``max_bytes``), MediaDeadline (over the deadline),
            LabelStudioUnavailable (connection error, 5xx). From any other origin, whatever
            went wrong (policy, network, status, size, deadline): MediaRefused, one generic
            reason, permanent.
        """
        target, with_auth = self.media_url(url, task_id=task_id)
        start = time.monotonic()
        fetch = _Fetch(start + self.media_deadline_s)
        session = _media_session()
        token = _current.set(fetch)
        try:
            data = self._fetch(target, with_auth, fetch, session)
        finally:
            _current.reset(token)
            fetch.cancel()
            session.close()
        logger.info(
            "downloaded %s (%d bytes, %.2fs)", safe_url(target), len(data), time.monotonic() - start
        )
        return data

    def _fetch(
        self, target: str, with_auth: bool, fetch: _Fetch, session: requests.Session
    ) -> bytes:
        """Follow redirects by hand (every hop checked, the token only to LS's origin), then
        read the body; errors of untrusted hops become the generic `MediaRefused`."""
        policy, first = self.media_policy, target
        for _ in range(_MAX_REDIRECTS + 1):
            trusted = policy is None or policy.trusted(target)
            try:
                reply = self._hop(target, with_auth, fetch, session, trusted)
                if not reply.is_redirect:
                    try:
                        return self._body(reply, target, fetch)
                    finally:
                        reply.close()
                location = reply.headers.get("Location", "")
                reply.close()
            except (LabelStudioError, requests.RequestException, OSError, ValueError):
                if trusted:
                    raise
                raise MediaRefused(f"media {safe_url(first)}: {GENERIC_REASON}") from None
            target = requests.compat.urljoin(target, location)
            with_auth = with_auth and self._same_origin(target)
        raise MediaRefused(f"media {safe_url(first)}: more than {_MAX_REDIRECTS} redirects")

    def _hop(
        self,
        target: str,
        with_auth: bool,
        fetch: _Fetch,
        session: requests.Session,
        trusted: bool,
    ) -> requests.Response:
        """One GET (headers read, body not yet), its connections vetted by the policy."""
        policy = self.media_policy
        host = policy.check_url(target) if policy is not None else ""
        left = fetch.deadline - time.monotonic()
        if left <= 0 or fetch.fired:
            raise MediaDeadline(f"{safe_url(target)}: over {self.media_deadline_s:g}s")
        fetch.check = None if trusted or policy is None else _vet(policy, host)
        wait = min(self.timeout, left)
        try:
            return self._send(
                "GET",
                target,
                auth=with_auth,
                media=True,
                redirects=False,
                session=session,
                timeout=(wait, wait),
            )
        except LabelStudioError:
            if fetch.fired or time.monotonic() > fetch.deadline:
                raise MediaDeadline(
                    f"{safe_url(target)}: over {self.media_deadline_s:g}s"
                ) from None
            raise

    def _body(self, reply: requests.Response, target: str, fetch: _Fetch) -> bytes:
        try:
            declared = int(reply.headers.get("Content-Length") or 0)
            if declared > self.max_bytes:
                raise MediaTooLarge(f"{safe_url(target)}: over {self.max_bytes} bytes")
            data = bytearray()
            for chunk in reply.iter_content(_CHUNK):
                data += chunk
                if len(data) > self.max_bytes:
                    raise MediaTooLarge(f"{safe_url(target)}: over {self.max_bytes} bytes")
                if time.monotonic() > fetch.deadline:
                    raise MediaDeadline(f"{safe_url(target)}: over {self.media_deadline_s:g}s")
        except requests.RequestException as exc:
            if fetch.fired or time.monotonic() > fetch.deadline:
                raise MediaDeadline(
                    f"{safe_url(target)}: over {self.media_deadline_s:g}s"
                ) from None
            if isinstance(exc, requests.Timeout):
                raise MediaDeadline(f"GET {safe_url(target)}: read timed out") from None
            raise LabelStudioUnavailable(
                f"GET {safe_url(target)} broke off: {type(exc).__name__}"
            ) from None
        return bytes(data)


def _vet(policy: MediaPolicy, host: str) -> Callable[[str | None], None]:
    return lambda ip: policy.check_address(host, ip)
