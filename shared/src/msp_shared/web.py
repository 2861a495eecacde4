"""What every service's HTTP side shares: typed app keys, the error and identity middlewares,
health endpoints, the database pool's lifecycle and the process runner.

A service's app factory calls `service_app(...)`, adds its routes and its own cleanup
contexts, and returns the app: no import-time side effects, no globals, so tests build the
same app with a test clock and a test database."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ValidationError

from . import db, identity, telemetry
from .clock import Clock, SystemClock
from .config import ServiceSettings
from .errors import ApiError

log = logging.getLogger(__name__)

SETTINGS = web.AppKey("settings", ServiceSettings)
CLOCK = web.AppKey("clock", Clock)
POOL = web.AppKey("pool", asyncpg.Pool)
BUS = web.AppKey("bus", Any)  # msp_shared.bus.Bus; Any avoids importing aio-pika here
READY_CHECKS = web.AppKey("ready_checks", list)
IDENTITY = web.RequestKey("msp.identity", identity.Identity)  # the verified gateway Identity

PUBLIC_PATHS = frozenset({"/healthz", "/readyz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(error: ApiError) -> web.Response:
    headers = {}
    if error.status == 429 and error.details.get("retry_after"):
        headers["Retry-After"] = str(error.details["retry_after"])
    return web.json_response(error.body(), status=error.status, headers=headers)


def exception_response(request: web.Request, exc: Exception) -> web.Response | None:
    """The API-shaped answer to an exception a handler raised; None: let it propagate (an
    HTTPException below 400, e.g. a redirect). For middlewares that fold this step in."""
    if isinstance(exc, ApiError):
        return error_response(exc)
    if isinstance(exc, web.HTTPRequestEntityTooLarge):
        return error_response(ApiError(413, "too_large", "The request body is too large."))
    if isinstance(exc, web.HTTPException):
        if exc.status < 400:
            return None
        code = exc.reason.lower().replace(" ", "_") if exc.reason else "http_error"
        return error_response(ApiError(exc.status, code, exc.text or exc.reason or "Request failed."))
    log.exception("unhandled error", extra={"path": request.path, "method": request.method})
    return error_response(ApiError(500, "internal_error", "Something went wrong on our side."))


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        response = exception_response(request, exc)
        if response is None:
            raise
        _forget_frames(exc)
        return response


def _forget_frames(exc: BaseException) -> None:
    """Drop the traceback of an error turned into an answer. Errors raised again and again are
    often one shared instance (INVALID_CREDENTIALS...), and Python adds each raise's frames to
    the instance's traceback: every failed login would stay in memory, typed password included."""
    exc.__traceback__ = None
    exc.__context__ = None
    exc.__cause__ = None


def identity_middleware(secret: bytes, clock: Clock, *, exempt: frozenset[tuple[str, str]] = frozenset()) -> Callable:
    """Refuse every request that does not carry a valid gateway identity header, except the
    health probes and the (method, path) pairs in `exempt` (callers with proofs of their
    own, such as Stripe's signed webhooks)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in PUBLIC_PATHS or (request.method, request.path) in exempt:
            return await handler(request)
        try:
            request[IDENTITY] = identity.verify(
                request.headers.get(identity.HEADER),
                secret=secret,
                method=request.method,
                path=request.path,
                now=clock.now().timestamp(),
            )
        except identity.IdentityError:
            raise ApiError(401, "gateway_identity_required", "Requests must come through the gateway.")
        return await handler(request)

    return middleware


def current_identity(request: web.Request) -> identity.Identity:
    return request[IDENTITY]


def require_user(request: web.Request) -> identity.Identity:
    ident = request[IDENTITY]
    if not ident.authenticated:
        raise ApiError(401, "not_signed_in", "Please sign in.")
    return ident


async def read_limited(request: web.Request, max_bytes: int) -> bytes:
    """The raw body, refused with 413 past `max_bytes` whether or not a length was declared
    (client_max_size does not bound bodies read from request.content)."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise ApiError(413, "too_large", "The request body is too large.")
    raw = await request.content.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise ApiError(413, "too_large", "The request body is too large.")
    return raw


