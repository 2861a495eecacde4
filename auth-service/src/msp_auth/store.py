"""All of auth-service's SQL. Functions take a connection: the caller (a request handler or
a task) owns the transaction."""
from __future__ import annotations

import json
import uuid
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from msp_shared import db

Record = asyncpg.Record

# Columns a caller may change through update_user (names are interpolated: keep it a whitelist).
USER_FIELDS = frozenset({
    "email", "first_name", "last_name", "phone", "phone_from_inviter", "cell_phone", "phone_verified_at", "time_zone",
    "ada_number", "specialties", "status", "two_step_required", "securemail_paid", "roles",
    "password_reset_required", "failed_logins", "locked_at", "terms_version", "terms_accepted_at",
    "pending_email", "last_login_at", "last_invited_at", "registered_at", "practice_id",
    "expiry_warnings_sent",
})
PRACTICE_FIELDS = frozenset({"name", "address", "phone", "identifiers"})


# ---- practices ------------------------------------------------------------------------------

async def create_practice(conn: asyncpg.Connection, *, name: str, address: str, phone: str,
                          identifiers: dict[str, str], now: datetime) -> Record:
    return await conn.fetchrow(
        "INSERT INTO practices (id, name, address, phone, identifiers, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5::jsonb, $6, $6) RETURNING *",
        uuid.uuid4(), name, address, phone, json.dumps(identifiers), now,
    )


async def get_practice(conn: asyncpg.Connection, practice_id: uuid.UUID | None) -> Record | None:
    if practice_id is None:
        return None
    return await conn.fetchrow("SELECT * FROM practices WHERE id = $1", practice_id)


async def list_practices(conn: asyncpg.Connection, *, name: str | None = None, limit: int = 100) -> list[Record]:
    return await conn.fetch(
        "SELECT * FROM practices WHERE ($1::text IS NULL OR name ILIKE '%' || $1 || '%')"
        " ORDER BY name, id LIMIT $2",
        name, limit,
    )


async def update_practice(conn: asyncpg.Connection, practice_id: uuid.UUID, fields: dict[str, Any], now: datetime) -> Record | None:
    unknown = set(fields) - PRACTICE_FIELDS
    if unknown:
        raise ValueError(f"not practice fields: {sorted(unknown)}")
    values = [json.dumps(v) if k == "identifiers" else v for k, v in fields.items()]
    sets = ", ".join(
        f"{name} = ${i}::jsonb" if name == "identifiers" else f"{name} = ${i}" for i, name in enumerate(fields, start=3)
    )
    sql = f"UPDATE practices SET updated_at = $2{', ' + sets if sets else ''} WHERE id = $1 RETURNING *"
    return await conn.fetchrow(sql, practice_id, now, *values)


# ---- users ----------------------------------------------------------------------------------

async def get_user(conn: asyncpg.Connection, user_id: uuid.UUID | str | None, *, for_update: bool = False) -> Record | None:
    if user_id is None:
        return None
    try:
        uid = user_id if isinstance(user_id, uuid.UUID) else uuid.UUID(str(user_id))
    except ValueError:
        return None
    return await conn.fetchrow("SELECT * FROM users WHERE id = $1" + (" FOR UPDATE" if for_update else ""), uid)


async def raise_session_epoch(conn: asyncpg.Connection, user_id: uuid.UUID) -> int:
    """One more revocation of the user's sessions (migration 0007); the row stays locked until
    the caller's transaction ends. Returns the new epoch."""
    return await conn.fetchval("UPDATE users SET session_epoch = session_epoch + 1 WHERE id = $1 RETURNING session_epoch",
                               user_id)


async def get_user_by_email(conn: asyncpg.Connection, email: str, *, for_update: bool = False) -> Record | None:
    """With for_update, the row is locked and, if its email changed while this waited for the
    lock, not returned (PostgreSQL re-checks the condition on the new row version)."""
    return await conn.fetchrow(
        "SELECT * FROM users WHERE lower(email) = lower($1)" + (" FOR UPDATE" if for_update else ""), email.strip()
    )


