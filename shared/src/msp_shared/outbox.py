"""Transactional outbox: an event is a row written in the same transaction as the state
change it announces; a relay publishes committed rows to the bus and marks them sent.

Waking the relay. PostgreSQL delivers a NOTIFY only when (and if) the transaction commits,
so a relay LISTENing on `msp_outbox_<schema>` wakes at the commit, not on a poll. But every
notifying commit takes one database-wide lock and holds it through its WAL flush: under
concurrency NOTIFY serialises the writers' commits (measured here: 8 writers commit about
half as many transactions per second with a NOTIFY each). A relay that is already awake
needs no notification, so writers only notify a relay that sleeps, using a transaction-level
advisory lock on a key derived from the schema (the "sleep lock"):

- a writer (`add()`) tries to take the sleep lock in SHARED mode, without waiting, and holds
  it until its transaction ends. It NOTIFYs only if it could not: a relay sleeps (it holds
  the lock exclusively) or is about to (it waits for it);
- the relay, when a pass finds nothing more to publish, takes the lock EXCLUSIVELY. That
  waits until every writer holding it in shared mode (writers that did not notify) has
  committed or rolled back; one last pass then sees their rows. From then on every writer
  notifies, so the relay can sleep. A notification wakes it, and it releases the lock
  first: writers stop notifying while it works.

So no committed row waits for the fallback poll while a relay listens, and a saturated relay
costs the writers no NOTIFY. The relay waits for the lock at most `sleep_lock_timeout` (a
long transaction may be holding it in shared mode), then makes another pass and tries
again; if another replica's relay already sleeps holding it, writers notify that one and
every listener wakes, so this one sleeps too. A slow poll (`poll_interval`) remains only
the fallback for a lost listener connection (the lock goes with it).

The relay claims rows with `FOR UPDATE SKIP LOCKED`, so several replicas share the work
without publishing a row twice at once. It publishes a batch pipelined (on one channel,
each message goes out without waiting for the one before; then the confirms are awaited),
sending each row's stored JSON as it is, then marks the confirmed rows. A broker outage
leaves rows unpublished and the relay backs off and tries again: events are delayed, never lost. A
crash between the confirm and the mark republishes a row: delivery is at least once,
which the consumers' inbox (inbox.py) turns into exactly once in effect.

Rows are claimed in the order they were written (`position`), within a transaction too.
Published rows are deleted after a while by retention.py."""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime

import asyncpg
from aiohttp import web

from . import telemetry
from .bus import Bus
from .events import Envelope, EventData, make_envelope
from .web import BUS, POOL, SETTINGS

log = logging.getLogger(__name__)

CHANNEL_PREFIX = "msp_outbox_"
# The sleep lock's key (a bigint) from the schema name, computed in SQL on both sides: the
# writers only know their schema as current_schema().
_SLEEP_KEY = "hashtextextended('msp-outbox:' || {schema}, 0)"


def channel_name(schema: str) -> str:
    return f"{CHANNEL_PREFIX}{schema}"


_ADD_SQL = (
    "WITH row AS (INSERT INTO outbox (id, type, envelope) VALUES ($1, $2, $3::jsonb))"
    f" SELECT pg_notify('{CHANNEL_PREFIX}' || current_schema(), '')"
    f" WHERE NOT pg_try_advisory_xact_lock_shared({_SLEEP_KEY.format(schema='current_schema()')})"
)
_LOCK_SQL = f"SELECT pg_advisory_lock({_SLEEP_KEY.format(schema='$1::text')})"
_UNLOCK_SQL = f"SELECT pg_advisory_unlock({_SLEEP_KEY.format(schema='$1::text')})"
# Whether some relay (only relays take the lock exclusively) holds the sleep lock.
_RELAY_SLEEPS_SQL = (
    "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
    " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
    " AND mode = 'ExclusiveLock' AND granted"
    f" AND ((classid::bigint << 32) | objid::bigint) = {_SLEEP_KEY.format(schema='$1::text')})"
)


async def add(conn: asyncpg.Connection, data: EventData) -> Envelope:
    """Write `data` as an event in the caller's transaction (call it inside the transaction
    that makes the change the event announces). Returns the envelope that will be published."""
    envelope = make_envelope(data, trace=telemetry.current_carrier())
    # One round trip for the row, the sleep lock and the notification if a relay sleeps
    # (see the module docstring). The channel and the lock are named after the connection's
    # schema (its search_path), which is the schema whose relay listens.
    await conn.execute(_ADD_SQL, envelope.id, envelope.type, envelope.model_dump_json())
    return envelope


