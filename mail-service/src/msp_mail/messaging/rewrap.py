"""Master-key rotation without rewriting files: every attachment's data key (messages and
Collaborator files) still wrapped by an older master key is unwrapped and wrapped again by
the current one. The encrypted files are untouched. Once no row names the old key id, the
old key can be dropped from MSP_ATTACHMENT_MASTER_KEYS.

    MSP_ATTACHMENT_MASTER_KEYS="old:...,new:..." python -m msp_mail.messaging.rewrap"""
from __future__ import annotations

import asyncio
import sys

import asyncpg

from msp_shared import db

from ..crypto import MasterKeys

TABLES = ("attachments", "case_files")


async def rewrap_all(pool: asyncpg.Pool, keys: MasterKeys, *, batch: int = 500) -> int:
    """Re-wrap every data key not wrapped by the current key; returns how many were."""
    done = 0
    prefix = keys.current + ":"
    for table in TABLES:
        while True:
            async with pool.acquire() as conn, conn.transaction():
                rows = await conn.fetch(
                    f"SELECT id, wrapped_key FROM {table} WHERE NOT starts_with(wrapped_key, $1)"
                    " LIMIT $2 FOR UPDATE SKIP LOCKED",
                    prefix, batch,
                )
                await conn.executemany(
                    f"UPDATE {table} SET wrapped_key = $2 WHERE id = $1",
                    [(r["id"], keys.rewrap(r["wrapped_key"], str(r["id"]))) for r in rows],
                )
            done += len(rows)
            if len(rows) < batch:
                break
    return done


async def _main() -> int:
    from ..app import SCHEMA
    from ..config import MailSettings

    settings = MailSettings()
    keys = MasterKeys.parse(settings.attachment_master_keys.get_secret_value(), settings.attachment_master_key_current)
    pool = await db.create_pool(settings.database_url, SCHEMA)
    try:
        count = await rewrap_all(pool, keys)
    finally:
        await pool.close()
    print(f"mail: {count} data key(s) re-wrapped with master key {keys.current!r}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main()))
