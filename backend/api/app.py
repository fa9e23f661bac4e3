"""`create_app(settings)`: the FastAPI app; the lifespan opens Redis, the store and the queues.

Run it with `python -m backend.run` (Redis + worker + API) or, API only,
`uvicorn backend.app:create_app --factory --port 9090` with REDIS_URL set.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import anyio.to_thread
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from backend.api.candidates import router as candidates_router
from backend.api.guard import RequestGuard
from backend.api.metrics import Metrics
from backend.api.routes import router
from backend.api.status import router as status_router
from backend.state.jobs import Jobs, connect
from backend.state.labelconfig import LabelConfigError
from backend.state.logs import setup_logging
from backend.state.settings import Settings, get_settings
from backend.state.store import Store, StoreUnavailable

logger = logging.getLogger(__name__)

# /predict holds a thread while it waits (up to PREDICT_DEADLINE_S); keep room for /health.
THREADS = 100


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app; `settings` overrides `get_settings()` (tests)."""
    if settings is None:  # the production entry (uvicorn --factory): configure logging too
        settings = get_settings()
        setup_logging(settings.log_level, settings.log_format, "api")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if not settings.redis_url:
            raise RuntimeError("REDIS_URL is not set (python -m backend.run sets it)")
        anyio.to_thread.current_default_thread_limiter().total_tokens = THREADS
        conn = connect(settings.redis_url)
        app.state.store = Store(conn, settings)
        app.state.jobs = Jobs(conn, settings, app.state.store)
        app.state.metrics = Metrics(app.state.store)
        if settings.random_weights:
            logger.warning(
                "RANDOM WEIGHTS (%s): predictions are noise, wiring checks only",
                settings.model_class,
            )
        if settings.basic_auth_user is None:
            logger.warning(
                "no BASIC_AUTH_USER/PASS: every caller that reaches this port is trusted "
                "(README, 'Production setup')"
            )
        try:
            yield
        finally:
            conn.close()

    app = FastAPI(title="GF-SAM Label Studio ML backend", lifespan=lifespan)
    app.dependency_overrides[get_settings] = lambda: settings
    # /predict calls waiting at once; the rest answer at once (delivered through the LS API), so
    # waiting calls never hold more than this many of the THREADS that /health and /setup need.
    app.state.predict_waiters = threading.BoundedSemaphore(max(settings.predict_max_waiters, 1))
    app.state.predict_wait_allowed = settings.predict_max_waiters > 0
    # Clicks have a cap of their own (issue 22): together both caps stay well under THREADS.
    app.state.click_waiters = threading.BoundedSemaphore(settings.interactive_max_waiters)
    app.add_middleware(RequestGuard, settings=settings)
    app.include_router(router)
    app.include_router(status_router)  # the operator's view (issue 13)
    app.include_router(candidates_router)  # discovery (issue 11)
    _install_handlers(app)
    return app


def _install_handlers(app: FastAPI) -> None:
    """Named exceptions -> status codes with a message; never a traceback in a reply."""

    @app.middleware("http")
    async def timing(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "other")
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:
            metrics.http_latency.labels(path).observe(time.perf_counter() - started)
        return response

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc.errors())}, status_code=422)

    @app.exception_handler(ValidationError)
    async def invalid_payload(request: Request, exc: ValidationError) -> JSONResponse:
        return JSONResponse({"detail": _describe(exc.errors())}, status_code=422)

    @app.exception_handler(LabelConfigError)
    async def bad_config(request: Request, exc: LabelConfigError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(StoreUnavailable)
    async def store_down(request: Request, exc: Exception) -> JSONResponse:
        logger.error("Redis unavailable on %s: %s", request.url.path, exc)
        return JSONResponse({"detail": "backend store (Redis) unavailable"}, status_code=503)

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return JSONResponse({"detail": "internal error (see backend logs)"}, status_code=500)


def _describe(errors: Sequence[Any]) -> str:
    """'body.tasks.0.id: Input should be a valid integer; ...' without echoing the input."""
    parts = []
    for err in errors[:10]:
        loc = ".".join(str(x) for x in err.get("loc", ()))
        parts.append(f"{loc}: {err.get('msg', 'invalid')}" if loc else str(err.get("msg")))
    return "; ".join(parts) or "invalid request"
