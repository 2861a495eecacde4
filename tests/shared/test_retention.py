"""The event tables keep rows for a while, not forever: published outbox rows and processed
inbox ids go after their retention, in batches; unpublished outbox rows never go. Every
service app runs the job (real PostgreSQL)."""
from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
import pytest
from aiohttp import web

from bus_testkit import ThingHappened, demo_pool, eventually  # noqa: F401
from msp_shared import outbox, retention
from msp_shared.config import ServiceSettings
from msp_shared.events import make_envelope
from msp_shared.inbox import idempotent
from msp_shared.web import service_app


async def _numbers(pool: asyncpg.Pool) -> list[int]:
    rows = await pool.fetch("SELECT (envelope->'data'->>'n')::int AS n FROM outbox ORDER BY position")
    return [r["n"] for r in rows]


async def test_published_outbox_rows_go_after_the_retention_unpublished_ones_never(demo_pool: asyncpg.Pool) -> None:
    async with demo_pool.acquire() as conn, conn.transaction():
        await outbox.add_many(conn, [ThingHappened(n=n) for n in (1, 2, 3, 4)])
    ages = {1: timedelta(days=8), 2: timedelta(days=6), 3: timedelta(0)}  # 4 stays unpublished
    for n, age in ages.items():
        await demo_pool.execute("UPDATE outbox SET published_at = now() - $2::interval"
                                " WHERE (envelope->'data'->>'n')::int = $1", n, age)
    await demo_pool.execute("UPDATE outbox SET created_at = now() - interval '90 days'")  # old, and 4 still owed

    assert await retention.prune_outbox(demo_pool, timedelta(days=7)) == 1
    assert await _numbers(demo_pool) == [2, 3, 4]
    assert await retention.prune_outbox(demo_pool, timedelta(days=7)) == 0


async def test_processed_inbox_ids_go_after_the_retention(demo_pool: asyncpg.Pool) -> None:
    async def effect(conn: asyncpg.Connection, envelope) -> None:  # noqa: ANN001
        await conn.execute("INSERT INTO effects (consumer, event_id, n) VALUES ('demo', $1, $2)",
                           envelope.id, envelope.data["n"])

    handler = idempotent(demo_pool, "demo", effect)
    old, recent = make_envelope(ThingHappened(n=1)), make_envelope(ThingHappened(n=2))
    await handler(old)
    await handler(recent)
    await demo_pool.execute("UPDATE inbox SET processed_at = now() - interval '31 days' WHERE event_id = $1", old.id)

    assert await retention.prune_inbox(demo_pool, timedelta(days=30)) == 1
    assert [r["event_id"] for r in await demo_pool.fetch("SELECT event_id FROM inbox")] == [recent.id]
    await handler(recent)  # a redelivery within the retention still changes nothing
    assert await demo_pool.fetchval("SELECT count(*) FROM effects WHERE event_id = $1", recent.id) == 1


async def test_a_backlog_goes_in_batches(demo_pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "BATCH", 2)
    async with demo_pool.acquire() as conn, conn.transaction():
        await outbox.add_many(conn, [ThingHappened(n=n) for n in range(5)])
    await demo_pool.execute("UPDATE outbox SET published_at = now() - interval '8 days'")
    await demo_pool.executemany("INSERT INTO inbox (consumer, event_id, processed_at) VALUES ('demo', $1, now() - interval '40 days')",
                                [(uuid.uuid4(),) for _ in range(5)])
    assert await retention.prune_outbox(demo_pool, timedelta(days=7)) == 5
    assert await retention.prune_inbox(demo_pool, timedelta(days=30)) == 5


async def test_every_service_app_with_a_schema_runs_the_job(base_env: dict, demo_pool: asyncpg.Pool) -> None:
    async with demo_pool.acquire() as conn, conn.transaction():
        await outbox.add(conn, ThingHappened(n=1))
    await demo_pool.execute("UPDATE outbox SET published_at = now() - interval '10 days'")
    settings = ServiceSettings(**base_env, retention_interval_seconds=0.05, inbox_retention_days=45)
    assert (settings.outbox_retention_days, settings.inbox_retention_days) == (7, 45)
    runner = web.AppRunner(service_app(settings, schema="demo"))
    await runner.setup()  # the app's startup: pool, then the retention job
    try:
        await eventually(lambda: demo_pool.fetchval("SELECT count(*) = 0 FROM outbox"), what="the old row pruned")
    finally:
        await runner.cleanup()
    with pytest.raises(ValueError):
        ServiceSettings(**base_env, inbox_retention_days=0.5)
