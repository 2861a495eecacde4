"""bench/bus: events per second and end-to-end latency from outbox write to consumer
effect, beside raw aio-pika pipelined confirmed publish and consume in the same run.

Targets (issue 2): outbox path >= 0.5 of the raw publish rate; p50 < 20 ms end to end.

    uv run python bench/bus.py [--events 5000] [--writers 8]"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

import aio_pika

sys.path.insert(0, str(Path(__file__).parent))
from _common import AMQP_URL, emit, scratch_database, summary_ms  # noqa: E402

from msp_shared import db, inbox, outbox  # noqa: E402
from msp_shared.bus import Bus  # noqa: E402
from msp_shared.events import EventData, event  # noqa: E402


@event
class BenchPing(EventData):
    TYPE = "bench.ping"
    n: int
    written_at: float  # time.time() at the write, for end-to-end latency


async def raw_aio_pika(n: int) -> dict:
    """The primitive: persistent messages, publisher confirms pipelined, to a quorum queue,
    and a consumer with manual acks and the same prefetch the Bus uses."""
    connection = await aio_pika.connect_robust(AMQP_URL)
    name = f"msp.bench.raw.{uuid.uuid4().hex[:8]}"
    try:
        channel = await connection.channel(publisher_confirms=True)
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        body = b'{"n": 0, "payload": "' + b"x" * 200 + b'"}'
        start = time.perf_counter()
        await asyncio.gather(
            *(
                channel.default_exchange.publish(
                    aio_pika.Message(body, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=name
                )
                for _ in range(n)
            )
        )
        publish_s = time.perf_counter() - start
        consume_channel = await connection.channel()
        await consume_channel.set_qos(prefetch_count=32)
        cqueue = await consume_channel.get_queue(name)
        done, count = asyncio.Event(), 0

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            nonlocal count
            async with message.process():
                count += 1
                if count == n:
                    done.set()

        start = time.perf_counter()
        await cqueue.consume(on_message)
        await done.wait()
        consume_s = time.perf_counter() - start
        await queue.delete(if_unused=False, if_empty=False)
        return {"publish_per_s": round(n / publish_s, 1), "consume_per_s": round(n / consume_s, 1)}
    finally:
        await connection.close()


SCHEMA_SQL = "CREATE TABLE effects (event_id uuid PRIMARY KEY, received_at double precision NOT NULL, written_at double precision NOT NULL);"


async def outbox_path(dsn: str, n: int, writers: int, paced_rate: float) -> dict:
    migrations = Path(f"/tmp/msp-bench-{uuid.uuid4().hex[:6]}")
    migrations.mkdir()
    (migrations / "0001_effects.sql").write_text(SCHEMA_SQL)
    await db.migrate(dsn, "bench", migrations)
    pool = await db.create_pool(dsn, "bench", min_size=writers + 2, max_size=writers + 4)
    exchange = f"msp.bench.{uuid.uuid4().hex[:8]}"
    producer = Bus(AMQP_URL, exchange, service="bench-producer")
    consumer = Bus(AMQP_URL, exchange, service="bench-consumer", prefetch=64)
    await producer.connect()
    await consumer.connect()
    received = 0
    target = 0
    all_in = asyncio.Event()

    async def effect(conn, envelope) -> None:  # noqa: ANN001
        nonlocal received
        ping = envelope.payload()
        await conn.execute(
            "INSERT INTO effects (event_id, received_at, written_at) VALUES ($1, $2, $3)", envelope.id, time.time(), ping.written_at
        )
        received += 1
        if received >= target:
            all_in.set()

    consumer.subscribe("bench-effects", [BenchPing.TYPE], inbox.idempotent(pool, "bench-effects", effect))
    await consumer.start()
    relay = outbox.OutboxRelay(pool, producer, dsn=dsn, schema="bench")
    await relay.start()

    async def write(i: int) -> None:
        async with pool.acquire() as conn, conn.transaction():
            await outbox.add(conn, BenchPing(n=i, written_at=time.time()))

    try:
        # 1. Saturation: `writers` concurrent writers, each event its own transaction.
        target = n
        start = time.perf_counter()
        queue = iter(range(n))

        async def writer() -> None:
            for i in queue:
                await write(i)

        await asyncio.gather(*(writer() for _ in range(writers)))
        write_s = time.perf_counter() - start
        await asyncio.wait_for(all_in.wait(), timeout=300)
        total_s = time.perf_counter() - start

        # 2. Latency at a steady, moderate rate (what a user's action sees).
        async with pool.acquire() as conn:
            await conn.execute("TRUNCATE effects")
        paced = int(paced_rate * 3)
        received, target = 0, paced
        all_in.clear()
        interval = 1 / paced_rate
        t0 = time.perf_counter()
        tasks = []
        for i in range(paced):
            tasks.append(asyncio.create_task(write(n + i)))
            await asyncio.sleep(max(0, t0 + (i + 1) * interval - time.perf_counter()))
        await asyncio.gather(*tasks)
        await asyncio.wait_for(all_in.wait(), timeout=120)
        async with pool.acquire() as conn:
            rows = await conn.fetch("SELECT received_at - written_at AS lag FROM effects")
        return {
            "events": n,
            "writers": writers,
            "outbox_writes_per_s": round(n / write_s, 1),
            "end_to_end_events_per_s": round(n / total_s, 1),
            "paced_rate_per_s": paced_rate,
            "latency_write_to_effect": summary_ms([r["lag"] for r in rows]),
        }
    finally:
        await relay.stop()
        await consumer.close()
        await producer.close()
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--paced-rate", type=float, default=200.0)
    args = parser.parse_args()
    raw = await raw_aio_pika(args.events)
    async with scratch_database() as dsn:
        ours = await outbox_path(dsn, args.events, args.writers, args.paced_rate)
    emit(
        {
            "bench": "bus",
            "raw_aio_pika": raw,
            "outbox_relay_consumer": ours,
            "ratio_end_to_end_vs_raw_publish": round(ours["end_to_end_events_per_s"] / raw["publish_per_s"], 3),
            "targets": {"ratio_min": 0.5, "p50_ms_max": 20},
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
