"""The request guard, a pure ASGI middleware that runs before any body is read (issue 7).

- Basic auth (when BASIC_AUTH_USER/PASS are set) on every path but /webhook (its own secret),
  including /metrics, /docs, /redoc and /openapi.json unless PUBLIC_DOCS opts them out.
  Credentials are decoded as UTF-8, so a non-ASCII password works.
- Request bodies are capped at MAX_BODY_BYTES: a declared Content-Length over the cap is refused
  at once (413), a streamed body is read at most up to the cap, then handed to the app.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.state.settings import Settings

OWN_AUTH_PATHS = ("/webhook",)  # authenticated by the webhook secret (routes, deps.py)
DOC_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/metrics")


def basic_credentials(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) as UTF-8 bytes from an `Authorization: Basic ...` header, or None."""
    if not header:
        return None
    scheme, _, param = header.partition(" ")
    if scheme.lower() != "basic" or not param:
        return None
    try:
        raw = base64.b64decode(param.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    return (user, password) if sep else None


def basic_auth_ok(settings: Settings, header: str | None) -> bool:
    """True when the header carries the configured user and password (constant-time compare)."""
    if settings.basic_auth_user is None or settings.basic_auth_pass is None:
        return False
    given = basic_credentials(header)
    if given is None:
        return False
    want_user = settings.basic_auth_user.encode("utf-8")
    want_pass = settings.basic_auth_pass.get_secret_value().encode("utf-8")
    return hmac.compare_digest(given[0], want_user) & hmac.compare_digest(given[1], want_pass)


def needs_basic_auth(settings: Settings, path: str) -> bool:
    """Whether `path` is behind basic auth (always False when none is configured)."""
    if settings.basic_auth_user is None or path in OWN_AUTH_PATHS:
        return False
    return not (settings.public_docs and path in DOC_PATHS)


class RequestGuard:
    """Refuse unauthenticated and oversized requests before the app parses anything."""

    def __init__(self, app: ASGIApp, settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if needs_basic_auth(self.settings, scope["path"]) and not basic_auth_ok(
            self.settings, headers.get("authorization")
        ):
            await _reply(send, 401, "invalid or missing basic auth credentials", basic=True)
            return
        cap = self.settings.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.strip().isdigit() and int(declared) > cap:
            await _reply(send, 413, f"request body over {cap} bytes")
            return
        body = bytearray()
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # client went away
                return
            body += message.get("body", b"")
            more = bool(message.get("more_body"))
            if len(body) > cap:
                await _reply(send, 413, f"request body over {cap} bytes")
                return
        await self.app(scope, _replay(bytes(body), receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()  # http.disconnect, when the client leaves

    return replay


async def _reply(send: Send, status: int, detail: str, *, basic: bool = False) -> None:
    payload = json.dumps({"detail": detail}).encode()
    headers: list[Any] = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(payload)).encode()),
    ]
    if basic:
        headers.append((b"www-authenticate", b"Basic"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})
