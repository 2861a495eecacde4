"""Transactional outbox: an event is a row written in the same transaction as the state
change it announces; a relay publishes committed rows to the bus and marks them sent.

`add()` also sends `NOTIFY msp_outbox_<schema>`. PostgreSQL delivers a notification only
when (and if) the transaction commits, so the relay wakes at the commit, not on a poll;
a slow poll is only the fallback for a lost listener connection.

The relay claims rows with `FOR UPDATE SKIP LOCKED`, so several replicas share the work
without publishing a row twice at once. It publishes a batch pipelined (on one channel,
each message goes out without waiting for the one before; then the confirms are awaited),
sending each row's stored JSON as it is, then marks the confirmed rows. A broker outage
leaves rows unpublished and the relay backs off and tries again: events are delayed, never lost. A
crash between the confirm and the mark republishes a row: delivery is at least once,
which the consumers' inbox (inbox.py) turns into exactly once in effect."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from datetime import datetime

import asyncpg
from aiohttp import web

from . import telemetry
from .bus import Bus
from .events import Envelope, EventData, make_envelope
from .web import BUS, POOL, SETTINGS

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "msp_outbox_"


def channel_name(schema: str) -> str:
    return f"{CHANNEL_PREFIX}{schema}"


async def add(conn: asyncpg.Connection, data: EventData) -> Envelope:
    """Write `data` as an event in the caller's transaction (call it inside the transaction
    that makes the change the event announces). Returns the envelope that will be published."""
    envelope = make_envelope(data, trace=telemetry.current_carrier())
    # One round trip for both. The channel is named after the connection's schema (its
    # search_path), which is the schema whose relay listens.
    await conn.execute(
        "WITH row AS (INSERT INTO outbox (id, type, envelope) VALUES ($1, $2, $3::jsonb))"
        f" SELECT pg_notify('{CHANNEL_PREFIX}' || current_schema(), '')",
        envelope.id,
        envelope.type,
        envelope.model_dump_json(),
    )
    return envelope


class OutboxRelay:
    def __init__(
        self,
        pool: asyncpg.Pool,
        bus: Bus,
        *,
        dsn: str,
        schema: str,
        batch_size: int = 200,
        poll_interval: float = 2.0,
        max_backoff: float = 5.0,
        publish_timeout: float = 10.0,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.dsn = dsn
        self.schema = schema
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        self.published = 0  # rows this relay has published (for tests and metrics)
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        self._wake.set()  # publish whatever is left from before we started
        self._tasks = [
            asyncio.create_task(self._listen(), name=f"outbox-listen-{self.schema}"),
            asyncio.create_task(self._relay(), name=f"outbox-relay-{self.schema}"),
        ]

    async def stop(self) -> None:
        """Let the batch in hand finish (so its rows are marked, not published twice), then stop."""
        self._stopping = True
        self._wake.set()
        listener, relay = self._tasks or (None, None)
        if relay is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(relay), timeout=self.publish_timeout + 2)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []

    def wake(self) -> None:
        self._wake.set()

    # ---- the listener: wakes the relay at every commit that wrote events ----------------

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(self.dsn, server_settings={"application_name": f"msp-{self.schema}-outbox"})
                lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(lambda _c: lost.done() or lost.set_result(None))
                await conn.add_listener(channel_name(self.schema), self._on_notify)
                backoff = 0.1
                self._wake.set()  # rows committed while we were not listening
                await lost
                log.warning("outbox listener connection lost; reconnecting", extra={"schema": self.schema})
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("outbox listener cannot connect", extra={"schema": self.schema, "error": type(exc).__name__})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
            finally:
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # a LISTEN-only connection: nothing to flush

    def _on_notify(self, *_args: object) -> None:
        self._wake.set()

    # ---- the relay loop ---------------------------------------------------------------------

    async def _relay(self) -> None:
        backoff = 0.1
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            self._wake.clear()
            try:
                while await self.publish_batch() == self.batch_size and not self._stopping:
                    pass  # a full batch: there may be more
                backoff = 0.1
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Broker or database trouble: the rows stay unpublished; try again later.
                if self._stopping:
                    return
                log.warning("outbox relay failed; retrying", extra={"schema": self.schema, "error": type(exc).__name__, "retry_in": backoff})
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self.max_backoff)
                self._wake.set()

    async def publish_batch(self) -> int:
        """Claim, publish and mark one batch of unpublished rows; returns how many were claimed.
        Raises (after marking what did get through) if any publish failed."""
        async with self.pool.acquire() as conn, conn.transaction():
            # The stored JSON is published as it is (jsonb's text form: the same document);
            # only the fields the message properties and the PRODUCER span need are read out.
            rows = await conn.fetch(
                "SELECT id, type, envelope::text AS body, (envelope->>'version')::int AS version,"
                " envelope->>'occurred_at' AS occurred_at, envelope->'trace' AS trace"
                " FROM outbox WHERE published_at IS NULL"
                " ORDER BY created_at, id LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            if not rows:
                return 0
            # Concurrent Bus.publish calls pipeline: no message waits for the previous one's
            # confirm. The rows stay locked (no other relay takes them) until they are marked.
            results = await asyncio.gather(
                *(self.bus.publish(_head(row), body=row["body"].encode(), timeout=self.publish_timeout) for row in rows),
                return_exceptions=True,
            )
            sent = [row["id"] for row, result in zip(rows, results) if result is None]
            failed = [row["id"] for row, result in zip(rows, results) if result is not None]
            if sent:
                await conn.execute("UPDATE outbox SET published_at = now() WHERE id = ANY($1::uuid[])", sent)
            if failed:
                await conn.execute("UPDATE outbox SET attempts = attempts + 1 WHERE id = ANY($1::uuid[])", failed)
        self.published += len(sent)
        if failed:
            raise next(r for r in results if r is not None)
        return len(rows)


def _head(row: asyncpg.Record) -> Envelope:
    """The envelope of a stored row without its data (not needed: the body is published as
    stored), built without validation: the row was validated when it was written."""
    return Envelope.model_construct(
        id=row["id"],
        type=row["type"],
        version=row["version"] or 1,
        occurred_at=datetime.fromisoformat(row["occurred_at"]),
        trace=json.loads(row["trace"]) if row["trace"] else {},
        data={},
    )


async def outbox_relay_ctx(app: web.Application) -> AsyncIterator[None]:
    """Cleanup context running the relay of the app's schema. Needs app[POOL] and app[BUS]:
    append it after the pool's and the bus's contexts (it stops before they close)."""
    pool = app[POOL]
    schema = await pool.fetchval("SELECT current_schema()")
    relay = OutboxRelay(pool, app[BUS], dsn=app[SETTINGS].database_url, schema=schema)
    await relay.start()
    try:
        yield
    finally:
        await relay.stop()


__all__ = ["OutboxRelay", "add", "channel_name", "outbox_relay_ctx"]
