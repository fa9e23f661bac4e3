"""Label Studio REST client for the workers: media download and deferred predictions.

Authenticates with a legacy token (``Authorization: Token ...``) or a Personal Access Token. A
PAT is a JWT *refresh* token: it is exchanged at ``POST /api/token/refresh/`` for a 5-minute
access token sent as ``Authorization: Bearer ...``, refreshed shortly before it expires
(``docs/labelstudio-protocol.md`` §5). Plain ``requests`` is used rather than the SDK client so
that every call has a timeout and nothing retries behind the job system's back.

Errors are typed: ``LabelStudioUnavailable`` (connection errors, timeouts, 5xx) is the only
retryable one. Tokens and query strings never reach logs or exception messages.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import socket
import threading
import time
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
from pydantic import ValidationError

from worker.lsmodels import LSAnnotation, LSPrediction, LSProject, LSReply, LSTask

if TYPE_CHECKING:
    from worker.media import MediaPolicy

__all__ = [
    "CLOUD_SCHEMES",
    "LabelStudioAuthError",
    "LabelStudioClient",
    "LabelStudioError",
    "LabelStudioNotFound",
    "LabelStudioUnavailable",
    "MediaDeadline",
    "MediaNotFound",
    "MediaRefused",
    "MediaTooLarge",
]

logger = logging.getLogger(__name__)

CLOUD_SCHEMES = ("s3", "gs", "azure-blob", "azure-spi")  # resolved by LS's presign endpoint
_REFRESH_MARGIN_S = 30.0  # refresh the access token this long before its `exp`
_CHUNK = 1 << 16
_SAFE_PARAMS = frozenset({"d", "fileuri"})
_MAX_REDIRECTS = 5


class LabelStudioError(Exception):
    """A Label Studio request failed; ``status`` is the HTTP status, if there was a reply."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class LabelStudioUnavailable(LabelStudioError):
    """Connection error, timeout or 5xx: retryable."""


class LabelStudioAuthError(LabelStudioError):
    """401/403: the token is wrong, revoked, or lacks access (legacy tokens disabled?)."""


class LabelStudioNotFound(LabelStudioError):
    """404 from the REST API (the object was deleted, or never existed)."""


class MediaNotFound(LabelStudioNotFound):
    """404 for a media URL."""


class MediaTooLarge(LabelStudioError):
    """The media file is larger than the client's ``max_bytes``."""


class MediaRefused(LabelStudioError):
    """A media URL or address the media policy does not allow (permanent, not retried)."""


class MediaDeadline(LabelStudioError):
    """A media download that did not finish within its total deadline (permanent)."""


def _jwt_claims(token: str) -> dict[str, Any] | None:
    """Unverified JWT payload, or None when the token is not a JWT (a legacy token)."""
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        payload = base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4))
        claims = json.loads(payload)
    except (binascii.Error, ValueError):
        return None
    return claims if isinstance(claims, dict) else None


def _safe(url: str) -> str:
    """URL for logs and messages: query parameters other than LS's own dropped.

    Presigned cloud URLs carry signatures in the query; ``d`` (local files) and ``fileuri``
    (presign) are plain paths and kept because they say which file failed.
    """
    parts = urlsplit(url)
    kept = [(k, v) for k, v in parse_qsl(parts.query) if k in _SAFE_PARAMS]
    query = f"?{urlencode(kept)}" if kept else ""
    origin = f"{parts.scheme}://{parts.netloc}" if parts.netloc else ""
    return f"{origin}{parts.path}{query}"


class _TokenAuth(requests.auth.AuthBase):
    """Adds the Authorization header; exchanges a PAT for access tokens (thread-safe)."""

    def __init__(self, client: LabelStudioClient, api_key: str) -> None:
        self._client = client
        self._key = api_key
        claims = _jwt_claims(api_key)
        self._kind = "legacy" if claims is None else str(claims.get("token_type", "access"))
        self._access: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    @property
    def kind(self) -> str:
        """``legacy``, ``refresh`` (a PAT) or ``access``."""
        return self._kind

    def header(self) -> str:
        """The Authorization header value, refreshing a PAT's access token when due."""
        if self._kind == "legacy":
            return f"Token {self._key}"
        if self._kind != "refresh":
            return f"Bearer {self._key}"
        with self._lock:
            if self._access is None or time.time() > self._expires - _REFRESH_MARGIN_S:
                self._access, self._expires = self._client._refresh(self._key)
            return f"Bearer {self._access}"

    def invalidate(self) -> None:
        """Forget the cached access token (after a 401), so the next call refreshes."""
        with self._lock:
            self._access = None

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        request.headers["Authorization"] = self.header()
        return request


