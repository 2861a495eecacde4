"""Fixtures for verify-service tests: the service built from its factory on real PostgreSQL
and RabbitMQ with a ManualClock, tickets minted as auth-service would mint them, requests
signed as the gateway would sign them, and the local Twilio-protocol server on a free port."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from msp_shared.clock import ManualClock
from msp_verify import twilio_local
from msp_verify.app import create_app
from msp_verify.config import TwilioLocalSettings, VerifySettings
from verify_helpers import LocalTwilio, Verify, free_port


@pytest.fixture
async def start_verify(base_env: dict, clock: ManualClock, dev_outbox: Path) -> AsyncIterator[Callable[..., Awaitable[Verify]]]:
    started: list[tuple[TestServer, aiohttp.ClientSession]] = []

    async def start(**overrides: object) -> Verify:
        settings = VerifySettings(**{**base_env, "sms_origin_host": "portal.example.com", **overrides})
        server = TestServer(create_app(settings, clock=clock))
        await server.start_server()
        session = aiohttp.ClientSession()
        started.append((server, session))
        return Verify(settings, clock, server, session, dev_outbox)

    yield start
    for server, session in reversed(started):
        await session.close()
        await server.close()


@pytest.fixture
async def verify(start_verify: Callable[..., Awaitable[Verify]]) -> Verify:
    return await start_verify()


@pytest.fixture
async def local_twilio(dev_outbox: Path) -> AsyncIterator[LocalTwilio]:
    port = free_port()
    settings = TwilioLocalSettings(
        twilio_account_sid="AC" + "1" * 32, twilio_auth_token="test-token-" + uuid.uuid4().hex,
        twilio_local_port=port, dev_outbox=str(dev_outbox),
    )
    app = twilio_local.create_app(settings)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield LocalTwilio(settings, f"http://127.0.0.1:{port}", app)
    await runner.cleanup()