async def email_taken(conn: asyncpg.Connection, email: str, *, except_user: uuid.UUID | None = None) -> bool:
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM users WHERE (lower(email) = lower($1) OR lower(pending_email) = lower($1))"
        " AND id IS DISTINCT FROM $2)",
        email.strip(), except_user,
    ))


async def create_user(
    conn: asyncpg.Connection,
    *,
    email: str,
    practice_id: uuid.UUID | None,
    invited_by_practice: uuid.UUID | None,
    first_name: str = "",
    last_name: str = "",
    phone: str | None = None,
    cell_phone: str | None = None,
    roles: Iterable[str] = ("member",),
    two_step_required: bool = True,
    time_zone: str,
    now: datetime,
) -> Record:
    return await conn.fetchrow(
        "INSERT INTO users (id, email, practice_id, invited_by_practice, first_name, last_name, phone,"
        " phone_from_inviter, cell_phone, roles, two_step_required, time_zone, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7::text, $7::text IS NOT NULL, $8, $9, $10, $11, $12, $12) RETURNING *",
        uuid.uuid4(), email.strip(), practice_id, invited_by_practice, first_name, last_name, phone,
        cell_phone, list(roles), two_step_required, time_zone, now,
    )


async def update_user(conn: asyncpg.Connection, user_id: uuid.UUID, fields: dict[str, Any], now: datetime) -> Record:
    unknown = set(fields) - USER_FIELDS
    if unknown:
        raise ValueError(f"not user fields: {sorted(unknown)}")
    sets = "".join(f", {name} = ${i}" for i, name in enumerate(fields, start=3))
    return await conn.fetchrow(
        f"UPDATE users SET updated_at = $2{sets} WHERE id = $1 RETURNING *", user_id, now, *fields.values()
    )


async def practice_has_users(conn: asyncpg.Connection, practice_id: uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM users WHERE practice_id = $1)", practice_id))


async def list_practice_users(conn: asyncpg.Connection, practice_id: uuid.UUID) -> list[Record]:
    """The Manage Users view: the practice's own users, and users it invited who belong
    elsewhere until they are fully registered (then they drop out)."""
    return await conn.fetch(
        "SELECT * FROM users WHERE practice_id = $1"
        " OR (invited_by_practice = $1 AND practice_id IS DISTINCT FROM $1"
        " AND status IN ('invited', 'registered_unverified'))"
        " ORDER BY lower(last_name), lower(first_name), lower(email)",
        practice_id,
    )


async def find_users(conn: asyncpg.Connection, *, email: str | None, practice_id: uuid.UUID | None,
                     user_id: uuid.UUID | None = None, name: str | None = None, locked_only: bool = False,
                     after_email: str | None = None, limit: int = 100) -> list[Record]:
    """Support's user search, in email order. `email` and `name` are plain substrings (strpos:
    % and _ are not wildcards); `name` is matched against "first last". `after_email` is the
    lower-cased email of the previous page's last row (keyset paging on the unique index)."""
    return await conn.fetch(
        "SELECT * FROM users WHERE ($1::text IS NULL OR strpos(lower(email), lower($1)) > 0)"
        " AND ($2::uuid IS NULL OR practice_id = $2) AND ($3::uuid IS NULL OR id = $3)"
        " AND ($4::text IS NULL OR strpos(lower(first_name || ' ' || last_name), lower($4)) > 0)"
        " AND (NOT $5 OR locked_at IS NOT NULL) AND ($6::text IS NULL OR lower(email) > $6)"
        " ORDER BY lower(email) LIMIT $7",
        email, practice_id, user_id, name, locked_only, after_email, limit,
    )


async def email_key(conn: asyncpg.Connection, user_id: uuid.UUID) -> str | None:
    """A user's place in Support's email-ordered search (the paging cursor names the user)."""
    return await conn.fetchval("SELECT lower(email) FROM users WHERE id = $1", user_id)


async def find_support_user(conn: asyncpg.Connection, email: str) -> Record | None:
    return await get_user_by_email(conn, email)


# ---- who has written to an account ---------------------------------------------------------

