"""Label Studio transport: authentication, one request with a timeout, typed errors.

Authenticates with a legacy token (``Authorization: Token ...``) or a Personal Access Token. A
PAT is a JWT *refresh* token: it is exchanged at ``POST /api/token/refresh/`` for a 5-minute
access token sent as ``Authorization: Bearer ...``, refreshed shortly before it expires
(``docs/labelstudio-protocol.md`` §5). Plain ``requests`` is used rather than the SDK client so
that every call has a timeout and nothing retries behind the job system's back. Tokens and query
strings never reach logs or exception messages. Replies are validated into
`worker.labelstudio.replies`
models here (`parse`); a reply of the wrong shape is a `LabelStudioError`.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import threading
import time
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit

import requests
from pydantic import ValidationError

from worker.labelstudio.errors import (
    LabelStudioAuthError,
    LabelStudioError,
    LabelStudioNotFound,
    LabelStudioUnavailable,
    MediaNotFound,
)
from worker.labelstudio.replies import LSReply

__all__ = ["Transport", "parse", "parse_list", "safe_url"]

logger = logging.getLogger("worker.labelstudio.client")  # one logger for the whole client

_REFRESH_MARGIN_S = 30.0  # refresh the access token this long before its `exp`
_SAFE_PARAMS = frozenset({"d", "fileuri"})


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


def safe_url(url: str) -> str:
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

    def __init__(self, client: Transport, api_key: str) -> None:
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


class Transport:
    """Session, authentication and typed errors shared by the client's parts (thread-safe).

    Args:
        url: Label Studio base URL (``LABEL_STUDIO_URL``), e.g. ``http://ls:8080``.
        api_key: legacy token or Personal Access Token (``LABEL_STUDIO_API_KEY``).
        timeout: connect and read timeout of every request, in seconds.
    """

    def __init__(self, url: str, api_key: str, *, timeout: float = 30.0) -> None:
        if not api_key:
            raise LabelStudioAuthError("no Label Studio API key configured (LABEL_STUDIO_API_KEY)")
        self.url = url.rstrip("/")
        self.timeout = timeout
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
        session: requests.Session | None = None,
        timeout: float | tuple[float, float] | None = None,
        **kw: Any,
    ) -> requests.Response:
        """One request with timeout and typed errors; ``path_or_url`` may be an API path.

        ``media`` streams the body and turns a 404 into ``MediaNotFound``; ``session`` and
        ``timeout`` replace the client's own (a media download brings its own). An invalid
        URL is a permanent `LabelStudioError`.
        """
        url = path_or_url if "://" in path_or_url else self.url + path_or_url
        try:
            reply = (session or self._session).request(
                method,
                url,
                auth=self._auth if auth else None,
                timeout=self.timeout if timeout is None else timeout,
                stream=media,
                allow_redirects=redirects,
                **kw,
            )
        except (
            requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema,
            requests.exceptions.InvalidSchema,
        ) as exc:
            raise LabelStudioError(f"{method} {safe_url(url)}: {type(exc).__name__}") from None
        except requests.Timeout as exc:
            raise LabelStudioUnavailable(
                f"{method} {safe_url(url)} timed out: {type(exc).__name__}"
            ) from None
        except requests.RequestException as exc:
            raise LabelStudioUnavailable(
                f"{method} {safe_url(url)} failed: {type(exc).__name__}"
            ) from None
        if reply.status_code >= 400:
            reply.close()
            self._raise_for(method, url, reply.status_code, auth=auth, media=media)
        return reply

    def _raise_for(self, method: str, url: str, status: int, *, auth: bool, media: bool) -> None:
        """Map an HTTP error status to a typed exception."""
        where = f"{method} {safe_url(url)} -> {status}"
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


Reply = TypeVar("Reply", bound=LSReply)


def parse(model: type[Reply], raw: Any, path: str) -> Reply:
    """Validate one LS reply object; a reply of the wrong shape is an `LabelStudioError`."""
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise LabelStudioError(f"{path}: unexpected reply ({exc.error_count()} errors)") from None


def parse_list(raw: Any, path: str) -> list[Any]:
    """A list reply, or a `LabelStudioError` naming what came instead."""
    if not isinstance(raw, list):
        raise LabelStudioError(f"{path}: expected a list, got {type(raw).__name__}")
    return raw
