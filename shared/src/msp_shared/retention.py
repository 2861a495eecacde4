"""How long the event tables of a service's schema keep their rows, and the hourly job that
deletes older ones (every replica runs it; batches with SKIP LOCKED share the work).

- outbox: a published row is kept `outbox_retention_days`, to trace what was sent. An
  unpublished row is never deleted, however old: it is an event still owed.
- inbox: a processed event id is kept `inbox_retention_days`. Redelivery comes within
  moments (the broker re-sends an unacknowledged message when its consumer reconnects; the
  relay republishes a row whose mark was lost at its next pass), so ids kept for weeks
  lose no idempotency. A message parked in the dead-letter queue never committed its id."""
from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from datetime import timedelta

import asyncpg
from aiohttp import web

from . import db
from .config import ServiceSettings
from .periodic import periodic_ctx
from .web import POOL, SETTINGS

BATCH = 5000


async def prune_outbox(pool: asyncpg.Pool, older_than: timedelta) -> int:
    return await db.delete_in_batches(pool, (
        "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE published_at < now() - $1::interval"
        " LIMIT $2 FOR UPDATE SKIP LOCKED)"), older_than, batch=BATCH)


async def prune_inbox(pool: asyncpg.Pool, older_than: timedelta) -> int:
    return await db.delete_in_batches(pool, (
        "DELETE FROM inbox WHERE (consumer, event_id) IN (SELECT consumer, event_id FROM inbox"
        " WHERE processed_at < now() - $1::interval LIMIT $2 FOR UPDATE SKIP LOCKED)"), older_than, batch=BATCH)


async def prune_event_tables(app: web.Application) -> int:
    settings: ServiceSettings = app[SETTINGS]
    pool = app[POOL]
    return (await prune_outbox(pool, timedelta(days=settings.outbox_retention_days))
            + await prune_inbox(pool, timedelta(days=settings.inbox_retention_days)))


def retention_ctx(settings: ServiceSettings) -> Callable[[web.Application], AsyncIterator[None]]:
    return periodic_ctx("event-table-retention", prune_event_tables, every=settings.retention_interval_seconds)
