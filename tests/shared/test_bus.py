"""The bus on the real broker: retries with back-off, the dead-letter queue, competing
replicas, per-replica fan-out, redelivery, graceful close."""
from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable

import aio_pika
import asyncpg
import pytest

from bus_testkit import TcpProxy, ThingHappened, demo_pool, effect_counts, eventually, make_bus, record_effect, thing  # noqa: F401
from msp_shared.bus import ERROR_HEADER, RETRIES_HEADER, Bus, BusNotConnected
from msp_shared.events import Envelope
from msp_shared.inbox import idempotent

TYPE = ThingHappened.TYPE


async def _dlq_messages(amqp_url: str, bus: Bus, group: str) -> list[aio_pika.abc.AbstractIncomingMessage]:
    """Drain the group's DLQ (acking what it reads)."""
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.dlq_name(group), passive=True)
        found = []
        while (message := await queue.get(fail=False)) is not None:
            await message.ack()
            found.append(message)
        return found
    finally:
        await connection.close()


async def test_a_redelivered_event_has_no_second_effect(make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool) -> None:
    deliveries = []
    effect = idempotent(demo_pool, "demo", record_effect)

    async def handler(envelope: Envelope) -> None:
        await effect(envelope)
        deliveries.append(envelope.id)  # after the commit

    consumer = make_bus()
    consumer.subscribe("effects", [TYPE], handler)
    await consumer.start()
    envelope = thing(1)
    await consumer.publish(envelope)
    await consumer.publish(envelope)  # the same event again, as after a relay crash
    await consumer.publish(thing(2))

    await eventually(lambda: asyncio.sleep(0, len(deliveries) == 3), what="three deliveries")
    assert deliveries.count(envelope.id) == 2  # the duplicate did reach the handler...
    assert await effect_counts(demo_pool) == (2, 2)  # ...and changed nothing


async def test_a_handler_that_always_fails_is_parked_in_the_dlq_after_its_retries(
    make_bus: Callable[..., Bus], amqp_url: str
) -> None:
    attempts: list[int] = []

    async def broken(envelope: Envelope) -> None:
        attempts.append(envelope.data["n"])
        raise RuntimeError("downstream is broken")

    bus = make_bus(max_retries=3)
    bus.subscribe("broken", [TYPE], broken)
    await bus.start()
    envelope = thing(7)
    await bus.publish(envelope)

    parked = await eventually(lambda: _dlq_messages(amqp_url, bus, "broken"), what="the DLQ")
    assert len(parked) == 1
    assert Envelope.model_validate_json(parked[0].body).id == envelope.id
    assert parked[0].message_id == str(envelope.id)
    assert parked[0].headers[RETRIES_HEADER] == 3
    assert parked[0].headers[ERROR_HEADER] == "RuntimeError"  # the type only, never the error text
    assert parked[0].delivery_mode == aio_pika.DeliveryMode.PERSISTENT
    assert attempts == [7, 7, 7, 7]  # the first delivery and 3 retries

    # Parked means parked: longer than the whole back-off schedule, nothing more happens.
    await asyncio.sleep(4 * bus.retry_delay(bus.max_retries) / 1000)
    assert attempts == [7, 7, 7, 7]
    assert await _dlq_messages(amqp_url, bus, "broken") == []