async def add_many(conn: asyncpg.Connection, events: Sequence[EventData]) -> list[Envelope]:
    """`add` for many events of one transaction (a batch job's), pipelined in one round trip."""
    envelopes = [make_envelope(data, trace=telemetry.current_carrier()) for data in events]
    if envelopes:
        await conn.executemany(_ADD_SQL, [(e.id, e.type, e.model_dump_json()) for e in envelopes])
    return envelopes


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
        sleep_lock_timeout: float = 0.02,
        linger: float = 0.002,
    ) -> None:
        self.pool = pool
        self.bus = bus
        self.dsn = dsn
        self.schema = schema
        self.batch_size = batch_size
        self.poll_interval = poll_interval
        self.max_backoff = max_backoff
        self.publish_timeout = publish_timeout
        self.sleep_lock_timeout = sleep_lock_timeout
        self.linger = linger  # pause after a partial batch, so the next one is bigger
        self.published = 0  # rows this relay has published (for tests and metrics)
        self.passes = 0  # claims made, empty ones included (metrics: rows per pass)
        self.notifications = 0  # wake-ups by NOTIFY received (metrics)
        self._wake = asyncio.Event()
        self._stopping = False
        self._tasks: list[asyncio.Task] = []
        self._listener: asyncpg.Connection | None = None  # the LISTEN connection, when up
        self._sleeping_on: asyncpg.Connection | None = None  # holds the sleep lock (a session lock)

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

    # ---- the listener: wakes the relay at every commit that notified --------------------

    async def _listen(self) -> None:
        backoff = 0.1
        while not self._stopping:
            conn: asyncpg.Connection | None = None
            try:
                conn = await asyncpg.connect(
                    self.dsn,
                    server_settings={
                        "application_name": f"msp-{self.schema}-outbox",
                        # Bounds the relay's wait for the sleep lock (its only lock).
                        "lock_timeout": f"{max(1, round(self.sleep_lock_timeout * 1000))}ms",
                    },
                )
                lost = asyncio.get_running_loop().create_future()
                conn.add_termination_listener(lambda _c: lost.done() or lost.set_result(None))
                await conn.add_listener(channel_name(self.schema), self._on_notify)
                backoff = 0.1
                self._listener = conn
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
                # The sleep lock, if held, goes with the session: writers stop notifying, and
                # the relay polls until a new listener wakes it.
                self._listener = None
                if self._sleeping_on is conn:
                    self._sleeping_on = None
                if conn is not None and not conn.is_closed():
                    conn.terminate()  # a LISTEN-only connection: nothing to flush

    def _on_notify(self, *_args: object) -> None:
        self.notifications += 1
        self._wake.set()

    # ---- the relay loop ---------------------------------------------------------------------

    async def _relay(self) -> None:
        backoff = 0.1
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self.poll_interval)
            self._wake.clear()
            try:
                await self._publish_until_idle()
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

    async def _publish_until_idle(self) -> None:
        """Awake: publish until a pass finds nothing, then take the sleep lock (module docstring)."""
        await self._release_sleep_lock()  # writers stop notifying while we work
        while not self._stopping:
            claimed = await self.publish_batch()
            if claimed == self.batch_size:
                continue  # a full batch: there may be more
            if claimed:
                # Writers are busy: more rows are coming. Let them gather for a moment (a
                # pass has a cost of its own, whatever its size), then look again. Trying to
                # sleep now would make every writer notify until we looked again.
                await asyncio.sleep(self.linger)
                continue
            if not await self._take_sleep_lock():
                continue  # writers still in their transactions: another pass, then try again
            # Every writer that did not notify has ended: one last look before sleeping.
            if await self.publish_batch() == 0:
                return
            await self._release_sleep_lock()

    async def _take_sleep_lock(self) -> bool:
        """Whether the relay may sleep now: it got the sleep lock, another relay of this schema
        sleeps holding it (writers notify that one, and every listener wakes), or there is no
        listener (nothing could wake it: it polls)."""
        conn = self._listener
        if conn is None:
            return True
        try:
            try:
                await conn.execute(_LOCK_SQL, self.schema)
            except asyncpg.LockNotAvailableError:  # lock_timeout
                return await conn.fetchval(_RELAY_SLEEPS_SQL, self.schema)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            return True  # the listener is gone with its session; a new one wakes us
        self._sleeping_on = conn
        return True

    async def _release_sleep_lock(self) -> None:
        conn, self._sleeping_on = self._sleeping_on, None
        if conn is None:
            return
        try:
            await conn.execute(_UNLOCK_SQL, self.schema)
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError):
            pass  # the session is gone, and its lock with it

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
                " ORDER BY position LIMIT $1 FOR UPDATE SKIP LOCKED",
                self.batch_size,
            )
            self.passes += 1
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


__all__ = ["OutboxRelay", "add", "add_many", "channel_name", "outbox_relay_ctx"]
