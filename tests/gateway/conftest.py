"""Gateway fixtures: a stand-in upstream service and gateways built from create_app, served
on real sockets with real PostgreSQL and RabbitMQ, sharing the test's ManualClock."""
from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from aiohttp.test_utils import unused_port

from msp_gateway.app import create_app
from msp_gateway.config import GatewaySettings
from msp_shared.clock import ManualClock
from msp_shared.config import ServiceSettings

from gateway_kit import Browser, Served, new_browser, serve, upstream_app


@pytest.fixture
async def upstream(base_env: dict, clock: ManualClock) -> AsyncIterator[Served]:
    served = await serve(upstream_app(ServiceSettings(**base_env, service_name="upstream"), clock))
    yield served
    await served.server.close()


@pytest.fixture
async def make_gateway(base_env: dict, clock: ManualClock, upstream: Served) -> AsyncIterator[Callable[..., Awaitable[Served]]]:
    started: list[Served] = []

    async def make(**overrides: object) -> Served:
        port = unused_port()
        values = {
            **base_env,
            "auth_url": upstream.url,
            "verify_url": upstream.url,
            "mail_url": upstream.url,
            "billing_url": upstream.url,
            "public_url": f"http://127.0.0.1:{port}",
            "shutdown_grace_seconds": 2,
            "session_purge_seconds": 3600,
            **overrides,
        }
        served = await serve(create_app(GatewaySettings(**values), clock=clock), port)
        started.append(served)
        return served

    yield make
    for served in reversed(started):
        await served.server.close()


@pytest.fixture
async def gateway(make_gateway: Callable[..., Awaitable[Served]]) -> Served:
    return await make_gateway()


@pytest.fixture
async def browsers() -> AsyncIterator[Callable[[str], Browser]]:
    made: list[Browser] = []

    def make(base: str) -> Browser:
        browser = new_browser(base)
        made.append(browser)
        return browser

    yield make
    for browser in made:
        await browser.close()


@pytest.fixture
async def browser(gateway: Served, browsers: Callable[[str], Browser]) -> Browser:
    return browsers(gateway.url)