async def record_recipient_practice(conn: asyncpg.Connection, user_id: uuid.UUID, practice_id: uuid.UUID | None,
                                    now: datetime) -> None:
    """A sender of this practice (None: of no practice) addressed the account."""
    await conn.execute(
        "INSERT INTO recipient_practices (user_id, practice_id, first_at) VALUES ($1, $2, $3)"
        " ON CONFLICT ON CONSTRAINT recipient_practices_once DO NOTHING",
        user_id, practice_id, now,
    )


async def addressed_by_other_practices(conn: asyncpg.Connection, user_id: uuid.UUID, practice_id: uuid.UUID) -> bool:
    """Whether a sender of any practice but this one (or of none) has addressed the account."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM recipient_practices WHERE user_id = $1 AND practice_id IS DISTINCT FROM $2)",
        user_id, practice_id,
    ))


# ---- passwords --------------------------------------------------------------------------------

async def set_password(conn: asyncpg.Connection, user_id: uuid.UUID, password_hash: str, now: datetime, *, keep: int = 24,
                       single_factor_ok: bool | None = None) -> None:
    """Store a new password: the user's hash, a history row, and a fresh expiry clock.
    `single_factor_ok`: policy.single_factor_ok(password), which only the caller can know (it
    has the password); None records "unknown", never the previous password's answer."""
    await conn.execute(
        "UPDATE users SET password_hash = $2, password_changed_at = $3, password_reset_required = false,"
        " failed_logins = 0, locked_at = NULL, expiry_warnings_sent = '{}', updated_at = $3,"
        " password_single_factor_ok = $4 WHERE id = $1",
        user_id, password_hash, now, single_factor_ok,
    )
    await conn.execute(
        "INSERT INTO password_history (user_id, password_hash, created_at) VALUES ($1, $2, $3)",
        user_id, password_hash, now,
    )
    await conn.execute(
        "DELETE FROM password_history WHERE user_id = $1 AND id NOT IN ("
        " SELECT id FROM password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2)",
        user_id, keep,
    )


async def record_single_factor_ok(conn: asyncpg.Connection, user_id: uuid.UUID, password_hash: str, ok: bool) -> None:
    """Fill in an unknown password_single_factor_ok once the password is known again (the user
    typed it), only while the row still has that password."""
    await conn.execute(
        "UPDATE users SET password_single_factor_ok = $3 WHERE id = $1 AND password_hash = $2"
        " AND password_single_factor_ok IS NULL",
        user_id, password_hash, ok,
    )


async def rehash_password(conn: asyncpg.Connection, user_id: uuid.UUID, old_hash: str, new_hash: str) -> None:
    """Same password, current parameters (no new history row, no new expiry clock)."""
    await conn.execute("UPDATE users SET password_hash = $3 WHERE id = $1 AND password_hash = $2", user_id, old_hash, new_hash)
    await conn.execute(
        "UPDATE password_history SET password_hash = $3 WHERE user_id = $1 AND password_hash = $2", user_id, old_hash, new_hash
    )


async def recent_password_hashes(conn: asyncpg.Connection, user_id: uuid.UUID, count: int) -> list[str]:
    if count <= 0:
        return []
    rows = await conn.fetch(
        "SELECT password_hash FROM password_history WHERE user_id = $1 ORDER BY id DESC LIMIT $2", user_id, count
    )
    return [r["password_hash"] for r in rows]


async def record_login(conn: asyncpg.Connection, user_id: uuid.UUID, now: datetime) -> None:
    await conn.execute("UPDATE users SET failed_logins = 0, last_login_at = $2 WHERE id = $1", user_id, now)


