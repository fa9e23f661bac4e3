"""Media download from Label Studio and allowed hosts: the client's media part.

`MediaClient.download` fetches a task's image (``/data/upload``, local files, http(s), cloud URIs
presigned by LS) within ``max_bytes`` and a total deadline, following redirects by hand so that
every hop is checked by the media policy (`worker.labelstudio.media_policy`) and our token only
goes to Label
Studio's own origin.
"""

from __future__ import annotations

import base64
import logging
import socket
import threading
import time
from urllib.parse import urlsplit

import requests

from worker.labelstudio.errors import (
    LabelStudioError,
    LabelStudioUnavailable,
    MediaDeadline,
    MediaRefused,
    MediaTooLarge,
)
from worker.labelstudio.media_policy import MediaPolicy, peer_address, socket_of
from worker.labelstudio.transport import Transport, safe_url

__all__ = ["CLOUD_SCHEMES", "MediaClient"]

logger = logging.getLogger("worker.labelstudio.client")  # the client's one logger

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")  # resolved by LS's presign endpoint
_CHUNK = 1 << 16
_MAX_REDIRECTS = 5


class MediaClient(Transport):
    """The transport plus media downloads.

    Args:
        url: Label Studio base URL (``LABEL_STUDIO_URL``).
        api_key: legacy token or Personal Access Token (``LABEL_STUDIO_API_KEY``).
        timeout: connect and read timeout of every request, in seconds.
        max_bytes: largest media file ``download`` accepts.
        media_policy: hosts and addresses ``download`` may fetch (None: any, no checks).
        media_deadline_s: total time of one ``download``, redirects included.
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
            return url, urlsplit(url).netloc.lower() == self._netloc
        if scheme == "" and url.startswith("/"):
            if self._prefix and not url.startswith(self._prefix + "/"):
                url = self._prefix + url
            return self._origin + url, True
        raise LabelStudioError(f"unsupported media URL scheme {scheme!r}: {safe_url(url)}")

    def download(self, url: str, *, task_id: int | None = None) -> bytes:
        """Fetch a task's media file (``/data/upload``, local files, http(s), cloud URIs).

        Args:
            url: the task data value, as LS stores or sends it.
            task_id: required for ``s3://``, ``gs://`` and ``azure-blob://`` URIs.

        Returns:
            The file's bytes.

        Raises:
            MediaNotFound: 404. LabelStudioAuthError: 401/403. MediaTooLarge: over
            ``max_bytes``. LabelStudioUnavailable: connection error, timeout or 5xx.
        """
        target, with_auth = self.media_url(url, task_id=task_id)
        start = time.monotonic()
        deadline = start + self.media_deadline_s
        reply = self._open_media(target, with_auth, deadline)
        cutoff = _Cutoff(reply, deadline)
        try:
            declared = int(reply.headers.get("Content-Length") or 0)
            if declared > self.max_bytes:
                raise MediaTooLarge(f"{safe_url(target)}: over {self.max_bytes} bytes")
            data = bytearray()
            for chunk in reply.iter_content(_CHUNK):
                data += chunk
                if len(data) > self.max_bytes:
                    raise MediaTooLarge(f"{safe_url(target)}: over {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise MediaDeadline(f"{safe_url(target)}: over {self.media_deadline_s:g}s")
        except requests.RequestException as exc:
            if cutoff.fired or time.monotonic() > deadline:
                raise MediaDeadline(
                    f"{safe_url(target)}: over {self.media_deadline_s:g}s"
                ) from None
            if isinstance(exc, requests.Timeout):
                raise MediaDeadline(f"GET {safe_url(target)}: read timed out") from None
            raise LabelStudioUnavailable(
                f"GET {safe_url(target)} broke off: {type(exc).__name__}"
            ) from None
        finally:
            cutoff.cancel()
            reply.close()
        logger.info(
            "downloaded %s (%d bytes, %.2fs)", safe_url(target), len(data), time.monotonic() - start
        )
        return bytes(data)

    def _open_media(self, target: str, with_auth: bool, deadline: float) -> requests.Response:
        """GET the media URL, following redirects by hand so that every hop is checked by the
        policy and our token only ever goes to Label Studio's own origin."""
        policy = self.media_policy
        for _ in range(_MAX_REDIRECTS + 1):
            host = policy.check_url(target) if policy is not None else ""
            if time.monotonic() > deadline:
                raise MediaDeadline(f"{safe_url(target)}: over {self.media_deadline_s:g}s")
            try:
                reply = self._send("GET", target, auth=with_auth, media=True, redirects=False)
            except LabelStudioError as exc:
                if policy is None or policy.trusted(host):
                    raise
                raise type(exc)(f"GET {safe_url(target)}: {type(exc).__name__}") from None
            if policy is not None:
                try:
                    policy.check_address(host, peer_address(reply.raw))
                except MediaRefused:
                    reply.close()
                    raise
            if not reply.is_redirect:
                return reply
            location = reply.headers.get("Location", "")
            reply.close()
            target = requests.compat.urljoin(target, location)
            with_auth = urlsplit(target).netloc.lower() == self._netloc and with_auth
        raise MediaRefused(f"{safe_url(target)}: more than {_MAX_REDIRECTS} redirects")


class _Cutoff:
    """Shuts the download's socket down at the deadline: a server that drips bytes slower than
    the read timeout would otherwise hold the worker indefinitely."""

    def __init__(self, reply: requests.Response, deadline: float) -> None:
        self.fired = False
        self._sock = socket_of(reply.raw)
        self._timer = threading.Timer(max(0.0, deadline - time.monotonic()), self._fire)
        self._timer.daemon = True
        self._timer.start()

    def _fire(self) -> None:
        self.fired = True
        if self._sock is not None:
            try:
                self._sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cancel(self) -> None:
        """Stop the timer (the download ended in time)."""
        self._timer.cancel()
