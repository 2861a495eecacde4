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
from msp_shared.inbox import Idempotent, idempotent

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


# ---- bursts: batch-capable handlers (the idempotent inbox) -----------------------------------


class _RecordingInbox(Idempotent):
    """The idempotent inbox, noting the size of every burst the bus hands it."""

    def __init__(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        super().__init__(*args, **kwargs)
        self.bursts: list[int] = []

    async def handle_batch(self, envelopes, *args):  # noqa: ANN001, ANN002, ANN201
        self.bursts.append(len(envelopes))
        return await super().handle_batch(envelopes, *args)


def _gated(gate: asyncio.Event, *, poisoned: int | None = None, calls: collections.Counter | None = None):  # noqa: ANN202
    """An effect that waits for `gate` on event 0 (so later deliveries pile up into one burst)
    and always fails on event `poisoned`, after its write."""

    async def effect(conn: asyncpg.Connection, envelope: Envelope) -> None:
        n = envelope.data["n"]
        if calls is not None:
            calls[n] += 1
        if n == 0:
            await gate.wait()
        await record_effect(conn, envelope)
        if n == poisoned:
            raise RuntimeError("poisoned")

    return effect


async def _queue_is_settled(amqp_url: str, bus: Bus, group: str) -> int:
    """Messages left in the group's queue once `bus` is closed (unacked ones come back)."""
    await bus.close()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.queue_name(group), passive=True)
        return queue.declaration_result.message_count
    finally:
        await connection.close()


