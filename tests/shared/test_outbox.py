"""The transactional outbox and its relay on real PostgreSQL and RabbitMQ: commit wakes the
relay, a rollback publishes nothing, a broker outage delays events without losing them,
several relays never publish a row twice."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aio_pika
import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from bus_testkit import (  # noqa: F401
    DEMO_MIGRATION,
    TcpProxy,
    ThingHappened,
    demo_pool,
    effect_counts,
    eventually,
    make_bus,
    record_effect,
)
from msp_shared import outbox
from msp_shared.bus import Bus, bus_ctx
from msp_shared.config import ServiceSettings
from msp_shared.events import Envelope
from msp_shared.inbox import idempotent
from msp_shared.outbox import OutboxRelay, outbox_relay_ctx
from msp_shared.web import BUS, POOL, service_app

TYPE = ThingHappened.TYPE


async def _write(pool: asyncpg.Pool, *numbers: int) -> None:
    """Each event in its own transaction, as a request handler would."""
    for n in numbers:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, ThingHappened(n=n))


async def _effects_reach(pool: asyncpg.Pool, n: int) -> bool:
    total, _ = await effect_counts(pool)
    return total >= n


@pytest.fixture
async def relays() -> AsyncIterator[list[OutboxRelay]]:
    started: list[OutboxRelay] = []
    yield started
    for relay in started:
        await relay.stop()


async def _start_relay(make_bus: Callable[..., Bus], pool: asyncpg.Pool, dsn: str, relays: list[OutboxRelay],
                       **options: object) -> OutboxRelay:
    """The demo schema's relay on a publisher bus of its own, stopped by the `relays` fixture."""
    publisher = make_bus()
    await publisher.connect()
    relay = OutboxRelay(pool, publisher, dsn=dsn, schema="demo", **options)
    relays.append(relay)
    await relay.start()
    return relay


async def _consumer(make_bus: Callable[..., Bus], pool: asyncpg.Pool) -> Bus:
    bus = make_bus()
    bus.subscribe("effects", [TYPE], idempotent(pool, "demo", record_effect))
    await bus.start()
    return bus


