"""Fixtures for mail-service tests: a real aiosmtpd server on a free port, mail-service apps
built from their factory (real PostgreSQL, RabbitMQ), and a "producer" service schema with
its own outbox relay, standing in for any service that asks for an email."""
from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import pytest
from aiohttp import web
from mail_helpers import free_port
from messages_kit import stack  # noqa: F401 - the secure-messages stack fixture
from msp_mail.app import create_app
from msp_mail.config import MailSettings
from msp_mail.devsmtp import DevSmtpServer
from msp_shared import db
from msp_shared.bus import Bus
from msp_shared.clock import ManualClock
from msp_shared.config import DEV_SEAL_KEY
from msp_shared.outbox import OutboxRelay
from msp_shared.seal import Sealer


@pytest.fixture
def smtp_port() -> int:
    return free_port()


@pytest.fixture
def smtp_server(dev_outbox: Path, smtp_port: int) -> DevSmtpServer:
    """Not started: tests start and stop it (an SMTP outage is part of what they show)."""
    return DevSmtpServer(dev_outbox, port=smtp_port)


@pytest.fixture
def mail_settings(base_env: dict, smtp_port: int) -> Callable[..., MailSettings]:
    def make(**overrides: object) -> MailSettings:
        values = {
            **base_env,
            "smtp_port": smtp_port,
            "mail_scan_interval_seconds": 0.05,
            "mail_retry_first_delay_seconds": 60,
            "mail_retry_max_delay_seconds": 600,
            "public_url": "https://portal.example.test",
            "shutdown_grace_seconds": 3,
            **overrides,
        }
        return MailSettings(**values)

    return make


@contextlib.asynccontextmanager
async def running(app: web.Application) -> AsyncIterator[web.Application]:
    """Start the app's cleanup contexts (pool, sender, bus, relay) without an HTTP site."""
    runner = web.AppRunner(app)
    await runner.setup()
    try:
        yield app
    finally:
        await runner.cleanup()


@pytest.fixture
def start_mail(mail_settings, clock: ManualClock):
    def start(**overrides: object):
        return running(create_app(mail_settings(**overrides), clock=clock))

    return start


@dataclass
class Producer:
    pool: asyncpg.Pool
    sealer: Sealer
    bus: Bus
    relay: OutboxRelay


@pytest.fixture
async def producer(database_url: str, amqp_url: str, exchange_name: str) -> AsyncIterator[Producer]:
    """Another service (schema "producer") with its own outbox relay publishing to the bus."""
    await db.migrate(database_url, "producer", None)
    pool = await db.create_pool(database_url, "producer")
    bus = Bus(amqp_url, exchange_name, service="producer")
    await bus.connect()
    relay = OutboxRelay(pool, bus, dsn=database_url, schema="producer", poll_interval=0.2)
    await relay.start()
    try:
        yield Producer(pool, Sealer(DEV_SEAL_KEY), bus, relay)
    finally:
        await relay.stop()
        await bus.close()
        await pool.close()
