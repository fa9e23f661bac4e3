"""FastAPI dependencies: settings, store and queues from `app.state`, and the two auth checks."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request, status

from backend.api.guard import basic_auth_ok
from backend.state.jobs import Jobs
from backend.state.settings import Settings, get_settings
from backend.state.store import Store


def _store(request: Request) -> Store:
    return request.app.state.store


def _jobs(request: Request) -> Jobs:
    return request.app.state.jobs


SettingsDep = Annotated[Settings, Depends(get_settings)]
StoreDep = Annotated[Store, Depends(_store)]
JobsDep = Annotated[Jobs, Depends(_jobs)]


def _equal(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def require_basic_auth(settings: SettingsDep, request: Request) -> None:
    """HTTP Basic, only when BASIC_AUTH_USER/PASS are set (LS sends it on the calls it makes).

    `guard.RequestGuard` already checked it before the body was read; this is the second lock.
    """
    if settings.basic_auth_user is None or settings.basic_auth_pass is None:
        return
    if not basic_auth_ok(settings, request.headers.get("authorization")):
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "invalid or missing basic auth credentials",
            headers={"WWW-Authenticate": "Basic"},
        )


async def require_webhook_secret(settings: SettingsDep, request: Request) -> None:
    """Shared-secret header on /webhook, only when WEBHOOK_SECRET is set (LS sends no auth).

    START_TRAINING is sent by LS's ML API client, not by the webhook, so it carries basic auth
    (when configured) instead of the webhook headers; it is accepted with either. When no basic
    auth is configured it is accepted as is: an event only queues work (a deduplicated sync);
    the config and every other fact are read from LS by the worker.
    """
    if settings.webhook_secret is None:
        return
    given = request.headers.get(settings.webhook_secret_header, "")
    if _equal(given, settings.webhook_secret.get_secret_value()) or basic_auth_ok(
        settings, request.headers.get("authorization")
    ):
        return
    if settings.basic_auth_user is None:
        try:
            action = (await request.json()).get("action")
        except Exception:  # malformed bodies are rejected below like any unauthenticated call
            action = None
        if action == "START_TRAINING":
            return
    raise HTTPException(
        status.HTTP_401_UNAUTHORIZED, f"missing or wrong {settings.webhook_secret_header} header"
    )


BasicAuth = Depends(require_basic_auth)
WebhookAuth = Depends(require_webhook_secret)
