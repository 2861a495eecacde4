"""verify-service's app factory: 2-step codes by SMS or voice call."""
from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock
from msp_shared.outbox import outbox_relay_ctx
from msp_shared.periodic import periodic_ctx
from msp_shared.web import CLOCK, POOL, SETTINGS, service_app

from . import http, store, transport
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


async def prune_verifications(app: web.Application) -> int:
    settings: VerifySettings = app[SETTINGS]
    before = app[CLOCK].now() - timedelta(hours=settings.verification_retention_hours)
    return await store.delete_old_verifications(app[POOL], before=before)


def create_app(settings: VerifySettings, *, clock: Clock | None = None) -> web.Application:
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock, client_max_size=64 * 1024)
    app.cleanup_ctx.append(bus_ctx())  # verify.code.* events (ids only) for the audit trail
    app.cleanup_ctx.append(outbox_relay_ctx)
    app.cleanup_ctx.append(transport_ctx)
    app.cleanup_ctx.append(periodic_ctx("verify-prune", prune_verifications, every=settings.verification_prune_interval_seconds))
    http.add_routes(app)
    return app
