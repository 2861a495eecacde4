"""All SQL of secure messages. Functions take a connection: the caller (a request handler or
the sweeper) owns the transaction."""
from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from datetime import datetime

import asyncpg

from msp_shared.securemail import Change

from .uploads import ReceivedFile

Record = asyncpg.Record

MESSAGE_COLUMNS = (
    "m.id, m.thread_id, m.parent_id, m.sender_id, m.sender_practice_id, m.sender_name, m.sender_practice_name,"
    " m.subject, m.created_at, m.expires_at, m.attachment_count"
)


# ---- who may start messages (from billing events) -------------------------------------------

async def is_paid(conn: asyncpg.Connection, user_id: str | uuid.UUID) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM securemail_accounts WHERE user_id = $1)", _uuid(user_id)))


async def grant_securemail(conn: asyncpg.Connection, user_id: uuid.UUID, paid_by: uuid.UUID, now: datetime, *,
                           grant: Change | None = None) -> None:
    """Mark the user paid (by `grant`, the billing event that pays for it, when known)."""
    await conn.execute(
        "INSERT INTO securemail_accounts (user_id, paid_by, granted_at, subscription_id, grant_event_id, grant_occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (user_id) DO UPDATE SET paid_by = EXCLUDED.paid_by, subscription_id = EXCLUDED.subscription_id,"
        " granted_at = CASE WHEN securemail_accounts.grant_event_id IS NOT DISTINCT FROM EXCLUDED.grant_event_id"
        "  THEN securemail_accounts.granted_at ELSE EXCLUDED.granted_at END,"
        " grant_event_id = EXCLUDED.grant_event_id, grant_occurred_at = EXCLUDED.grant_occurred_at",
        user_id, paid_by, now, grant.subscription_id if grant else None, grant.event_id if grant else None,
        grant.at if grant else None,
    )


