"""All SQL of Collaborator cases. Functions take a connection: the caller owns the transaction."""
from __future__ import annotations

import hashlib
import uuid
from collections.abc import Sequence
from datetime import datetime

import asyncpg

from ..messaging.uploads import ReceivedFile

Record = asyncpg.Record


async def create_case(conn: asyncpg.Connection, *, case_id: uuid.UUID, owner: dict, patient_name: str, summary: str,
                      referred: dict, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO cases (id, owner_id, owner_practice_id, owner_practice_name, patient_name, summary, referred_to_id,"
        " created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        case_id, uuid.UUID(owner["user_id"]), _uuid(owner.get("practice_id")), owner.get("practice_name"),
        patient_name, summary, uuid.UUID(referred["user_id"]), now,
    )
    await add_participant(conn, case_id, owner["user_id"], owner["email"], "owner", now, name=owner.get("name") or "")
    await add_participant(conn, case_id, referred["user_id"], referred["email"], "doctor", now)


async def add_participant(conn: asyncpg.Connection, case_id: uuid.UUID, user_id: str, email: str, role: str,
                          now: datetime, *, name: str = "") -> None:
    await conn.execute(
        "INSERT INTO case_participants (case_id, user_id, email, name, role, added_at) VALUES ($1, $2, $3, $4, $5, $6)"
        " ON CONFLICT (case_id, user_id) DO UPDATE SET role = EXCLUDED.role",
        case_id, uuid.UUID(user_id), email, name, role, now,
    )


async def remove_participant(conn: asyncpg.Connection, case_id: uuid.UUID, user_id: uuid.UUID) -> bool:
    status = await conn.execute(
        "DELETE FROM case_participants WHERE case_id = $1 AND user_id = $2 AND role <> 'owner'", case_id, user_id
    )
    return status.endswith(" 1")


async def get_case(conn: asyncpg.Connection, case_id: uuid.UUID, *, for_update: bool = False) -> Record | None:
    return await conn.fetchrow("SELECT * FROM cases WHERE id = $1" + (" FOR UPDATE" if for_update else ""), case_id)


async def role_of(conn: asyncpg.Connection, case_id: uuid.UUID, user_id: str) -> str | None:
    return await conn.fetchval(
        "SELECT role FROM case_participants WHERE case_id = $1 AND user_id = $2", case_id, uuid.UUID(user_id)
    )


async def participants(conn: asyncpg.Connection, case_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        "SELECT user_id, email, name, role, added_at FROM case_participants WHERE case_id = $1 ORDER BY added_at, email",
        case_id,
    )


async def cases_of(conn: asyncpg.Connection, user_id: str) -> list[Record]:
    return await conn.fetch(
        "SELECT c.*, p.role FROM case_participants p JOIN cases c ON c.id = p.case_id"
        " WHERE p.user_id = $1 ORDER BY c.created_at DESC, c.id DESC LIMIT 500",
        uuid.UUID(user_id),
    )


async def lock_owner_quota(conn: asyncpg.Connection, owner_id: uuid.UUID) -> None:
    """Serialise acceptances against one owner's quota (two doctors accepting at once)."""
    key = int.from_bytes(hashlib.sha256(b"case-quota:" + owner_id.bytes).digest()[:8], "big", signed=True)
    await conn.execute("SELECT pg_advisory_xact_lock($1)", key)


async def accepted_count(conn: asyncpg.Connection, owner_id: uuid.UUID) -> int:
    return await conn.fetchval("SELECT count(*) FROM cases WHERE owner_id = $1 AND accepted_at IS NOT NULL", owner_id)


async def accept(conn: asyncpg.Connection, case_id: uuid.UUID, now: datetime) -> None:
    await conn.execute("UPDATE cases SET status = 'accepted', accepted_at = $2 WHERE id = $1", case_id, now)


async def decline(conn: asyncpg.Connection, case_id: uuid.UUID, reason: str | None, now: datetime) -> None:
    await conn.execute(
        "UPDATE cases SET status = 'declined', declined_at = $2, decline_reason = $3 WHERE id = $1", case_id, now, reason
    )
    await conn.execute("DELETE FROM case_participants WHERE case_id = $1 AND role <> 'owner'", case_id)


async def add_post(conn: asyncpg.Connection, *, post_id: uuid.UUID, case_id: uuid.UUID, author_id: str, author_name: str,
                   body: str, shared_with_patient: bool, files: Sequence[ReceivedFile], now: datetime) -> None:
    await conn.execute(
        "INSERT INTO case_posts (id, case_id, author_id, author_name, body, shared_with_patient, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7)",
        post_id, case_id, uuid.UUID(author_id), author_name, body, shared_with_patient, now,
    )
    await conn.executemany(
        "INSERT INTO case_files (id, case_id, post_id, position, filename, content_type, size, sha256, wrapped_key, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        [
            (uuid.UUID(f.id), case_id, post_id, i, f.filename, f.content_type, f.stored.size, f.stored.sha256,
             f.stored.wrapped_key, now)
            for i, f in enumerate(files)
        ],
    )


async def files_exist(conn: asyncpg.Connection, ids: Sequence[uuid.UUID]) -> bool:
    """Whether any case file row has one of these ids (also their blob keys)."""
    return await conn.fetchval("SELECT EXISTS (SELECT 1 FROM case_files WHERE id = ANY($1::uuid[]))", list(ids))


async def posts(conn: asyncpg.Connection, case_id: uuid.UUID, *, patient_view: bool) -> list[Record]:
    return await conn.fetch(
        "SELECT * FROM case_posts WHERE case_id = $1 AND (NOT $2 OR shared_with_patient) ORDER BY created_at, id",
        case_id, patient_view,
    )


async def files(conn: asyncpg.Connection, case_id: uuid.UUID) -> list[Record]:
    return await conn.fetch(
        "SELECT id, post_id, filename, content_type, size FROM case_files WHERE case_id = $1 ORDER BY created_at, position",
        case_id,
    )


async def file_with_post(conn: asyncpg.Connection, case_id: uuid.UUID, file_id: uuid.UUID) -> Record | None:
    return await conn.fetchrow(
        "SELECT f.*, p.shared_with_patient FROM case_files f JOIN case_posts p ON p.id = f.post_id"
        " WHERE f.id = $1 AND f.case_id = $2",
        file_id, case_id,
    )


def _uuid(value: str | None) -> uuid.UUID | None:
    return uuid.UUID(value) if value else None
