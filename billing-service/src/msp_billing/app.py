"""billing-service app factory: the `billing` schema, the billing routes, the Stripe webhook
(the one path exempt from the gateway identity check), the consumers of auth-service's user
events (practice membership; User Managers' Stripe customers), the outbox relay for the events billing emits and the HTTP client for auth-service."""
from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

from aiohttp import web

from msp_shared import outbox
from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock, SystemClock
from msp_shared.seal import Sealer
from msp_shared.web import service_app

from . import accounts, handlers, http, webhooks
from .config import BillingSettings
from .keys import PAYMENTS, SEALER
from .payments import Payments

SCHEMA = "billing"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


async def _payments_ctx(app: web.Application) -> AsyncIterator[None]:
    payments = app[PAYMENTS]
    yield
    await payments.close()


def create_app(settings: BillingSettings, *, clock: Clock | None = None) -> web.Application:
    clock = clock or SystemClock()
    # Stripe has no gateway identity: only its webhook skips the check; its signature over
    # the raw body is the proof instead (webhooks.py).
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock,
                      identity_exempt=frozenset({("POST", webhooks.PATH)}))
    app[PAYMENTS] = Payments(settings)
    app[SEALER] = Sealer(settings.seal_key.get_secret_value())
    http.add_routes(app)
    app.router.add_post(webhooks.PATH, webhooks.stripe_webhook)
    app.cleanup_ctx.append(_payments_ctx)
    app.cleanup_ctx.append(accounts.http_client_ctx)
    app.cleanup_ctx.append(bus_ctx(subscribe=handlers.subscribe))
    app.cleanup_ctx.append(outbox.outbox_relay_ctx)
    return app