async def revoke_securemail(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    await conn.execute("DELETE FROM securemail_accounts WHERE user_id = $1", user_id)


# ---- practice settings ----------------------------------------------------------------------

async def practice_default_days(conn: asyncpg.Connection, practice_id: str | None) -> int | None:
    if not practice_id:
        return None
    return await conn.fetchval("SELECT default_expiry_days FROM practice_settings WHERE practice_id = $1", _uuid(practice_id))


async def set_practice_default_days(conn: asyncpg.Connection, practice_id: str, days: int, by: str, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO practice_settings (practice_id, default_expiry_days, updated_by, updated_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT (practice_id) DO UPDATE SET default_expiry_days = $2, updated_by = $3, updated_at = $4",
        _uuid(practice_id), days, _uuid(by), now,
    )


# ---- writing messages -------------------------------------------------------------------------

async def insert_message(
    conn: asyncpg.Connection,
    *,
    message_id: uuid.UUID,
    thread_id: uuid.UUID,
    parent_id: uuid.UUID | None,
    sender: dict,
    subject: str,
    body: str,
    created_at: datetime,
    expires_at: datetime,
    recipients: Sequence[tuple[str, str]],  # (user id, email)
    files: Sequence[ReceivedFile],
) -> None:
    await conn.execute(
        "INSERT INTO messages (id, thread_id, parent_id, sender_id, sender_practice_id, sender_email, sender_name,"
        " sender_practice_name, subject, body, created_at, expires_at, attachment_count)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
        message_id, thread_id, parent_id, _uuid(sender["user_id"]), _uuid(sender.get("practice_id")),
        sender["email"], sender.get("name") or "", sender.get("practice_name"), subject, body, created_at, expires_at,
        len(files),
    )
    await conn.executemany(
        "INSERT INTO message_recipients (message_id, user_id, email, created_at) VALUES ($1, $2, $3, $4)",
        [(message_id, _uuid(uid), email, created_at) for uid, email in recipients],
    )
    await conn.executemany(
        "INSERT INTO attachments (id, message_id, position, filename, content_type, size, sha256, wrapped_key, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        [
            (_uuid(f.id), message_id, i, f.filename, f.content_type, f.stored.size, f.stored.sha256, f.stored.wrapped_key, created_at)
            for i, f in enumerate(files)
        ],
    )


async def attachments_exist(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> bool:
    """Whether any attachment row has one of these ids (also their blob keys)."""
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM attachments WHERE id = ANY($1::uuid[]))", list(ids))


# ---- reading one message ----------------------------------------------------------------------

async def get_message(conn: asyncpg.Connection, message_id: uuid.UUID, now: datetime, *, for_update: bool = False,
                      for_share: bool = False) -> Record | None:
    """The message if it exists and has not expired (the sweeper may not have run yet).

    `for_update`: locked against every other change (recall, expiry, removal, reply).
    `for_share`: what an open or a download takes for the transaction that records it. A
    recall holds FOR UPDATE from its check "nobody opened it" to its delete, so the two
    serialise: an open that comes second finds the message gone (404), a recall that comes
    second waits for the open to commit and then sees first_opened_at (409). Opens do not
    block each other."""
    lock = " FOR UPDATE" if for_update else " FOR SHARE" if for_share else ""
    return await conn.fetchrow("SELECT * FROM messages WHERE id = $1 AND expires_at > $2" + lock, message_id, now)


async def recipients(conn: asyncpg.Connection, message_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        "SELECT user_id, email, first_opened_at, read_at, deleted_at FROM message_recipients"
        " WHERE message_id = $1 ORDER BY email",
        message_id,
    )


async def attachments(conn: asyncpg.Connection, message_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        "SELECT id, filename, content_type, size FROM attachments WHERE message_id = $1 ORDER BY position", message_id
    )


async def attachment(conn: asyncpg.Connection, message_id: uuid.UUID, attachment_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow("SELECT * FROM attachments WHERE id = $1 AND message_id = $2", attachment_id, message_id)


async def thread(conn: asyncpg.Connection, thread_id: uuid.UUID, user_id: str, now: datetime) -> list[Record]:
    """The messages of a thread this user may see (sent by them or to them, not removed)."""
    return await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS} FROM messages m WHERE m.thread_id = $1 AND m.expires_at > $3 AND ("
        " (m.sender_id = $2 AND m.sender_deleted_at IS NULL) OR EXISTS (SELECT 1 FROM message_recipients r"
        "  WHERE r.message_id = m.id AND r.user_id = $2 AND r.deleted_at IS NULL))"
        " ORDER BY m.created_at, m.id",
        thread_id, _uuid(user_id), now,
    )


async def mark_opened(conn: asyncpg.Connection, message_id: uuid.UUID, user_id: str, now: datetime) -> None:
    await conn.execute(
        "UPDATE message_recipients SET first_opened_at = COALESCE(first_opened_at, $3), read_at = COALESCE(read_at, $3)"
        " WHERE message_id = $1 AND user_id = $2",
        message_id, _uuid(user_id), now,
    )


async def set_read(conn: asyncpg.Connection, message_id: uuid.UUID, user_id: str, read: bool, now: datetime) -> None:
    await conn.execute(
        "UPDATE message_recipients SET read_at = $3 WHERE message_id = $1 AND user_id = $2",
        message_id, _uuid(user_id), now if read else None,
    )


async def remove_from_folders(conn: asyncpg.Connection, message_id: uuid.UUID, user_id: str, now: datetime) -> None:
    uid = _uuid(user_id)
    await conn.execute(
        "UPDATE messages SET sender_deleted_at = COALESCE(sender_deleted_at, $3) WHERE id = $1 AND sender_id = $2",
        message_id, uid, now,
    )
    await conn.execute(
        "UPDATE message_recipients SET deleted_at = COALESCE(deleted_at, $3) WHERE message_id = $1 AND user_id = $2",
        message_id, uid, now,
    )


async def set_expiry(conn: asyncpg.Connection, message_id: uuid.UUID, expires_at: datetime) -> None:
    await conn.execute("UPDATE messages SET expires_at = $2 WHERE id = $1", message_id, expires_at)


# ---- folders ------------------------------------------------------------------------------------

async def inbox_page(conn: asyncpg.Connection, user_id: str, now: datetime, after: tuple[datetime, uuid.UUID] | None,
                     limit: int) -> list[Record]:
    """One page of the Inbox, newest first, after the keyset cursor (served by the
    message_recipients_inbox index: cost follows the page size, not the folder size)."""
    cursor = " AND (r.created_at, r.message_id) < ($4, $5)" if after else ""
    args: list = [_uuid(user_id), now, limit, *(after or ())]
    return await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS}, r.read_at, r.created_at AS sort_at FROM message_recipients r"
        " JOIN messages m ON m.id = r.message_id"
        f" WHERE r.user_id = $1 AND r.deleted_at IS NULL AND m.expires_at > $2{cursor}"
        " ORDER BY r.created_at DESC, r.message_id DESC LIMIT $3",
        *args,
    )


async def sent_page(conn: asyncpg.Connection, user_id: str, now: datetime, after: tuple[datetime, uuid.UUID] | None,
                    limit: int) -> list[Record]:
    cursor = " AND (m.created_at, m.id) < ($4, $5)" if after else ""
    args: list = [_uuid(user_id), now, limit, *(after or ())]
    return await conn.fetch(
        f"SELECT {MESSAGE_COLUMNS}, m.created_at AS sort_at FROM messages m"
        f" WHERE m.sender_id = $1 AND m.sender_deleted_at IS NULL AND m.expires_at > $2{cursor}"
        " ORDER BY m.created_at DESC, m.id DESC LIMIT $3",
        *args,
    )


