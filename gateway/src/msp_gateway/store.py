"""All of the gateway's SQL: sessions and the shared rate-limit log (schema `gateway`)."""
from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from msp_shared import outbox
from msp_shared.events import SessionEnded

from .ratelimit import retry_after

PASSWORD_EXPIRED = "password_expired"  # auth-service's restriction: only the password may be changed


@dataclass
class SessionRow:
    token_hash: bytes
    id: uuid.UUID
    user_id: uuid.UUID
    practice_id: uuid.UUID | None
    roles: tuple[str, ...]
    restriction: str | None
    created_at: datetime
    last_seen_at: datetime
    created_wall: datetime | None = None  # set by the database on insert
    epoch: int | None = None  # auth-service's session epoch of the grant (None: older releases)
    password_expires_at: datetime | None = None  # from the grant: restricted from then on

    def restriction_at(self, now: datetime) -> str | None:
        """The grant's restriction, or password_expired once the password has expired since."""
        if self.restriction is None and self.password_expires_at is not None and now >= self.password_expires_at:
            return PASSWORD_EXPIRED
        return self.restriction

    def revoked_by(self, *, min_epoch: int | None, before: datetime) -> bool:
        """Whether a revocation (epoch, and time for sessions or events without one) ends it."""
        if self.epoch is not None and min_epoch is not None:
            return self.epoch < min_epoch
        return self.created_wall is None or self.created_wall <= before


_COLUMNS = "token_hash, id, user_id, practice_id, roles, restriction, created_at, last_seen_at"


def _row(record: asyncpg.Record) -> SessionRow:
    return SessionRow(
        token_hash=record["token_hash"],
        id=record["id"],
        user_id=record["user_id"],
        practice_id=record["practice_id"],
        roles=tuple(record["roles"]),
        restriction=record["restriction"],
        created_at=record["created_at"],
        last_seen_at=record["last_seen_at"],
        created_wall=record["created_wall"],
        epoch=record["epoch"],
        password_expires_at=record["password_expires_at"],
    )


async def insert_session(pool: asyncpg.Pool, row: SessionRow, *, client_ip: str | None,
                         user_agent: str | None) -> tuple[datetime | None, bool]:
    """Store a new session: (its created_wall, whether it ended the user's sessions of older
    epochs), or (None, False) with nothing stored when its grant's epoch is revoked already
    (migration 0005). A plain insert commits asynchronously (migration 0004: a crash may sign
    out the sessions of its last moments, nothing worse)."""
    record = await pool.fetchrow(
        "SELECT wall, ended_older FROM insert_session($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        row.token_hash, row.id, row.user_id, row.practice_id, list(row.roles), row.restriction,
        row.created_at, row.last_seen_at, client_ip, (user_agent or "")[:200] or None, row.epoch,
        row.password_expires_at,
    )
    return record["wall"], record["ended_older"]


async def get_session(pool: asyncpg.Pool, token_hash: bytes) -> SessionRow | None:
    record = await pool.fetchrow(f"SELECT {_COLUMNS}, created_wall, epoch, password_expires_at FROM sessions WHERE token_hash = $1", token_hash)
    return _row(record) if record else None


async def touch_session(pool: asyncpg.Pool, token_hash: bytes, at: datetime) -> bool:
    """Move last_seen_at forward; False when the row is gone (logged out elsewhere, revoked)."""
    status = await pool.execute(
        "UPDATE sessions SET last_seen_at = greatest(last_seen_at, $2) WHERE token_hash = $1", token_hash, at
    )
    return status != "UPDATE 0"


async def end_session(pool: asyncpg.Pool, token_hash: bytes, *, reason: str, ip: str | None) -> None:
    """Delete the row and announce the end (for the audit trail) in one transaction; a row
    already gone (ended elsewhere) announces nothing."""
    async with pool.acquire() as conn, conn.transaction():
        row = await conn.fetchrow(
            "DELETE FROM sessions WHERE token_hash = $1 RETURNING id, user_id, last_seen_at", token_hash
        )
        if row is not None:
            await outbox.add(conn, SessionEnded(user_id=row["user_id"], session_id=row["id"], reason=reason, ip=ip,
                                                last_seen_at=row["last_seen_at"]))


async def delete_user_sessions(pool: asyncpg.Pool, user_id: uuid.UUID, *, min_epoch: int | None,
                               created_before: datetime) -> int:
    """End a user's sessions granted below `min_epoch` (auth-service's revocation count; for a
    session or event without epochs: created at or before `created_before`, the revocation's
    time) and remember the epoch, so that an older grant arriving later makes no session
    (migration 0005). A session granted after the revocation (the new one after a password
    change) stays."""
    return await pool.fetchval("SELECT revoke_user_sessions($1, $2, $3)", user_id, created_before, min_epoch)


async def forget_revocations(pool: asyncpg.Pool, *, older_than: timedelta) -> None:
    """Revocations are remembered only as long as a grant made before them could still arrive."""
    await pool.execute("DELETE FROM session_revocations WHERE recorded_at < clock_timestamp() - $1::interval", older_than)


PURGE_BATCH = 1000


async def purge_expired(pool: asyncpg.Pool, *, idle_cutoff: datetime, absolute_cutoff: datetime) -> int:
    """Delete the sessions past either limit, each end announced in the same transaction (a
    session nobody came back to ends here, not at a request). In batches, so that a backlog
    (after an outage) makes many short transactions, and replicas purging at once share it."""
    purged = 0
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await conn.fetch(
                "DELETE FROM sessions WHERE token_hash IN ("
                " SELECT token_hash FROM sessions WHERE last_seen_at <= $1 OR created_at <= $2"
                " LIMIT $3 FOR UPDATE SKIP LOCKED"
                ") RETURNING id, user_id, created_at, last_seen_at",
                idle_cutoff, absolute_cutoff, PURGE_BATCH,
            )
            await outbox.add_many(conn, [
                SessionEnded(user_id=row["user_id"], session_id=row["id"], last_seen_at=row["last_seen_at"],
                             reason="absolute" if row["created_at"] <= absolute_cutoff else "idle")
                for row in rows
            ])
        purged += len(rows)
        if len(rows) < PURGE_BATCH:
            return purged


class PostgresRateStore:
    """Sliding-window log in PostgreSQL, shared by replicas. One statement per request, however
    many keys it counts: the rate_hits() function (migrations 0003, 0004) takes an advisory lock
    per key, so count-then-insert is exact under concurrency; its commit is asynchronous (a
    crash may forget the hits of its last moments)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def hit(self, key: str, *, limit: int, window: timedelta, now: datetime) -> int:
        return await self.hit_all(((key, limit),), window=window, now=now)

    async def hit_all(self, checks: Sequence[tuple[str, int]], *, window: timedelta, now: datetime) -> int:
        # Its own implicit transaction: the locks are released when the hits are committed.
        oldest = await self._pool.fetchval(
            "SELECT rate_hits($1, $2, $3, $4)", [k for k, _ in checks], [n for _, n in checks], now - window, now
        )
        return 0 if oldest is None else retry_after(oldest, window, now)

    async def purge(self, now: datetime, window: timedelta) -> None:
        await self._pool.execute("DELETE FROM rate_hits WHERE at <= $1", now - window)
