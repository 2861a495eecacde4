"""All of verify-service's SQL. Callers own the transaction (the HTTP handler)."""
from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from msp_shared import db

from .limits import SendHistory, Usage


@dataclass(frozen=True)
class Verification:
    id: uuid.UUID
    user_id: uuid.UUID
    purpose: str
    phone: str
    channel: str
    code_hash: bytes
    salt: bytes
    ip: str | None
    created_at: datetime
    expires_at: datetime
    attempts: int = 0
    status: str = "pending"


@dataclass(frozen=True)
class AuditEntry:
    at: datetime
    actor_id: str | None
    user_id: uuid.UUID
    action: str  # code.sent | code.checked
    outcome: str
    verification_id: uuid.UUID | None = None
    purpose: str | None = None
    channel: str | None = None
    ip: str | None = None
    phone_hint: str | None = None


def _lock_key(text: str) -> int:
    return int.from_bytes(hashlib.sha256(f"msp-verify-send:{text}".encode()).digest()[:8], "big", signed=True)


async def lock_senders(conn: asyncpg.Connection, *, user_id: uuid.UUID, phone: str, ip: str | None) -> None:
    """Serialise concurrent sends touching the same user, phone or IP, so the limit checks
    and the insert that follows them cannot interleave (two racing requests cannot both
    slip under a limit). Keys are taken in a fixed order: no deadlocks."""
    keys = sorted({_lock_key(f"user:{user_id}"), _lock_key(f"phone:{phone}"), _lock_key(f"ip:{ip}")})
    for key in keys:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def send_history(
    conn: asyncpg.Connection, *, user_id: uuid.UUID, purpose: str, phone: str, ip: str | None, since: datetime
) -> SendHistory:
    row = await conn.fetchrow(
        """
        SELECT
          count(*) FILTER (WHERE phone = $2)                                AS phone_count,
          min(created_at) FILTER (WHERE phone = $2)                         AS phone_oldest,
          count(*) FILTER (WHERE user_id = $1)                              AS user_count,
          min(created_at) FILTER (WHERE user_id = $1)                       AS user_oldest,
          count(*) FILTER (WHERE ip IS NOT DISTINCT FROM $3::text)          AS ip_count,
          min(created_at) FILTER (WHERE ip IS NOT DISTINCT FROM $3::text)   AS ip_oldest
        FROM verifications
        WHERE created_at > $4 AND (user_id = $1 OR phone = $2 OR ip IS NOT DISTINCT FROM $3::text)
        """,
        user_id, phone, ip, since,
    )
    last_send = await conn.fetchval(
        "SELECT max(created_at) FROM verifications WHERE user_id = $1 AND purpose = $2 AND status <> 'failed'",
        user_id, purpose,
    )
    return SendHistory(
        phone=Usage(row["phone_count"], row["phone_oldest"]),
        user=Usage(row["user_count"], row["user_oldest"]),
        ip=Usage(row["ip_count"], row["ip_oldest"]),
        last_send=last_send,
    )


async def supersede_pending(conn: asyncpg.Connection, *, user_id: uuid.UUID, purpose: str) -> int:
    """A new code kills every earlier live code of the same user and purpose."""
    result = await conn.execute(
        "UPDATE verifications SET status = 'superseded' WHERE user_id = $1 AND purpose = $2 AND status = 'pending'",
        user_id, purpose,
    )
    return int(result.split()[-1])


async def insert_verification(conn: asyncpg.Connection, v: Verification) -> None:
    await conn.execute(
        """
        INSERT INTO verifications
          (id, user_id, purpose, phone, channel, code_hash, salt, ip, created_at, expires_at, attempts, status)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)
        """,
        v.id, v.user_id, v.purpose, v.phone, v.channel, v.code_hash, v.salt, v.ip,
        v.created_at, v.expires_at, v.attempts, v.status,
    )


async def delete_old_verifications(pool: asyncpg.Pool, *, before: datetime) -> int:
    """Data minimisation: code rows (phone number, client IP, code hash) sent before `before`
    go, in short batches that replicas share; returns how many."""
    return await db.delete_in_batches(pool, (
        "DELETE FROM verifications WHERE id IN (SELECT id FROM verifications WHERE created_at < $1"
        " LIMIT $2 FOR UPDATE SKIP LOCKED)"), before)


async def mark_failed(conn: asyncpg.Connection, verification_id: uuid.UUID) -> None:
    await conn.execute(
        "UPDATE verifications SET status = 'failed' WHERE id = $1 AND status = 'pending'", verification_id
    )


async def lock_verification(conn: asyncpg.Connection, verification_id: uuid.UUID) -> Verification | None:
    """The row, locked until the transaction ends: concurrent checks of one code queue up, so
    parallel guesses cannot exceed the attempt limit or both use a right code."""
    row = await conn.fetchrow("SELECT * FROM verifications WHERE id = $1 FOR UPDATE", verification_id)
    if row is None:
        return None
    return Verification(**{k: row[k] for k in Verification.__dataclass_fields__})


async def record_check(
    conn: asyncpg.Connection, verification_id: uuid.UUID, *, attempts: int, status: str, verified_at: datetime | None
) -> None:
    await conn.execute(
        "UPDATE verifications SET attempts = $2, status = $3, verified_at = coalesce($4, verified_at) WHERE id = $1",
        verification_id, attempts, status, verified_at,
    )


async def add_audit(conn: asyncpg.Connection, entry: AuditEntry) -> None:
    await conn.execute(
        """
        INSERT INTO audit (at, actor_id, user_id, action, outcome, verification_id, purpose, channel, ip, phone_hint)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
        """,
        entry.at, entry.actor_id, entry.user_id, entry.action, entry.outcome, entry.verification_id,
        entry.purpose, entry.channel, entry.ip, entry.phone_hint,
    )


async def audit_for_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[asyncpg.Record]:
    return await conn.fetch("SELECT * FROM audit WHERE user_id = $1 ORDER BY id", user_id)