async def sign_in(conn: asyncpg.Connection, user_id: uuid.UUID, password_hash: str, *, now: datetime,
                  ip: str | None) -> tuple[Record, dict[str, Any] | None] | None:
    """A successful login in one statement: reset the failure count, stamp last_login_at and
    write the audit row, only if the row (locked, so concurrent attempts wait) still has the
    password just verified and is neither locked nor waiting for a reset. Returns the fresh
    user and its practice, or None when that no longer holds (the caller re-reads and refuses)."""
    row = await conn.fetchrow(
        "WITH u AS ("
        " UPDATE users SET failed_logins = 0, last_login_at = $3"
        " WHERE id = $1 AND password_hash = $2 AND locked_at IS NULL AND NOT password_reset_required"
        " RETURNING *"
        "), a AS ("
        " INSERT INTO audit_log (at, actor_id, subject_id, practice_id, action, outcome, ip, details)"
        " SELECT $3, u.id, u.id, u.practice_id, 'login', 'ok', $4, '{}'::jsonb FROM u"
        ") SELECT u.*, (SELECT to_jsonb(p) FROM practices p WHERE p.id = u.practice_id) AS practice_json FROM u",
        user_id, password_hash, now, ip,
    )
    if row is None:
        return None
    practice = row["practice_json"]
    return row, (json.loads(practice) if isinstance(practice, str) else practice)


async def record_wrong_password(conn: asyncpg.Connection, user_id: uuid.UUID, failures: int, lock_at: datetime | None) -> None:
    await conn.execute(
        "UPDATE users SET failed_logins = $2, locked_at = COALESCE(locked_at, $3) WHERE id = $1", user_id, failures, lock_at
    )


async def users_near_expiry(conn: asyncpg.Connection, *, changed_before: datetime, changed_after: datetime,
                            after: tuple[datetime, uuid.UUID] | None = None, limit: int = 500) -> list[Record]:
    """Users whose password was set in (changed_after, changed_before]: inside the warning
    window and not expired, in (password_changed_at, id) order after the `after` cursor.
    Locked rows are skipped, so replicas share the work."""
    cursor_at, cursor_id = after or (changed_after, uuid.UUID(int=0))
    return await conn.fetch(
        "SELECT id, email, password_changed_at, expiry_warnings_sent FROM users"
        " WHERE password_hash IS NOT NULL AND password_changed_at <= $1 AND password_changed_at > $2"
        " AND (password_changed_at, id) > ($3, $4)"
        " ORDER BY password_changed_at, id LIMIT $5 FOR UPDATE SKIP LOCKED",
        changed_before, changed_after, cursor_at, cursor_id, limit,
    )


async def mark_expiry_warnings(conn: asyncpg.Connection, user_id: uuid.UUID, days: Iterable[int]) -> None:
    await conn.execute(
        "UPDATE users SET expiry_warnings_sent = ARRAY(SELECT DISTINCT unnest(expiry_warnings_sent || $2::int[]))"
        " WHERE id = $1",
        user_id, list(days),
    )


# ---- single-use tokens ------------------------------------------------------------------------

async def create_token(
    conn: asyncpg.Connection,
    *,
    kind: str,
    user_id: uuid.UUID,
    digest: bytes,
    now: datetime,
    ttl: timedelta,
    created_by: uuid.UUID | None = None,
    practice_id: uuid.UUID | None = None,
) -> Record:
    """A new token; every earlier live token of the same kind for the user stops working."""
    await revoke_tokens(conn, user_id, kind, now)
    return await conn.fetchrow(
        "INSERT INTO tokens (id, kind, user_id, digest, created_by, practice_id, created_at, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING *",
        uuid.uuid4(), kind, user_id, digest, created_by, practice_id, now, now + ttl,
    )


async def revoke_tokens(conn: asyncpg.Connection, user_id: uuid.UUID, kind: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE tokens SET revoked_at = $3 WHERE user_id = $1 AND kind = $2 AND used_at IS NULL AND revoked_at IS NULL",
        user_id, kind, now,
    )


async def live_token(conn: asyncpg.Connection, kind: str, digest: bytes, now: datetime, *, for_update: bool = False) -> Record | None:
    """The token with this digest if it is of this kind, unused, not revoked and not expired."""
    return await conn.fetchrow(
        "SELECT * FROM tokens WHERE digest = $1 AND kind = $2 AND used_at IS NULL AND revoked_at IS NULL"
        " AND expires_at > $3" + (" FOR UPDATE" if for_update else ""),
        digest, kind, now,
    )


async def use_token(conn: asyncpg.Connection, token_id: uuid.UUID, now: datetime) -> bool:
    status = await conn.execute("UPDATE tokens SET used_at = $2 WHERE id = $1 AND used_at IS NULL AND revoked_at IS NULL", token_id, now)
    return status.endswith(" 1")