async def recipients_of(conn: asyncpg.Connection, message_ids: Sequence[uuid.UUID]) -> list[Record]:
    return await conn.fetch(
        "SELECT message_id, user_id, email, first_opened_at FROM message_recipients"
        " WHERE message_id = ANY($1::uuid[]) ORDER BY email",
        list(message_ids),
    )


# ---- accounting of disclosures --------------------------------------------------------------

async def record_disclosure(conn: asyncpg.Connection, *, message_id: uuid.UUID, sender_id: uuid.UUID, user_id: str,
                            action: str, at: datetime, ip: str | None, attachment_id: uuid.UUID | None = None,
                            byte_range: str | None = None) -> None:
    await conn.execute(
        "INSERT INTO disclosures (message_id, sender_id, attachment_id, user_id, action, at, ip, byte_range)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        message_id, sender_id, attachment_id, _uuid(user_id), action, at, ip, byte_range,
    )


async def disclosures(conn: asyncpg.Connection, message_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        "SELECT id, message_id, sender_id, attachment_id, user_id, action, at, ip, byte_range FROM disclosures"
        " WHERE message_id = $1 ORDER BY id",
        message_id,
    )


async def disclosure_sender(conn: asyncpg.Connection, message_id: uuid.UUID) -> uuid.UUID | None:
    """The sender of a message, live or expired (from the message or its disclosure log)."""
    return await conn.fetchval(
        "SELECT sender_id FROM messages WHERE id = $1 UNION ALL SELECT sender_id FROM disclosures WHERE message_id = $1 LIMIT 1",
        message_id,
    )


# ---- expiry, recall and blob deletion -------------------------------------------------------

async def destroy_messages(conn: asyncpg.Connection, message_ids: Sequence[uuid.UUID], now: datetime) -> list[str]:
    """Delete messages for everyone: their rows, recipients and attachments (with the wrapped
    data keys, so no stored copy can be decrypted again). Their blobs are queued for deletion
    in the same transaction; returns the blob keys."""
    keys = await conn.fetch(
        "INSERT INTO blob_deletions (blob_key, queued_at)"
        " SELECT id::text, $2 FROM attachments WHERE message_id = ANY($1::uuid[])"
        " ON CONFLICT DO NOTHING RETURNING blob_key",
        list(message_ids), now,
    )
    await conn.execute("DELETE FROM messages WHERE id = ANY($1::uuid[])", list(message_ids))
    return [r["blob_key"] for r in keys]


async def claim_expired(conn: asyncpg.Connection, now: datetime, limit: int) -> list[uuid.UUID]:
    rows = await conn.fetch(
        "SELECT id FROM messages WHERE expires_at <= $1 ORDER BY expires_at LIMIT $2 FOR UPDATE SKIP LOCKED", now, limit
    )
    return [r["id"] for r in rows]


async def queued_blob_deletions(conn: asyncpg.Connection, limit: int) -> list[str]:
    rows = await conn.fetch("SELECT blob_key FROM blob_deletions ORDER BY queued_at LIMIT $1", limit)
    return [r["blob_key"] for r in rows]


async def blob_deleted(conn: asyncpg.Connection, keys: Iterable[str]) -> None:
    await conn.execute("DELETE FROM blob_deletions WHERE blob_key = ANY($1::text[])", list(keys))


async def queue_blob_deletions(conn: asyncpg.Connection, keys: Iterable[str], now: datetime) -> None:
    await conn.executemany(
        "INSERT INTO blob_deletions (blob_key, queued_at) VALUES ($1, $2) ON CONFLICT DO NOTHING",
        [(k, now) for k in keys],
    )


async def claim_digests(conn: asyncpg.Connection, now: datetime, until: datetime, limit: int = 1000) -> list[Record]:
    """Messages with attachments expiring in (now, until] whose sender has not had their
    digest: marked as digested, returned for the caller to mail (same transaction)."""
    return await conn.fetch(
        "UPDATE messages SET digest_sent_at = $1 WHERE id IN ("
        " SELECT id FROM messages WHERE digest_sent_at IS NULL AND attachment_count > 0"
        " AND expires_at > $1 AND expires_at <= $2 AND sender_deleted_at IS NULL"
        " ORDER BY expires_at LIMIT $3 FOR UPDATE SKIP LOCKED)"
        " RETURNING id, sender_id, sender_email, expires_at",
        now, until, limit,
    )


def _uuid(value: str | uuid.UUID | None) -> uuid.UUID | None:
    if value is None or isinstance(value, uuid.UUID):
        return value
    return uuid.UUID(str(value))