async def test_committed_events_are_published_and_marked(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    await _consumer(make_bus, demo_pool)
    relay = await _start_relay(make_bus, demo_pool, database_url, relays)

    async with demo_pool.acquire() as conn, conn.transaction():
        envelope = await outbox.add(conn, ThingHappened(n=1))
    await eventually(lambda: _effects_reach(demo_pool, 1), what="the effect")

    # Marked sent after the confirm (the consumer may be quicker than the relay's commit).
    await eventually(
        lambda: demo_pool.fetchval("SELECT published_at IS NOT NULL FROM outbox WHERE id = $1", envelope.id),
        what="the row marked sent",
    )
    assert await demo_pool.fetchval("SELECT type FROM outbox WHERE id = $1", envelope.id) == TYPE
    assert await demo_pool.fetchval("SELECT event_id FROM effects") == envelope.id


async def test_a_rolled_back_transaction_publishes_nothing(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    await _consumer(make_bus, demo_pool)
    relay = await _start_relay(make_bus, demo_pool, database_url, relays)

    with pytest.raises(RuntimeError):
        async with demo_pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, ThingHappened(n=666))
            raise RuntimeError("the state change failed")
    await _write(demo_pool, 1)

    await eventually(lambda: _effects_reach(demo_pool, 1), what="the committed event")
    await asyncio.sleep(0.2)
    assert await demo_pool.fetchval("SELECT array_agg(n) FROM effects") == [1]
    assert await demo_pool.fetchval("SELECT count(*) FROM outbox") == 1


async def test_events_written_while_the_broker_is_unreachable_arrive_once_it_is_back(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, amqp_url: str,
    relays: list[OutboxRelay],
) -> None:
    await _consumer(make_bus, demo_pool)  # straight to the broker
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    publisher = make_bus(proxy.url_for(amqp_url))  # the relay reaches the broker only via the proxy
    try:
        await publisher.connect()
        relay = OutboxRelay(demo_pool, publisher, dsn=database_url, schema="demo", max_backoff=0.5, publish_timeout=1)
        relays.append(relay)
        await relay.start()

        await _write(demo_pool, *range(5))
        await eventually(lambda: _effects_reach(demo_pool, 5), what="events before the outage")

        await proxy.stop()  # the broker is gone for the relay
        await eventually(lambda: _ping_fails(publisher), what="the bus to notice")
        await _write(demo_pool, *range(5, 25))
        # The relay tried and failed; nothing was marked sent, nothing was consumed.
        await eventually(
            lambda: demo_pool.fetchval("SELECT bool_or(attempts > 0) FROM outbox WHERE published_at IS NULL"),
            what="a failed publish attempt",
        )
        assert await demo_pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 20
        assert await effect_counts(demo_pool) == (5, 5)

        await proxy.start()  # the broker is back, same address
        await eventually(lambda: _effects_reach(demo_pool, 25), timeout=30, what="events after the outage")
        await asyncio.sleep(0.3)  # room for a duplicate effect to show up
        assert await effect_counts(demo_pool) == (25, 25)
        assert sorted(await demo_pool.fetchval("SELECT array_agg(n) FROM effects")) == list(range(25))
        assert await demo_pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0
    finally:
        for relay in relays:
            await relay.stop()
        await publisher.close()  # before the proxy goes, or it tries to reconnect through it
        await proxy.stop()


async def _ping_fails(bus: Bus) -> bool:
    try:
        await bus.ping()
    except Exception:
        return True
    return False


async def test_two_relays_never_publish_a_row_twice(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    deliveries: list[int] = []

    async def count(envelope) -> None:  # noqa: ANN001
        deliveries.append(envelope.data["n"])

    consumer = make_bus()
    consumer.subscribe("counter", [TYPE], count)
    await consumer.start()
    for _ in range(2):
        publisher = make_bus()
        await publisher.connect()
        relay = OutboxRelay(demo_pool, publisher, dsn=database_url, schema="demo", batch_size=10)
        relays.append(relay)
        await relay.start()

    await asyncio.gather(*(_write(demo_pool, *range(i, 200, 4)) for i in range(4)))
    await eventually(lambda: asyncio.sleep(0, len(deliveries) >= 200), what="200 deliveries")
    await asyncio.sleep(0.3)
    assert sorted(deliveries) == list(range(200))  # no row published twice, none lost
    assert sum(r.published for r in relays) == 200
    assert await demo_pool.fetchval("SELECT count(*) FROM outbox WHERE published_at IS NULL") == 0


async def test_rows_left_from_before_the_relay_started_are_published(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    await _consumer(make_bus, demo_pool)
    await _write(demo_pool, 1, 2, 3)  # nobody listening: the notifications are lost
    relay = await _start_relay(make_bus, demo_pool, database_url, relays, poll_interval=60)
    await eventually(lambda: _effects_reach(demo_pool, 3), what="the old rows")
    assert await effect_counts(demo_pool) == (3, 3)


async def test_a_service_app_wires_pool_bus_relay_and_readiness(base_env: dict, tmp_path: Path) -> None:
    migrations = tmp_path / "m"
    migrations.mkdir()
    (migrations / "0001_effects.sql").write_text(DEMO_MIGRATION)
    settings = ServiceSettings(**base_env, service_name="demo")

    async def subscribe(app: web.Application, bus: Bus) -> None:
        bus.subscribe("effects", [TYPE], idempotent(app[POOL], "demo", record_effect))

    app = service_app(settings, schema="demo", migrations=migrations, check_identity=False)
    app.cleanup_ctx.append(bus_ctx(subscribe))
    app.cleanup_ctx.append(outbox_relay_ctx)

    async with TestClient(TestServer(app)) as client:
        ready = await client.get("/readyz")
        assert ready.status == 200
        pool = app[POOL]
        await _write(pool, 41)
        await eventually(lambda: _effects_reach(pool, 1), what="the effect")
        assert await pool.fetchval("SELECT n FROM effects") == 41

        bus = app[BUS]
        await bus.close()  # the broker connection gone: not ready
        not_ready = await client.get("/readyz")
        assert not_ready.status == 503
        assert (await not_ready.json())["problems"] == {"broker": "BusNotConnected"}


async def test_the_relay_publishes_the_stored_envelope_persistently_in_commit_order(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, amqp_url: str,
    exchange_name: str, relays: list[OutboxRelay],
) -> None:
    # The relay sends the row's stored JSON as it is (no re-serialising): what arrives must
    # still be the same envelope, with the message properties consumers and the DLQ rely on.
    publisher = make_bus(service="demo-relay")
    await publisher.connect()
    spy = await aio_pika.connect(amqp_url)
    try:
        channel = await spy.channel()
        exchange = await channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True)
        queue = await channel.declare_queue(exclusive=True)
        await queue.bind(exchange, routing_key=TYPE)
        written = []
        for n in range(3):
            async with demo_pool.acquire() as conn, conn.transaction():
                written.append(await outbox.add(conn, ThingHappened(n=n)))
        relay = OutboxRelay(demo_pool, publisher, dsn=database_url, schema="demo")
        relays.append(relay)
        await relay.start()

        received = [await _next(queue) for _ in written]
        assert [Envelope.model_validate_json(m.body) for m in received] == written  # same order too
        for message, envelope in zip(received, written):
            assert message.message_id == str(envelope.id)
            assert message.type == TYPE and message.routing_key == TYPE
            assert message.delivery_mode == aio_pika.DeliveryMode.PERSISTENT
            assert message.content_type == "application/json"
            assert message.app_id == "demo-relay"
            assert message.timestamp is not None
            await message.ack()
    finally:
        await spy.close()


async def _next(queue: aio_pika.abc.AbstractQueue) -> aio_pika.abc.AbstractIncomingMessage:
    return await eventually(lambda: queue.get(fail=False), what="the next relayed message")


# ---- waking the relay: NOTIFY only while a relay sleeps (the sleep lock) ----------------------


async def _relay_sleeps(pool: asyncpg.Pool) -> bool:
    """Whether some relay holds the demo schema's sleep lock (it sleeps; writers notify)."""
    return await pool.fetchval(
        "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND mode = 'ExclusiveLock'"
        " AND granted AND ((classid::bigint << 32) | objid::bigint) = hashtextextended('msp-outbox:demo', 0))"
    )


async def _published(pool: asyncpg.Pool, envelope: Envelope) -> bool:
    return await pool.fetchval("SELECT published_at IS NOT NULL FROM outbox WHERE id = $1", envelope.id)


async def test_a_sleeping_relay_is_woken_by_the_commit_not_the_poll(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    relay = await _start_relay(make_bus, demo_pool, database_url, relays, poll_interval=60)
    await eventually(lambda: _relay_sleeps(demo_pool), what="the relay to sleep")

    async with demo_pool.acquire() as conn, conn.transaction():
        envelope = await outbox.add(conn, ThingHappened(n=1))
    await eventually(lambda: _published(demo_pool, envelope), timeout=10, what="the row published")
    assert relay.notifications >= 1
    await eventually(lambda: _relay_sleeps(demo_pool), what="the relay to sleep again")


async def test_many_events_of_one_transaction_wake_a_sleeping_relay_and_all_arrive(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    """add_many (a batch job's events, one round trip): every event is published once, in
    order, when the transaction commits; nothing when it rolls back."""
    await _consumer(make_bus, demo_pool)
    relay = await _start_relay(make_bus, demo_pool, database_url, relays, poll_interval=60)
    await eventually(lambda: _relay_sleeps(demo_pool), what="the relay to sleep")

    with pytest.raises(RuntimeError):
        async with demo_pool.acquire() as conn, conn.transaction():
            await outbox.add_many(conn, [ThingHappened(n=n) for n in range(100, 105)])
            raise RuntimeError("the batch failed")
    async with demo_pool.acquire() as conn, conn.transaction():
        assert await outbox.add_many(conn, []) == []
        envelopes = await outbox.add_many(conn, [ThingHappened(n=n) for n in range(1, 6)])
    assert len({e.id for e in envelopes}) == 5
    await eventually(lambda: _effects_reach(demo_pool, 5), timeout=10, what="the five effects")
    assert relay.notifications >= 1  # the commit woke it, not the 60 s poll
    await asyncio.sleep(0.2)
    assert await demo_pool.fetchval("SELECT array_agg(n ORDER BY id) FROM effects") == [1, 2, 3, 4, 5]  # as written
    assert await demo_pool.fetch("SELECT id FROM outbox ORDER BY position") == [(e.id,) for e in envelopes]


async def test_a_row_written_while_the_relay_was_awake_is_published_when_its_transaction_commits(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    # No relay sleeps when the writer adds its row, so it does not notify. The relay must not
    # go to sleep past it: it waits for the writer's transaction before its last look.
    publisher = make_bus()
    await publisher.connect()
    async with demo_pool.acquire() as conn:
        transaction = conn.transaction()
        await transaction.start()
        envelope = await outbox.add(conn, ThingHappened(n=1))
        relay = OutboxRelay(demo_pool, publisher, dsn=database_url, schema="demo", poll_interval=60)
        relays.append(relay)
        await relay.start()
        await asyncio.sleep(0.5)  # the relay has looked, found nothing committed, tried to sleep
        assert not await _relay_sleeps(demo_pool)  # it cannot: our transaction holds the lock shared
        await transaction.commit()
    await eventually(lambda: _published(demo_pool, envelope), timeout=10, what="the row published")
    assert relay.notifications == 0  # no NOTIFY was involved
    await eventually(lambda: _relay_sleeps(demo_pool), what="the relay to sleep")


async def test_two_sleeping_relays_are_woken_by_a_commit(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    # One of them holds the sleep lock, the other sleeps without it: both must still wake.
    for _ in range(2):
        publisher = make_bus()
        await publisher.connect()
        relay = OutboxRelay(demo_pool, publisher, dsn=database_url, schema="demo", poll_interval=60)
        relays.append(relay)
        await relay.start()
    await eventually(lambda: _relay_sleeps(demo_pool), what="a relay to sleep")
    await asyncio.sleep(0.3)  # the other one settles too

    for n in range(3):
        async with demo_pool.acquire() as conn, conn.transaction():
            envelope = await outbox.add(conn, ThingHappened(n=n))
        await eventually(lambda: _published(demo_pool, envelope), timeout=10, what=f"row {n} published")
    assert sum(r.published for r in relays) == 3


async def test_a_busy_relay_spares_the_writers_their_notifications(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, database_url: str, relays: list[OutboxRelay]
) -> None:
    # While the relay works through a backlog it holds no sleep lock: rows written then do
    # not notify (writers that would have serialised on NOTIFY), yet all get published.
    relay = await _start_relay(make_bus, demo_pool, database_url, relays, batch_size=5, poll_interval=60)
    await eventually(lambda: _relay_sleeps(demo_pool), what="the relay to sleep")
    await asyncio.gather(*(_write(demo_pool, *range(i, 400, 4)) for i in range(4)))
    await eventually(
        lambda: demo_pool.fetchval("SELECT count(*) = 400 FROM outbox WHERE published_at IS NOT NULL"),
        timeout=30, what="400 rows published",
    )
    assert relay.published == 400
    assert relay.notifications < 200  # typically a handful: only while it slept