async def read_model(request: web.Request, model: type[BaseModel], *, max_bytes: int = 64 * 1024) -> Any:
    """Parse a JSON body into a pydantic model, with errors in the API's shape."""
    raw = await read_limited(request, max_bytes)
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        fields = {".".join(str(p) for p in e["loc"]) or "body": e["msg"] for e in exc.errors()}
        raise ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": fields})


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "service": request.app[SETTINGS].service_name})


async def readyz(request: web.Request) -> web.Response:
    problems = {}
    for name, check in request.app[READY_CHECKS]:
        try:
            await asyncio.wait_for(check(), timeout=2)
        except Exception as exc:  # a readiness probe reports, it does not raise
            problems[name] = type(exc).__name__
    status = 503 if problems else 200
    return web.json_response({"status": "ready" if not problems else "not_ready", "problems": problems}, status=status)


def pool_ctx(schema: str, migrations: Path | None) -> Callable[[web.Application], AsyncIterator[None]]:
    async def ctx(app: web.Application) -> AsyncIterator[None]:
        settings = app[SETTINGS]
        if settings.migrate_on_start:
            await db.migrate(settings.database_url, schema, migrations)
        pool = await db.create_pool(
            settings.database_url, schema, min_size=settings.db_pool_min, max_size=settings.db_pool_max
        )
        app[POOL] = pool

        async def database_ready() -> None:
            await pool.fetchval("SELECT 1")

        app[READY_CHECKS].append(("database", database_ready))
        yield
        await pool.close()

    return ctx


def service_app(
    settings: ServiceSettings,
    *,
    schema: str | None,
    migrations: Path | None = None,
    clock: Clock | None = None,
    check_identity: bool = True,
    identity_exempt: frozenset[tuple[str, str]] = frozenset(),
    client_max_size: int = 1024 * 1024,
    middlewares: list | None = None,
) -> web.Application:
    """`middlewares` replaces the standard stack (tracing, errors, identity): for an app (the
    gateway) that folds those steps into one middleware of its own."""
    clock = clock or SystemClock()
    if middlewares is None:
        # tracing first: its SERVER span covers the error and identity middlewares too
        middlewares = [telemetry.tracing_middleware, error_middleware]
        if check_identity:
            middlewares.append(identity_middleware(
                settings.identity_secret.get_secret_value().encode(), clock, exempt=identity_exempt))
    app = web.Application(middlewares=middlewares, client_max_size=client_max_size)
    app[SETTINGS] = settings
    app[CLOCK] = clock
    app[READY_CHECKS] = []
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    if schema is not None:
        from .retention import retention_ctx  # here: retention needs this module's keys

        app.cleanup_ctx.append(pool_ctx(schema, migrations))
        app.cleanup_ctx.append(retention_ctx(settings))  # the schema's outbox and inbox don't grow forever
    return app


def run(app_factory: Callable[[], web.Application | Awaitable[web.Application]], settings: ServiceSettings) -> None:
    """Serve until SIGINT/SIGTERM, then drain: stop accepting, let in-flight requests and
    messages finish within the grace period, and run every cleanup context."""
    from .logs import setup_logging
    from .telemetry import setup_tracing

    setup_logging(settings.service_name, settings.log_level, settings.log_format)
    setup_tracing(settings)
    log.info("starting", extra={"port": settings.http_port, "service": settings.service_name})
    web.run_app(
        app_factory(),
        host=settings.http_host,
        port=settings.http_port,
        shutdown_timeout=settings.shutdown_grace_seconds,
        access_log=None,
        print=None,
        handle_signals=True,
    )


__all__ = [
    "ApiError", "BUS", "CLOCK", "IDENTITY", "POOL", "READY_CHECKS", "SETTINGS",
    "current_identity", "read_model", "require_user", "run", "service_app",
]
