"""All SQL of outbound email (table outbound_emails, schema mail)."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg


@dataclass(frozen=True)
class DueEmail:
    id: uuid.UUID
    template: str
    sealed: str | None
    params: dict[str, str]
    attempts: int  # including the attempt just claimed
    requested_at: datetime


async def insert_request(
    conn: asyncpg.Connection,
    *,
    id: uuid.UUID,
    template: str,
    sealed: str,
    params: dict[str, str],
    requested_by: str,
    now: datetime,
) -> bool:
    """Record a request once; a second request with the same id changes nothing."""
    status = await conn.execute(
        "INSERT INTO outbound_emails (id, template, sealed, params, requested_by, next_attempt_at, requested_at)"
        " VALUES ($1, $2, $3, $4::jsonb, $5, $6, $6) ON CONFLICT (id) DO NOTHING",
        id, template, sealed, json.dumps(params), requested_by, now,
    )
    return status.endswith(" 1")


async def claim_due(pool: asyncpg.Pool, *, now: datetime, lease: timedelta, limit: int) -> list[DueEmail]:
    """Take up to `limit` due mails for this replica: rows another replica is claiming right
    now are skipped, and a claim is a lease, so a crashed replica's mails are taken over."""
    rows = await pool.fetch(
        "UPDATE outbound_emails AS o SET locked_until = $1 + $2::interval, attempts = o.attempts + 1"
        " FROM (SELECT id FROM outbound_emails"
        "       WHERE status = 'pending' AND next_attempt_at <= $1"
        "         AND (locked_until IS NULL OR locked_until <= $1)"
        "       ORDER BY next_attempt_at LIMIT $3 FOR UPDATE SKIP LOCKED) AS due"
        " WHERE o.id = due.id"
        " RETURNING o.id, o.template, o.sealed, o.params, o.attempts, o.requested_at",
        now, lease, limit,
    )
    return [
        DueEmail(r["id"], r["template"], r["sealed"], json.loads(r["params"]), r["attempts"], r["requested_at"])
        for r in rows
    ]


async def mark_sent(conn: asyncpg.Connection, id: uuid.UUID, *, attempts: int, now: datetime) -> bool:
    """False when the claim was lost meanwhile (lease expired and another replica took it)."""
    status = await conn.execute(
        "UPDATE outbound_emails SET status = 'sent', sealed = NULL, locked_until = NULL, last_error = NULL,"
        " finished_at = $3 WHERE id = $1 AND status = 'pending' AND attempts = $2",
        id, attempts, now,
    )
    return status.endswith(" 1")


async def schedule_retry(
    pool: asyncpg.Pool, id: uuid.UUID, *, attempts: int, next_attempt_at: datetime, error: str
) -> None:
    await pool.execute(
        "UPDATE outbound_emails SET next_attempt_at = $3, locked_until = NULL, last_error = $4"
        " WHERE id = $1 AND status = 'pending' AND attempts = $2",
        id, attempts, next_attempt_at, error,
    )


async def mark_failed(pool: asyncpg.Pool, id: uuid.UUID, *, attempts: int, error: str, now: datetime) -> None:
    await pool.execute(
        "UPDATE outbound_emails SET status = 'failed', sealed = NULL, locked_until = NULL, last_error = $3,"
        " finished_at = $4 WHERE id = $1 AND status = 'pending' AND attempts = $2",
        id, attempts, error, now,
    )


async def get(conn: asyncpg.Connection | asyncpg.Pool, id: uuid.UUID) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM outbound_emails WHERE id = $1", id)
