"""Helpers for the bus/outbox/inbox tests: a TCP proxy that can play "the broker is
unreachable", a tiny demo schema with an effects table, and bus/pool fixtures that clean up."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from yarl import URL

from msp_shared import db
from msp_shared.bus import Bus
from msp_shared.events import Envelope, EventData, make_envelope


class ThingHappened(EventData):
    """A test-only event; deliberately not in the shared REGISTRY."""

    TYPE = "test.thing.happened"
    n: int


def thing(n: int) -> Envelope:
    return make_envelope(ThingHappened(n=n))


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll `check` until it returns something truthy; fail after `timeout` (a generous bound
    for a slow machine, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class TcpProxy:
    """A byte pipe from 127.0.0.1:<port> to a target. stop() closes the listener AND every
    open connection (the broker "goes away"); start() again listens on the same port."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port, reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def url_for(self, amqp_url: str) -> str:
        return str(URL(amqp_url).with_host("127.0.0.1").with_port(self.port))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.target)
            except OSError:
                writer.transport.abort()
                return
            self._writers.add(up_writer)
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                self._writers.discard(up_writer)
                up_writer.transport.abort()
        finally:
            self._writers.discard(writer)
            writer.transport.abort()
            self._tasks.discard(task)

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.transport.abort()  # one side gone: drop the other too, like a dead broker


DEMO_MIGRATION = """
CREATE TABLE effects (
    id        bigserial PRIMARY KEY,
    consumer  text    NOT NULL,
    event_id  uuid    NOT NULL,   -- deliberately not unique: a duplicate effect must be visible
    n         integer NOT NULL
);
"""


@pytest.fixture
async def demo_pool(database_url: str, tmp_path: Path) -> AsyncIterator[asyncpg.Pool]:
    """The "demo" schema (shared outbox/inbox plus an effects table) and a pool pinned to it."""
    migrations = tmp_path / "demo-migrations"
    migrations.mkdir()
    (migrations / "0001_effects.sql").write_text(DEMO_MIGRATION)
    await db.migrate(database_url, "demo", migrations)
    pool = await db.create_pool(database_url, "demo")
    yield pool
    await pool.close()


async def record_effect(conn: asyncpg.Connection, envelope: Envelope, consumer: str = "demo") -> None:
    await conn.execute(
        "INSERT INTO effects (consumer, event_id, n) VALUES ($1, $2, $3)", consumer, envelope.id, envelope.data["n"]
    )


async def effect_counts(pool: asyncpg.Pool) -> tuple[int, int]:
    """(effects, distinct events with an effect)."""
    row = await pool.fetchrow("SELECT count(*) AS total, count(DISTINCT event_id) AS distinct_ FROM effects")
    return row["total"], row["distinct_"]


@pytest.fixture
async def make_bus(amqp_url: str, exchange_name: str) -> AsyncIterator[Callable[..., Bus]]:
    """Build Buses on this test's exchange (retry delay 50 ms); all closed at teardown."""
    buses: list[Bus] = []

    def make(url: str | None = None, **kwargs: Any) -> Bus:
        kwargs.setdefault("service", f"test-{uuid.uuid4().hex[:6]}")
        kwargs.setdefault("retry_delay_ms", 50)
        kwargs.setdefault("reconnect_interval", 0.2)
        kwargs.setdefault("close_timeout", 5)
        bus = Bus(url or amqp_url, exchange_name, **kwargs)
        buses.append(bus)
        return bus

    yield make
    for bus in buses:
        await bus.close()
