"""Fixtures for billing-service tests: the local Stripe-compatible server and billing-service
on real sockets (real PostgreSQL and RabbitMQ), the official stripe SDK unchanged in between,
and a bus observer that also plays auth-service (publishes auth.user.registered). Where a test
needs users' sign-in addresses, the real auth-service runs too (`accounts`; a module wires
billing to it by overriding `billing_extra`)."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest

from msp_auth.app import create_app as create_auth
from msp_auth.config import AuthSettings
from msp_billing import stripe_local
from msp_billing.app import create_app
from msp_billing.config import BillingSettings
from msp_shared import db
from msp_shared.bus import Bus
from msp_shared.clock import ManualClock
from msp_shared.events import Envelope
from msp_shared.seal import Sealer

from billing_kit import API_KEY, WEBHOOK_SECRET, Accounts, Billing, BillingDept, serve

NO_AUTH_SERVICE = "http://127.0.0.1:9"  # the discard port: nothing answers there


@pytest.fixture
async def stripe_server() -> AsyncIterator[tuple[stripe_local.StripeState, str]]:
    app = stripe_local.create_app(api_key=API_KEY, webhook_secret=WEBHOOK_SECRET)
    runner, url = await serve(app)
    yield app[stripe_local.STATE], url
    await runner.cleanup()


@pytest.fixture
async def billing_dept(stripe_server) -> AsyncIterator[BillingDept]:
    """The PBHS Billing Dept. at the Stripe Dashboard (the stripe SDK on the local server)."""
    _, url = stripe_server
    dept = BillingDept(url)
    try:
        yield dept
    finally:
        await dept.close()


@pytest.fixture
async def accounts(base_env: dict, clock: ManualClock) -> AsyncIterator[Accounts]:
    """auth-service (cheap argon2: no test here hashes a password) on a real socket."""
    settings = AuthSettings(**base_env, argon2_time_cost=1, argon2_memory_kib=1024, hash_workers=1,
                            shutdown_grace_seconds=2)
    app = create_auth(settings, clock=clock)
    runner, url = await serve(app)
    http = aiohttp.ClientSession()
    try:
        yield Accounts(url=url, app=app, secret=settings.identity_secret.get_secret_value().encode(), clock=clock,
                       http=http, sealer=Sealer(settings.seal_key.get_secret_value()))
    finally:
        await http.close()
        await runner.cleanup()


@pytest.fixture
def billing_extra() -> dict:
    """Extra billing settings: by default, no auth-service to ask for addresses."""
    return {"auth_url": NO_AUTH_SERVICE}


@pytest.fixture
async def billing(base_env: dict, clock: ManualClock, stripe_server, amqp_url: str,
                  exchange_name: str, billing_extra: dict) -> AsyncIterator[Billing]:
    state, stripe_url = stripe_server
    settings = BillingSettings(**{
        **base_env, "stripe_api_key": API_KEY, "stripe_api_base": stripe_url, "stripe_webhook_secret": WEBHOOK_SECRET,
        "stripe_max_network_retries": 0, "shutdown_grace_seconds": 2, **billing_extra,
    })
    runner, url = await serve(create_app(settings, clock=clock))
    state.webhook_url = url + "/billing/webhooks/stripe"

    observer = Bus(amqp_url, exchange_name, service="billing-test", retry_delay_ms=50)
    await observer.connect()
    seen: list[Envelope] = []

    async def record(envelope: Envelope) -> None:
        seen.append(envelope)

    observer.subscribe("billing-test-observer", ["billing.#", "mail.#"], record)
    await observer.start()
    pool = await db.create_pool(settings.database_url, "billing")
    http = aiohttp.ClientSession()
    try:
        yield Billing(url=url, secret=settings.identity_secret.get_secret_value().encode(), clock=clock,
                      http=http, pool=pool, stripe=state, stripe_url=stripe_url, webhook_secret=WEBHOOK_SECRET,
                      bus=observer, seen=seen)
    finally:
        state.webhook_url = None
        await http.close()
        await runner.cleanup()
        await observer.close()
        await pool.close()