async def test_deliveries_arriving_during_a_burst_are_handled_as_one_burst_and_all_acked(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    gate = asyncio.Event()
    inbox = _RecordingInbox(demo_pool, "demo", _gated(gate))
    bus = make_bus(prefetch=32)
    bus.subscribe("bursts", [TYPE], inbox)
    await bus.start()
    await bus.publish(thing(0))
    await eventually(lambda: asyncio.sleep(0, inbox.bursts == [1]), what="the first burst")
    await asyncio.gather(*(bus.publish(thing(n)) for n in range(1, 21)))
    await asyncio.sleep(0.3)  # the 20 are delivered (prefetch 32) while event 0 is held
    gate.set()

    await eventually(lambda: _effects_are(demo_pool, 21), what="21 effects")
    assert await effect_counts(demo_pool) == (21, 21)
    assert inbox.bursts[0] == 1 and max(inbox.bursts[1:]) > 1  # they came together
    assert sum(inbox.bursts) == 21
    # Every delivery was acked (one multiple ack per burst): nothing comes back on close.
    assert await _queue_is_settled(amqp_url, bus, "bursts") == 0


async def test_a_poisoned_event_in_a_burst_is_retried_then_parked_alone_and_the_others_take_effect_once(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    gate = asyncio.Event()
    calls: collections.Counter = collections.Counter()
    inbox = _RecordingInbox(demo_pool, "demo", _gated(gate, poisoned=7, calls=calls))
    bus = make_bus(max_retries=2)
    bus.subscribe("poison", [TYPE], inbox)
    await bus.start()
    events = [thing(n) for n in range(15)]
    await bus.publish(events[0])
    await eventually(lambda: asyncio.sleep(0, inbox.bursts == [1]), what="the first burst")
    await asyncio.gather(*(bus.publish(e) for e in events[1:]))
    await asyncio.sleep(0.3)
    gate.set()

    parked = await eventually(lambda: _dlq_messages(amqp_url, bus, "poison"), what="the DLQ")
    assert [Envelope.model_validate_json(m.body).id for m in parked] == [events[7].id]
    assert parked[0].headers[RETRIES_HEADER] == 2
    assert parked[0].headers[ERROR_HEADER] == "RuntimeError"
    await eventually(lambda: _effects_are(demo_pool, 14), what="14 effects")
    await asyncio.sleep(0.3)  # room for a wrong extra effect or delivery
    assert await effect_counts(demo_pool) == (14, 14)  # every other event once, nothing of event 7
    assert await demo_pool.fetchval("SELECT count(*) FROM effects WHERE n = 7") == 0
    assert calls[7] == 3  # its first delivery and 2 retries, each alone in the end
    assert max(inbox.bursts) > 1
    assert await _queue_is_settled(amqp_url, bus, "poison") == 0


async def test_close_lets_a_burst_in_flight_finish_and_acks_it(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    gate = asyncio.Event()
    inbox = _RecordingInbox(demo_pool, "demo", _gated(gate))
    bus = make_bus()
    bus.subscribe("drain-bursts", [TYPE], inbox)
    await bus.start()
    await bus.publish(thing(0))
    await eventually(lambda: asyncio.sleep(0, inbox.bursts == [1]), what="the burst")
    await asyncio.gather(*(bus.publish(thing(n)) for n in range(1, 6)))
    await asyncio.sleep(0.3)  # delivered, waiting behind the burst in hand

    closing = asyncio.create_task(bus.close())
    await asyncio.sleep(0.1)
    assert not closing.done()  # waiting for the burst
    gate.set()
    await asyncio.wait_for(closing, 15)
    assert await effect_counts(demo_pool) == (6, 6)  # the burst and what was already delivered

    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.queue_name("drain-bursts"), passive=True)
        assert queue.declaration_result.message_count == 0
    finally:
        await connection.close()


async def test_a_burst_and_a_per_message_group_share_a_connection_without_crossing_acks(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    # Two subscriptions of one Bus: a multiple ack of one group's burst must not settle the
    # other group's deliveries (each subscription has its own channel).
    gate = asyncio.Event()
    inbox = _RecordingInbox(demo_pool, "demo", _gated(gate))
    slow_seen: list[int] = []
    release_slow = asyncio.Event()

    async def slow(envelope: Envelope) -> None:
        await release_slow.wait()
        slow_seen.append(envelope.data["n"])

    bus = make_bus(close_timeout=0.5)  # the slow group never finishes: close gives up on it
    bus.subscribe("fast", [TYPE], inbox)
    bus.subscribe("slow", [TYPE], slow)
    await bus.start()
    await asyncio.gather(*(bus.publish(thing(n)) for n in range(10)))
    gate.set()
    await eventually(lambda: _effects_are(demo_pool, 10), what="the burst group's effects")

    # The slow group's messages are still unacked; had they been acked by the other group's
    # multiple ack, a close would lose them instead of returning them.
    await bus.close()
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(bus.queue_name("slow"), passive=True)
        returned = queue.declaration_result.message_count
    finally:
        await connection.close()
    release_slow.set()
    assert returned + len(slow_seen) == 10


async def test_a_burst_consumer_resumes_after_losing_the_broker_with_one_effect_per_event(
    make_bus: Callable[..., Bus], demo_pool: asyncpg.Pool, amqp_url: str
) -> None:
    # After the reconnection the channel is a new one (delivery tags start again at 1):
    # bursts must still be settled right, and redeliveries must have no second effect.
    inbox = _RecordingInbox(demo_pool, "demo", record_effect)
    proxy = TcpProxy("127.0.0.1", 5672)
    await proxy.start()
    consumer = make_bus(proxy.url_for(amqp_url))
    publisher = make_bus()
    try:
        consumer.subscribe("resilient-bursts", [TYPE], inbox)
        await consumer.start()
        await publisher.connect()
        await asyncio.gather(*(publisher.publish(thing(n)) for n in range(20)))
        await eventually(lambda: _effects_are(demo_pool, 20), what="effects before the outage")

        await proxy.stop()
        await eventually(lambda: _ping_fails(consumer), what="the bus to notice")
        await asyncio.gather(*(publisher.publish(thing(n)) for n in range(20, 40)))  # wait in the queue
        await proxy.start()
        await eventually(lambda: _ping_ok(consumer), what="the reconnection")
        await asyncio.gather(*(publisher.publish(thing(n)) for n in range(40, 60)))
        await eventually(lambda: _effects_are(demo_pool, 60), timeout=30, what="effects after the outage")
        await asyncio.sleep(0.3)
        assert await effect_counts(demo_pool) == (60, 60)
        assert await _queue_is_settled(amqp_url, consumer, "resilient-bursts") == 0
    finally:
        await consumer.close()
        await proxy.stop()