class LabelStudioClient:
    """Thin, typed Label Studio REST client (one per worker process; thread-safe).

    Args:
        url: Label Studio base URL (``LABEL_STUDIO_URL``), e.g. ``http://ls:8080``.
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
        if not api_key:
            raise LabelStudioAuthError("no Label Studio API key configured (LABEL_STUDIO_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.media_policy = media_policy
        self.media_deadline_s = media_deadline_s
        parts = urlsplit(self.url)
        self._origin = f"{parts.scheme}://{parts.netloc}"
        self._netloc = parts.netloc.lower()
        self._prefix = parts.path  # LS served under a sub-path, e.g. "/label-studio"
        self._session = requests.Session()
        self._session.trust_env = False  # no proxies or .netrc credentials from the environment
        self._auth = _TokenAuth(self, api_key)

    @property
    def token_kind(self) -> str:
        """``legacy``, ``refresh`` (PAT) or ``access``; never the token itself."""
        return self._auth.kind

    def close(self) -> None:
        """Close pooled connections."""
        self._session.close()

    # ------------------------------------------------------------------ transport

    def _refresh(self, pat: str) -> tuple[str, float]:
        """Exchange a PAT for an access token; returns (token, expiry as epoch seconds)."""
        reply = self._send("POST", "/api/token/refresh/", json={"refresh": pat}, auth=False)
        access = reply.json().get("access")
        claims = _jwt_claims(access) if isinstance(access, str) else None
        if claims is None:
            raise LabelStudioError("token refresh returned no access token", status=200)
        logger.debug("refreshed Label Studio access token")
        return access, float(claims.get("exp", time.time() + 60))

    def _send(
        self,
        method: str,
        path_or_url: str,
        *,
        auth: bool = True,
        media: bool = False,
        redirects: bool = True,
        **kw: Any,
    ) -> requests.Response:
        """One request with timeout and typed errors; ``path_or_url`` may be an API path.

        ``media`` streams the body and turns a 404 into ``MediaNotFound``.
        """
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        try:
            reply = self._session.request(
                method,
                url,
                auth=self._auth if auth else None,
                timeout=self.timeout,
                stream=media,
                allow_redirects=redirects,
                **kw,
            )
        except requests.Timeout as exc:
            raise LabelStudioUnavailable(
                f"{method} {_safe(url)} timed out: {type(exc).__name__}"
            ) from None
        except requests.RequestException as exc:
            raise LabelStudioUnavailable(
                f"{method} {_safe(url)} failed: {type(exc).__name__}"
            ) from None
        if reply.status_code >= 400:
            reply.close()
            self._raise_for(method, url, reply.status_code, auth=auth, media=media)
        return reply

    def _raise_for(self, method: str, url: str, status: int, *, auth: bool, media: bool) -> None:
        """Map an HTTP error status to a typed exception."""
        where = f"{method} {_safe(url)} -> {status}"
        if status in (401, 403):
            if auth:
                self._auth.invalidate()
            hint = f" (token kind: {self._auth.kind}; legacy tokens enabled in LS?)"
            raise LabelStudioAuthError(where + hint, status=status)
        if status == 404:
            raise (MediaNotFound if media else LabelStudioNotFound)(where, status=status)
        if status >= 500 or status in (408, 429):
            raise LabelStudioUnavailable(where, status=status)
        raise LabelStudioError(where, status=status)

    def _json(self, method: str, path: str, **kw: Any) -> Any:
        """Send and decode a JSON reply."""
        reply = self._send(method, path, **kw)
        try:
            return reply.json()
        except ValueError:
            raise LabelStudioError(
                f"{method} {path}: reply is not JSON", status=reply.status_code
            ) from None

    # ------------------------------------------------------------------ media

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
        raise LabelStudioError(f"unsupported media URL scheme {scheme!r}: {_safe(url)}")

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
                raise MediaTooLarge(f"{_safe(target)}: over {self.max_bytes} bytes")
            data = bytearray()
            for chunk in reply.iter_content(_CHUNK):
                data += chunk
                if len(data) > self.max_bytes:
                    raise MediaTooLarge(f"{_safe(target)}: over {self.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise MediaDeadline(f"{_safe(target)}: over {self.media_deadline_s:g}s")
        except requests.RequestException as exc:
            if cutoff.fired or time.monotonic() > deadline:
                raise MediaDeadline(f"{_safe(target)}: over {self.media_deadline_s:g}s") from None
            if isinstance(exc, requests.Timeout):
                raise MediaDeadline(f"GET {_safe(target)}: read timed out") from None
            raise LabelStudioUnavailable(
                f"GET {_safe(target)} broke off: {type(exc).__name__}"
            ) from None
        finally:
            cutoff.cancel()
            reply.close()
        logger.info(
            "downloaded %s (%d bytes, %.2fs)", _safe(target), len(data), time.monotonic() - start
        )
        return bytes(data)

    def _open_media(self, target: str, with_auth: bool, deadline: float) -> requests.Response:
        """GET the media URL, following redirects by hand so that every hop is checked by the
        policy and our token only ever goes to Label Studio's own origin."""
        policy = self.media_policy
        for _ in range(_MAX_REDIRECTS + 1):
            host = policy.check_url(target) if policy is not None else ""
            if time.monotonic() > deadline:
                raise MediaDeadline(f"{_safe(target)}: over {self.media_deadline_s:g}s")
            try:
                reply = self._send("GET", target, auth=with_auth, media=True, redirects=False)
            except LabelStudioError as exc:
                if policy is None or policy.trusted(host):
                    raise
                raise type(exc)(f"GET {_safe(target)}: {type(exc).__name__}") from None
            if policy is not None:
                from worker.media import peer_address

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
        raise MediaRefused(f"{_safe(target)}: more than {_MAX_REDIRECTS} redirects")

    # ------------------------------------------------------------------ tasks, annotations

    def list_tasks(self, project: int, *, page_size: int = 100) -> list[LSTask]:
        """All tasks of a project, following pagination, in LS's default order."""
        tasks: list[LSTask] = []
        page = 1
        while True:
            params = {"project": int(project), "page": page, "page_size": page_size}
            reply = self._json("GET", "/api/tasks/", params=params)
            if not isinstance(reply, dict):
                raise LabelStudioError(
                    f"/api/tasks/: expected an object, got {type(reply).__name__}"
                )
            batch = reply.get("tasks") or []
            tasks += [_parse(LSTask, task, "/api/tasks/") for task in batch]
            if not batch or len(tasks) >= int(reply.get("total", 0)):
                return tasks
            page += 1

    def get_task(self, task_id: int) -> LSTask:
        """One task as LS stores it (data, project); raises LabelStudioNotFound when gone."""
        path = f"/api/tasks/{int(task_id)}/"
        return _parse(LSTask, self._json("GET", path), path)

    def get_project(self, project: int) -> LSProject:
        """A project's id and label config; raises LabelStudioNotFound for an unknown id."""
        path = f"/api/projects/{int(project)}/"
        return _parse(LSProject, self._json("GET", path), path)

    def get_annotation(self, annotation_id: int) -> LSAnnotation | None:
        """One annotation, or None when it no longer exists."""
        path = f"/api/annotations/{int(annotation_id)}/"
        try:
            return _parse(LSAnnotation, self._json("GET", path), path)
        except LabelStudioNotFound:
            return None

    def list_annotations(self, task_id: int) -> list[LSAnnotation]:
        """All annotations of a task (including cancelled ones; check ``was_cancelled``)."""
        path = f"/api/tasks/{int(task_id)}/annotations/"
        return [_parse(LSAnnotation, ann, path) for ann in _list(self._json("GET", path), path)]

    # ------------------------------------------------------------------ predictions

    def model_versions(self, project: int) -> dict[str, int]:
        """Prediction count per model_version in a project (one request, any project size)."""
        return dict(self._json("GET", f"/api/projects/{int(project)}/model-versions/"))

    def task_predictions(self, task_id: int) -> list[LSPrediction]:
        """All predictions stored for a task."""
        path = "/api/predictions/"
        reply = self._json("GET", path, params={"task": int(task_id)})
        return [_parse(LSPrediction, pred, path) for pred in _list(reply, path)]

    def create_prediction(
        self, task_id: int, result: list[dict[str, Any]], score: float, model_version: str
    ) -> int:
        """Store a prediction (deferred path); returns its id.

        Args:
            task_id: LS task id.
            result: result regions, e.g. from ``worker.brush.masks_to_result``.
            score: prediction-level score.
            model_version: must equal the version ``/setup`` currently returns, or LS hides it.
        """
        body = {
            "task": int(task_id),
            "result": result,
            "score": float(score),
            "model_version": model_version,
        }
        path = "/api/predictions/"
        created = _parse(LSPrediction, self._json("POST", path, json=body), path)
        logger.info("created prediction %s for task %s (%s)", created.id, task_id, model_version)
        return created.id

    def get_prediction(self, prediction_id: int) -> LSPrediction | None:
        """One prediction, or None when it no longer exists."""
        path = f"/api/predictions/{int(prediction_id)}/"
        try:
            return _parse(LSPrediction, self._json("GET", path), path)
        except LabelStudioNotFound:
            return None


class _Cutoff:
    """Shuts the download's socket down at the deadline: a server that drips bytes slower than
    the read timeout would otherwise hold the worker indefinitely."""

    def __init__(self, reply: requests.Response, deadline: float) -> None:
        from worker.media import socket_of

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
        self._timer.cancel()


Reply = TypeVar("Reply", bound=LSReply)


def _parse(model: type[Reply], raw: Any, path: str) -> Reply:
    """Validate one LS reply object; a reply of the wrong shape is an `LabelStudioError`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise LabelStudioError(f"{path}: unexpected reply ({exc.error_count()} errors)") from None


def _list(raw: Any, path: str) -> list[Any]:
    if not isinstance(raw, list):
        raise LabelStudioError(f"{path}: expected a list, got {type(raw).__name__}")
    return raw
