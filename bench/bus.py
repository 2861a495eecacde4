"""bench/bus: events per second and end-to-end latency from outbox write to consumer
effect, beside raw aio-pika pipelined confirmed publish and consume in the same run.

Processes as in production: the writers and the outbox relay run in one process (a service
writing events in its transactions, its relay inside it), the consumer in another (another
service, idempotent inbox, its effect committed in its own schema). The raw baseline is
split the same way: one process publishes (persistent, confirms pipelined), another
consumes (manual acks, the Bus's prefetch) at the same time. Wall times are time.time()
taken in the process where the thing happens (one machine, one clock).

Figures:
- saturation: `--events` written by `--writers` concurrent writers as fast as they go, each
  its own transaction; events/s = events / (first write .. last effect, stamped inside the
  consumer's transaction).
- paced: events written at a steady rate (each its own transaction, started on the clock),
  latency write -> effect per event, split at the relay's claim (outbox.published_at is the
  relay transaction's now()); `below_saturation` says whether the rate was under the
  saturation figure of the same run.

Targets (issue 2): outbox path >= 0.5 of the raw publish rate; p50 < 20 ms end to end.

    uv run python bench/bus.py [--events 5000] [--writers 8] [--paced-rates 50,200] [--paced-seconds 5]"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import aio_pika
import asyncpg

sys.path.insert(0, str(Path(__file__).parent))
from _common import AMQP_URL, emit, scratch_database, summary_ms  # noqa: E402

from msp_shared import db, inbox, outbox  # noqa: E402
from msp_shared.bus import Bus  # noqa: E402
from msp_shared.config import ServiceSettings  # noqa: E402
from msp_shared.events import EventData, event  # noqa: E402
from msp_shared.telemetry import setup_tracing  # noqa: E402

PRODUCER_SCHEMA = "bench"  # the writing service: its outbox
CONSUMER_SCHEMA = "bench_consumer"  # the consuming service: its inbox and effects
PREFETCH = ServiceSettings.model_fields["bus_prefetch"].default  # what a service runs with
BODY = b'{"n": 0, "payload": "' + b"x" * 300 + b'"}'  # about the size of an envelope


@event
class BenchPing(EventData):
    TYPE = "bench.ping"
    n: int
    written_at: float  # time.time() at the write, for end-to-end latency


def _cpu_seconds(pids: list[int]) -> float:
    """user+system CPU the processes have used so far (Linux /proc). CPU per event is the
    figure a busy shared machine disturbs least: wall-clock rates also measure the neighbours."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / os.sysconf("SC_CLK_TCK")


