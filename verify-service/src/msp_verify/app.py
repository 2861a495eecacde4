"""verify-service's app factory: 2-step codes by SMS or voice call."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock
from msp_shared.outbox import outbox_relay_ctx
from msp_shared.web import CLOCK, SETTINGS, service_app

from . import http, transport
from .config import VerifySettings
from .keys import TRANSPORT

SCHEMA = "verify"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def transport_ctx(app: web.Application) -> AsyncIterator[None]:
    app[TRANSPORT] = transport.from_settings(app[SETTINGS], app[CLOCK])
    try:
        yield
    finally:
        await app[TRANSPORT].close()


def create_app(settings: VerifySettings, *, clock: Clock | None = None) -> web.Application:
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock, client_max_size=64 * 1024)
    app.cleanup_ctx.append(bus_ctx())  # verify.code.* events (ids only) for the audit trail
    app.cleanup_ctx.append(outbox_relay_ctx)
    app.cleanup_ctx.append(transport_ctx)
    http.add_routes(app)
    return app