async def count_tokens_since(conn: asyncpg.Connection, user_id: uuid.UUID, kind: str, since: datetime) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM tokens WHERE user_id = $1 AND kind = $2 AND created_at > $3", user_id, kind, since
    )


async def tokens_since(conn: asyncpg.Connection, user_id: uuid.UUID, kind: str, since: datetime) -> list[Record]:
    """The user's tokens of this kind made after `since`, newest first: created_at, and
    `unrevoked` (neither used nor revoked; expired ones count)."""
    return await conn.fetch(
        "SELECT created_at, (used_at IS NULL AND revoked_at IS NULL) AS unrevoked FROM tokens"
        " WHERE user_id = $1 AND kind = $2 AND created_at > $3 ORDER BY created_at DESC",
        user_id, kind, since,
    )


# ---- verification proofs ----------------------------------------------------------------------

async def use_proof(conn: asyncpg.Connection, *, jti: str, user_id: uuid.UUID, purpose: str, now: datetime,
                    expires_at: datetime) -> bool:
    """Record a proof as used; False if it already was (a replay)."""
    row = await conn.fetchrow(
        "INSERT INTO used_proofs (jti, user_id, purpose, used_at, expires_at) VALUES ($1, $2, $3, $4, $5)"
        " ON CONFLICT (jti) DO NOTHING RETURNING jti",
        jti, user_id, purpose, now, expires_at,
    )
    return row is not None


async def prune_spent_secrets(pool: asyncpg.Pool, *, now: datetime, token_retention: timedelta) -> int:
    """Rows kept only to refuse a second use: a proof's jti once the proof has expired (it
    would be refused anyway), a token's digest `token_retention` after its expiry (the
    reset throttle counts the last hour). In batches that replicas share; returns how many went."""
    proofs = await db.delete_in_batches(pool, (
        "DELETE FROM used_proofs WHERE jti IN (SELECT jti FROM used_proofs"
        " WHERE coalesce(expires_at, used_at + interval '1 day') < $1 LIMIT $2 FOR UPDATE SKIP LOCKED)"), now)
    tokens = await db.delete_in_batches(pool, (
        "DELETE FROM tokens WHERE id IN (SELECT id FROM tokens WHERE expires_at < $1"
        " LIMIT $2 FOR UPDATE SKIP LOCKED)"), now - token_retention)
    return proofs + tokens


# ---- audit ----------------------------------------------------------------------------------

async def audit(
    conn: asyncpg.Connection,
    *,
    at: datetime,
    action: str,
    outcome: str = "ok",
    actor_id: uuid.UUID | str | None = None,
    subject_id: uuid.UUID | str | None = None,
    practice_id: uuid.UUID | str | None = None,
    ip: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    def as_uuid(value: uuid.UUID | str | None) -> uuid.UUID | None:
        return value if value is None or isinstance(value, uuid.UUID) else uuid.UUID(str(value))

    await conn.execute(
        "INSERT INTO audit_log (at, actor_id, subject_id, practice_id, action, outcome, ip, details)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb)",
        at, as_uuid(actor_id), as_uuid(subject_id), as_uuid(practice_id), action, outcome, ip,
        json.dumps(details or {}),
    )


async def list_audit(
    conn: asyncpg.Connection,
    *,
    subject_id: uuid.UUID | None = None,
    actor_id: uuid.UUID | None = None,
    practice_id: uuid.UUID | None = None,
    action: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    before_id: int | None = None,
    limit: int = 200,
) -> list[Record]:
    return await conn.fetch(
        "SELECT * FROM audit_log WHERE ($1::uuid IS NULL OR subject_id = $1) AND ($2::uuid IS NULL OR actor_id = $2)"
        " AND ($3::uuid IS NULL OR practice_id = $3) AND ($4::text IS NULL OR action = $4)"
        " AND ($5::timestamptz IS NULL OR at >= $5) AND ($6::timestamptz IS NULL OR at < $6)"
        " AND ($7::bigint IS NULL OR id < $7) ORDER BY id DESC LIMIT $8",
        subject_id, actor_id, practice_id, action, since, until, before_id, limit,
    )