def _machine_cpu() -> tuple[float, float]:
    """(busy, idle) CPU seconds of the whole machine so far (/proc/stat), for a diagnostic:
    how many of the cores the saturation phase kept busy, whoever used them."""
    with open("/proc/stat") as fh:
        fields = [int(v) for v in fh.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return (sum(fields) - idle) / os.sysconf("SC_CLK_TCK"), idle / os.sysconf("SC_CLK_TCK")


def _broker_pids() -> list[int]:
    """The local RabbitMQ (beam.smp) processes, for a diagnostic CPU figure: empty when the
    broker runs elsewhere."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() == "beam.smp":
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


def _spawn(target, *args) -> mp.Process:  # noqa: ANN001
    process = mp.get_context("spawn").Process(target=target, args=args, daemon=True)
    process.start()
    return process


# ---- raw aio-pika: the primitive ----------------------------------------------------------


def _raw_publisher(queue: str, n: int, results: mp.Queue) -> None:
    async def run() -> None:
        connection = await aio_pika.connect_robust(AMQP_URL)
        try:
            channel = await connection.channel(publisher_confirms=True)
            start = time.time()
            await asyncio.gather(
                *(
                    channel.default_exchange.publish(
                        aio_pika.Message(BODY, delivery_mode=aio_pika.DeliveryMode.PERSISTENT), routing_key=queue
                    )
                    for _ in range(n)
                )
            )
            results.put(("published", start, time.time()))
        finally:
            await connection.close()

    asyncio.run(run())


def _raw_consumer(queue: str, n: int, ready: mp.Event, results: mp.Queue) -> None:
    async def run() -> None:
        connection = await aio_pika.connect_robust(AMQP_URL)
        try:
            channel = await connection.channel()
            await channel.set_qos(prefetch_count=PREFETCH)
            q = await channel.get_queue(queue)
            done, count, first = asyncio.Event(), 0, 0.0

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                nonlocal count, first
                async with message.process():
                    count += 1
                    if count == 1:
                        first = time.time()
                    if count == n:
                        done.set()

            await q.consume(on_message)
            ready.set()
            await done.wait()
            results.put(("consumed", first, time.time()))
        finally:
            await connection.close()

    asyncio.run(run())


async def raw_aio_pika(n: int) -> dict:
    connection = await aio_pika.connect_robust(AMQP_URL)
    name = f"msp.bench.raw.{uuid.uuid4().hex[:8]}"
    results: mp.Queue = mp.get_context("spawn").Queue()
    ready = mp.get_context("spawn").Event()
    try:
        channel = await connection.channel()
        queue = await channel.declare_queue(name, durable=True, arguments={"x-queue-type": "quorum"})
        consumer = _spawn(_raw_consumer, name, n, ready, results)
        await asyncio.to_thread(ready.wait, 60)
        publisher = _spawn(_raw_publisher, name, n, results)
        got = dict((kind, (a, b)) for kind, a, b in [await asyncio.to_thread(results.get, True, 300) for _ in range(2)])
        for process in (publisher, consumer):
            await asyncio.to_thread(process.join, 30)
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
    (p_start, p_end), (c_first, c_last) = got["published"], got["consumed"]
    return {
        "events": n,
        "publish_per_s": round(n / (p_end - p_start), 1),  # pipelined, every confirm awaited
        "consume_per_s": round(n / (c_last - c_first), 1),  # first to last delivery, while publishing
        "publish_to_last_consume_per_s": round(n / (c_last - p_start), 1),
    }


# ---- the outbox path: writer+relay process, consumer process ------------------------------


EFFECTS_SQL = (
    "CREATE TABLE effects (event_id uuid PRIMARY KEY, n integer NOT NULL,"
    " received_at double precision NOT NULL, written_at double precision NOT NULL);"
)


def _as_a_service_starts() -> None:
    """What every service process does at start (msp_shared.web.run): install its tracer
    provider, with the default exporter "none". Without it each event would look the
    provider up again (telemetry.spans_wanted), which no service pays."""
    setup_tracing(ServiceSettings())


def _consumer_service(dsn: str, exchange: str, ready: mp.Event, stop: mp.Event) -> None:
    """Another service: a Bus consumer group with the idempotent inbox; the effect is a row."""
    _as_a_service_starts()

    async def effect(conn, envelope) -> None:  # noqa: ANN001
        ping = envelope.payload()
        await conn.execute(
            "INSERT INTO effects (event_id, n, received_at, written_at) VALUES ($1, $2, $3, $4)",
            envelope.id, ping.n, time.time(), ping.written_at,
        )

    async def run() -> None:
        pool = await db.create_pool(dsn, CONSUMER_SCHEMA, min_size=4, max_size=10)
        bus = Bus(AMQP_URL, exchange, service="bench-consumer", prefetch=PREFETCH)
        bus.subscribe("bench-effects", [BenchPing.TYPE], inbox.idempotent(pool, "bench-effects", effect))
        await bus.start()
        ready.set()
        await asyncio.to_thread(stop.wait)
        # Diagnostic (stderr): how many deliveries the consumer handled per burst, on average.
        print(f"consumer bursts: {bus.bursts}, deliveries: {bus.burst_deliveries}", file=sys.stderr)
        await bus.close()
        await pool.close()

    asyncio.run(run())


def _producer_service(dsn: str, exchange: str, writers: int, commands) -> None:  # noqa: ANN001
    """The writing service: request-like transactions each adding an event, and its relay."""
    _as_a_service_starts()

    async def run() -> None:
        pool = await db.create_pool(dsn, PRODUCER_SCHEMA, min_size=writers + 2, max_size=writers + 4)
        bus = Bus(AMQP_URL, exchange, service="bench-producer")
        await bus.connect()
        relay = outbox.OutboxRelay(pool, bus, dsn=dsn, schema=PRODUCER_SCHEMA)
        await relay.start()

        async def write(i: int) -> None:
            async with pool.acquire() as conn, conn.transaction():
                await outbox.add(conn, BenchPing(n=i, written_at=time.time()))

        commands.send(("ready",))
        try:
            while True:
                command = await asyncio.to_thread(commands.recv)
                if command[0] == "saturate":
                    _, first, count = command
                    numbers = iter(range(first, first + count))

                    async def writer() -> None:
                        for i in numbers:
                            await write(i)

                    start = time.time()
                    before = (relay.passes, relay.notifications)
                    await asyncio.gather(*(writer() for _ in range(writers)))
                    end = time.time()
                    deadline = time.monotonic() + 300  # the coordinator's own wait fails first
                    while relay.published < first + count and time.monotonic() < deadline:
                        await asyncio.sleep(0.01)  # so the diagnostics cover the whole relay work
                    commands.send(("written", start, end,
                                   {"relay_passes": relay.passes - before[0],
                                    "relay_notifications": relay.notifications - before[1]}))
                elif command[0] == "paced":
                    _, first, count, rate = command
                    interval, t0, tasks = 1 / rate, time.perf_counter(), []
                    for k in range(count):
                        tasks.append(asyncio.create_task(write(first + k)))
                        await asyncio.sleep(max(0.0, t0 + (k + 1) * interval - time.perf_counter()))
                    await asyncio.gather(*tasks)
                    commands.send(("written", t0, time.perf_counter(), {}))
                else:
                    break
        finally:
            await relay.stop()
            await bus.close()
            await pool.close()
            commands.send(("stopped",))

    asyncio.run(run())


async def _wait_effects(pool, first: int, count: int, timeout: float) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while await pool.fetchval("SELECT count(*) FROM effects WHERE n >= $1 AND n < $2", first, first + count) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"effects {first}..{first + count} did not all arrive")
        await asyncio.sleep(0.05)


def _start_profilers(directory: str | None, pids: dict[str, int]) -> list[subprocess.Popen]:
    """Diagnostics only (--profile DIR): py-spy samples each process during the saturation
    phase, in py-spy's raw (collapsed stacks) format, non-blocking so it disturbs little."""
    if not directory:
        return []
    Path(directory).mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            ["py-spy", "record", "--nonblocking", "-r", "250", "-f", "raw", "-p", str(pid),
             "-o", str(Path(directory) / f"{name}.txt")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        for name, pid in pids.items()
    ]


def _stop_profilers(profilers: list[subprocess.Popen]) -> None:
    for profiler in profilers:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
    for profiler in profilers:
        profiler.wait(30)


async def outbox_path(dsn: str, n: int, writers: int, rates: list[float], paced_seconds: float,
                      profile: str | None = None) -> dict:
    migrations = Path(f"/tmp/msp-bench-{uuid.uuid4().hex[:6]}")
    migrations.mkdir()
    (migrations / "0001_effects.sql").write_text(EFFECTS_SQL)
    empty = migrations / "none"
    empty.mkdir()
    await db.migrate(dsn, PRODUCER_SCHEMA, empty)
    await db.migrate(dsn, CONSUMER_SCHEMA, migrations)
    # The coordinator's own connection, named so its backend is left out of the CPU figures.
    pool = await asyncpg.create_pool(
        dsn, min_size=1, max_size=1,
        server_settings={"search_path": CONSUMER_SCHEMA, "application_name": "bench-coordinator"},
    )
    exchange = f"msp.bench.{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("spawn")
    ready, stop = ctx.Event(), ctx.Event()
    ours, theirs = ctx.Pipe()
    consumer = _spawn(_consumer_service, dsn, exchange, ready, stop)
    producer = None
    try:
        await asyncio.to_thread(ready.wait, 60)
        producer = _spawn(_producer_service, dsn, exchange, writers, theirs)
        assert (await asyncio.to_thread(ours.recv))[0] == "ready"

        backends_sql = (
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name <> 'bench-coordinator' AND backend_type = 'client backend'"
        )
        backends = [r["pid"] for r in await pool.fetch(backends_sql)]
        groups = {"writers_and_relay_process": [producer.pid], "consumer_process": [consumer.pid],
                  "postgres_backends": backends,
                  # Diagnostic: the broker serves everyone on the machine, not only this run.
                  "broker_diagnostic": _broker_pids()}
        cpu_before = {name: _cpu_seconds(pids) for name, pids in groups.items()}
        machine_before = _machine_cpu()

        profilers = _start_profilers(profile, {"producer": producer.pid, "consumer": consumer.pid})
        if profilers:
            await asyncio.sleep(1)  # let py-spy attach before the work starts

        # 1. Saturation: `writers` concurrent writers, each event its own transaction.
        ours.send(("saturate", 0, n))
        _, w_start, w_end, relay_diagnostics = await asyncio.to_thread(ours.recv)
        await _wait_effects(pool, 0, n, 300)
        machine_after = _machine_cpu()
        _stop_profilers(profilers)
        # Connections opened during the run: all their CPU was spent in it.
        backends += [pid for pid in (r["pid"] for r in await pool.fetch(backends_sql)) if pid not in backends]
        cpu_ms_per_event = {
            name: round((_cpu_seconds(pids) - cpu_before[name]) * 1000 / n, 3) for name, pids in groups.items()
        }
        first_write, last_effect = await pool.fetchrow(
            "SELECT min(written_at), max(received_at) FROM effects WHERE n < $1", n
        )
        saturation = {
            "events": n,
            "writers": writers,
            "outbox_writes_per_s": round(n / (w_end - w_start), 1),
            "end_to_end_events_per_s": round(n / (last_effect - first_write), 1),
            "cpu_ms_per_event": cpu_ms_per_event,  # the machine also runs the broker and others' work
            "relay_diagnostics": relay_diagnostics,
            # Diagnostic: cores busy on the whole machine during saturation (2 = CPU-bound).
            "machine_busy_cores": round(
                (machine_after[0] - machine_before[0])
                / max(1e-9, (machine_after[0] - machine_before[0] + machine_after[1] - machine_before[1]))
                * (os.cpu_count() or 1), 2),
        }

        # 2. Latency at steady rates below saturation (what a user's action sees).
        paced = []
        first = n
        for rate in rates:
            count = int(rate * paced_seconds)
            ours.send(("paced", first, count, rate))
            _, p_start, p_end, _ = await asyncio.to_thread(ours.recv)
            await _wait_effects(pool, first, count, 120)
            # The relay marks a row after the confirm; its commit can come after the effect.
            while await pool.fetchval(f"SELECT count(*) FROM {PRODUCER_SCHEMA}.outbox WHERE published_at IS NULL"):
                await asyncio.sleep(0.02)
            # outbox.published_at is now() of the relay's transaction: when it claimed the row.
            lags = await pool.fetch(
                "SELECT e.received_at - e.written_at AS lag,"
                " extract(epoch FROM o.published_at)::float8 - e.written_at AS to_claim,"
                " e.received_at - extract(epoch FROM o.published_at)::float8 AS claim_to_effect"
                f" FROM effects e JOIN {PRODUCER_SCHEMA}.outbox o ON o.id = e.event_id"
                " WHERE e.n >= $1 AND e.n < $2",
                first, first + count,
            )
            paced.append(
                {
                    "rate_per_s": rate,
                    "achieved_write_rate_per_s": round(count / (p_end - p_start), 1),
                    "below_saturation": rate < saturation["end_to_end_events_per_s"],
                    "latency_write_to_effect": summary_ms([r["lag"] for r in lags]),
                    "of_which": {
                        "write_to_relay_claim": summary_ms([r["to_claim"] for r in lags]),
                        "relay_claim_to_effect": summary_ms([r["claim_to_effect"] for r in lags]),
                    },
                }
            )
            first += count
        return {"saturation": saturation, "paced": paced}
    finally:
        if producer is not None:
            ours.send(("stop",))
            await asyncio.to_thread(producer.join, 30)
        stop.set()
        await asyncio.to_thread(consumer.join, 30)
        for process in (producer, consumer):
            if process is not None and process.is_alive():
                process.kill()
        await pool.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=5000)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--paced-rates", default="50,200", help="comma-separated events/s")
    parser.add_argument("--paced-seconds", type=float, default=5.0)
    parser.add_argument("--profile", metavar="DIR", help="diagnostics: py-spy raw profiles of both processes"
                        " during saturation (they slow it down: figures of such a run are not comparable)")
    args = parser.parse_args()
    rates = [float(r) for r in args.paced_rates.split(",") if r]
    raw = await raw_aio_pika(args.events)
    async with scratch_database() as dsn:
        ours = await outbox_path(dsn, args.events, args.writers, rates, args.paced_seconds, args.profile)
    emit(
        {
            "bench": "bus",
            "processes": "raw: publisher | consumer; outbox: writers+relay | consumer (+ this coordinator)",
            "raw_aio_pika": raw,
            "outbox_relay_consumer": ours,
            "ratio_end_to_end_vs_raw_publish": round(
                ours["saturation"]["end_to_end_events_per_s"] / raw["publish_per_s"], 3
            ),
            "targets": {"ratio_min": 0.5, "p50_ms_max": 20},
        }
    )


if __name__ == "__main__":
    asyncio.run(main())