async def test_a_handler_that_fails_twice_then_succeeds_has_one_effect(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    calls: collections.Counter = collections.Counter()

    async def flaky(envelope: Envelope) -> None:
        calls[envelope.id] += 1

        async def effect_then_fail(conn: asyncpg.Connection, env: Envelope) -> None:
            await record_effect(conn, env)
            if calls[envelope.id] <= 2:
                raise ConnectionError("try later")  # after the write: the rollback must undo it

        await idempotent(demo_pool, "flaky", effect_then_fail)(envelope)

    bus = make_bus(max_retries=5)
    bus.subscribe("flaky", [TYPE], flaky)
    await bus.start()
    envelope = thing(3)
    await bus.publish(envelope)

    await eventually(lambda: asyncio.sleep(0, calls[envelope.id] == 3), what="the third attempt")
    await eventually(lambda: effect_counts(demo_pool), what="the effect")
    await asyncio.sleep(0.3)  # room for a wrong extra delivery to show up
    assert calls[envelope.id] == 3
    assert await effect_counts(demo_pool) == (1, 1)
    assert await _dlq_messages(amqp_url, bus, "flaky") == []


async def test_an_unreadable_message_is_parked_without_reaching_the_handler(
    make_bus: Callable[..., Bus], amqp_url: str, exchange_name: str
) -> None:
    seen: list[int] = []

    async def handler(envelope: Envelope) -> None:
        seen.append(envelope.data["n"])

    bus = make_bus()
    bus.subscribe("strict", [TYPE], handler)
    await bus.start()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        exchange = await channel.get_exchange(exchange_name)
        await exchange.publish(aio_pika.Message(b'{"not": "an envelope"'), routing_key=TYPE)
    finally:
        await connection.close()
    await bus.publish(thing(1))

    parked = await eventually(lambda: _dlq_messages(amqp_url, bus, "strict"), what="the DLQ")
    await eventually(lambda: asyncio.sleep(0, seen == [1]), what="the valid event")
    assert [m.body for m in parked] == [b'{"not": "an envelope"']
    assert parked[0].headers[ERROR_HEADER] == "InvalidEnvelope"


async def test_two_replicas_share_a_group_and_each_event_has_one_effect(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool
) -> None:
    worked = collections.Counter()

    def replica(name: str) -> Bus:
        effect = idempotent(demo_pool, "shared-group", record_effect)

        async def handler(envelope: Envelope) -> None:
            worked[name] += 1
            await asyncio.sleep(0.005)  # some work, so the broker spreads deliveries
            await effect(envelope)

        bus = make_bus(prefetch=2)
        bus.subscribe("workers", [TYPE], handler)
        return bus

    first, second = replica("first"), replica("second")
    await first.start()
    await second.start()
    events = [thing(i) for i in range(60)]
    await asyncio.gather(*(first.publish(e) for e in events))

    await eventually(lambda: effect_counts(demo_pool), what="effects")
    await eventually(lambda: _effects_are(demo_pool, 60), what="60 effects")
    assert await effect_counts(demo_pool) == (60, 60)
    assert sum(worked.values()) == 60  # one delivery per event: the replicas compete, not duplicate
    assert worked["first"] > 0 and worked["second"] > 0


async def _effects_are(pool: asyncpg.Pool, n: int) -> bool:
    total, _ = await effect_counts(pool)
    return total >= n


async def test_per_replica_subscriptions_give_every_replica_every_event(make_bus: Callable[..., Bus]) -> None:
    received: dict[str, list[int]] = {"a": [], "b": []}

    def replica(name: str) -> Bus:
        async def handler(envelope: Envelope) -> None:
            received[name].append(envelope.data["n"])

        bus = make_bus()
        bus.subscribe("evict-cache", [TYPE], handler, per_replica=True)
        return bus

    a, b = replica("a"), replica("b")
    await a.start()
    await b.start()
    for i in range(10):
        await a.publish(thing(i))

    await eventually(lambda: asyncio.sleep(0, len(received["a"]) == 10 and len(received["b"]) == 10), what="fan-out")
    assert sorted(received["a"]) == list(range(10))
    assert sorted(received["b"]) == list(range(10))


async def test_a_group_only_gets_the_types_it_subscribed_to(make_bus: Callable[..., Bus]) -> None:
    received: list[str] = []

    async def handler(envelope: Envelope) -> None:
        received.append(envelope.type)

    bus = make_bus()
    bus.subscribe("picky", [TYPE], handler)
    await bus.start()
    other = Envelope(type="test.other.thing", data={"n": 0})
    await bus.publish(other)
    await bus.publish(thing(1))
    await eventually(lambda: asyncio.sleep(0, received), what="a delivery")
    await asyncio.sleep(0.2)
    assert received == [TYPE]


async def test_close_lets_the_handler_in_flight_finish_and_acks_it(make_bus: Callable[..., Bus]) -> None:
    started, release = asyncio.Event(), asyncio.Event()
    finished: list[int] = []

    async def slow(envelope: Envelope) -> None:
        started.set()
        await release.wait()
        finished.append(envelope.data["n"])

    bus = make_bus()
    bus.subscribe("drain", [TYPE], slow)
    await bus.start()
    await bus.publish(thing(1))
    await asyncio.wait_for(started.wait(), 15)

    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the handler
    release.set()
    await asyncio.wait_for(closing, 15)
    assert finished == [1]
    with pytest.raises(BusNotConnected):
        await bus.ping()

    # It was acked, not requeued: a new replica of the group gets nothing.
    again: list[int] = []

    async def record(envelope: Envelope) -> None:
        again.append(envelope.data["n"])

    successor = make_bus()
    successor.subscribe("drain", [TYPE], record)
    await successor.start()
    await successor.publish(thing(2))
    await eventually(lambda: asyncio.sleep(0, again), what="the next event")
    assert again == [2]


async def test_ping_fails_before_connect_and_succeeds_after(make_bus: Callable[..., Bus]) -> None:
    bus = make_bus()
    with pytest.raises(BusNotConnected):
        await bus.ping()
    await bus.connect()
    await bus.ping()


async def test_the_group_queue_is_a_quorum_queue_with_a_delivery_limit_and_dead_letter_target(
    make_bus: Callable[..., Bus], amqp_url: str
) -> None:
    async def handler(envelope: Envelope) -> None:
        return None

    bus = make_bus(max_retries=2)
    bus.subscribe("typed", [TYPE], handler)
    await bus.start()
    # Re-declaring with the same arguments succeeds; with other arguments the broker refuses,
    # which proves the arguments the queue really has.
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        await channel.declare_queue(
            bus.queue_name("typed"),
            durable=True,
            arguments={
                "x-queue-type": "quorum",
                "x-delivery-limit": bus.delivery_limit,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": bus.dlq_name("typed"),
            },
        )
        with pytest.raises(aio_pika.exceptions.ChannelPreconditionFailed):
            await channel.declare_queue(bus.queue_name("typed"), durable=True, arguments={"x-queue-type": "classic"})
    finally:
        await connection.close()


async def test_a_consumer_resumes_after_losing_the_broker(make_bus: Callable[..., Bus], amqp_url: str) -> None:
    received: list[int] = []

    async def handler(envelope: Envelope) -> None:
        received.append(envelope.data["n"])

    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    consumer = make_bus(proxy.url_for(amqp_url))  # reaches the broker only through the proxy
    publisher = make_bus()
    try:
        consumer.subscribe("resilient", [TYPE], handler)
        await consumer.start()
        await publisher.connect()
        await publisher.publish(thing(1))
        await eventually(lambda: asyncio.sleep(0, received == [1]), what="the first event")

        await proxy.stop()  # the broker connection drops
        await eventually(lambda: _ping_fails(consumer), what="the bus to notice")
        await publisher.publish(thing(2))  # waits in the durable queue
        await proxy.start()
        await eventually(lambda: _ping_ok(consumer), what="the reconnection")
        await publisher.publish(thing(3))
        await eventually(lambda: asyncio.sleep(0, sorted(received) == [1, 2, 3]), what="events after the reconnection")
    finally:
        await consumer.close()
        await proxy.stop()


async def _ping_fails(bus: Bus) -> bool:
    return not await _ping_ok(bus)


async def _ping_ok(bus: Bus) -> bool:
    try:
        await bus.ping()
    except BusNotConnected:
        return False
    return True


async def test_a_failing_per_replica_handler_is_retried_then_parked(make_bus: Callable[..., Bus], amqp_url: str) -> None:
    attempts: list[int] = []

    async def broken(envelope: Envelope) -> None:
        attempts.append(envelope.data["n"])
        raise ValueError("cannot evict")

    bus = make_bus(max_retries=2)
    bus.subscribe("evict", [TYPE], broken, per_replica=True)
    await bus.start()
    await bus.publish(thing(5))

    parked = await eventually(lambda: _dlq_messages(amqp_url, bus, "evict"), what="the DLQ")
    assert attempts == [5, 5, 5]
    assert parked[0].headers[ERROR_HEADER] == "ValueError"
    assert parked[0].headers[RETRIES_HEADER] == 2
