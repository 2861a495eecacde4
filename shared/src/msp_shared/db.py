"""PostgreSQL: one asyncpg pool per process, pinned to the service's own schema, and a small
SQL-file migration runner.

Migrations are `migrations/NNNN_name.sql` files applied in order inside one transaction
each, recorded in `<schema>.schema_migrations`. A transaction-level advisory lock keyed on
the schema serialises replicas that start at the same moment: the second waits, then sees
the work done and applies nothing."""
from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path

import asyncpg

log = logging.getLogger(__name__)

_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]*$")


async def _no_reset_query(conn: asyncpg.Connection) -> None:
    """Skip asyncpg's reset query (advisory unlock, CLOSE ALL, UNLISTEN, RESET ALL: one more
    round trip on every release). asyncpg still rolls back an unfinished transaction first; our
    code keeps no session state on pooled connections: SET LOCAL, transaction-level advisory
    locks, and LISTEN on a connection of its own (outbox.py)."""


async def create_pool(dsn: str, schema: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    _check_schema(schema)
    return await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        reset=_no_reset_query,
        server_settings={"search_path": f"{schema},public", "application_name": f"msp-{schema}"},
    )


async def delete_in_batches(pool: asyncpg.Pool, sql: str, *args: object, batch: int = 5000) -> int:
    """Run `sql`, a DELETE of at most `batch` rows (its last parameter; select them with
    `LIMIT ... FOR UPDATE SKIP LOCKED` so replicas pruning at once share the work), until a
    round deletes fewer; each round is a short transaction of its own. Returns the total."""
    deleted = 0
    while True:
        count = int((await pool.execute(sql, *args, batch)).split()[-1])
        deleted += count
        if count < batch:
            return deleted


def _check_schema(schema: str) -> None:
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema name {schema!r}")


def migration_files(directory: Path) -> list[tuple[str, Path]]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        match = _MIGRATION_NAME.match(path.name)
        if not match:
            raise ValueError(f"migration file {path.name!r} is not named NNNN_name.sql")
        found.append((path.stem, path))
    versions = [int(name[:4]) for name, _ in found]
    if len(set(versions)) != len(versions):
        raise ValueError(f"duplicate migration numbers in {directory}")
    return found


def _lock_key(schema: str) -> int:
    return int.from_bytes(hashlib.sha256(f"msp-migrate:{schema}".encode()).digest()[:8], "big", signed=True)


SHARED_MIGRATIONS = Path(__file__).parent / "migrations"


async def migrate(dsn: str, schema: str, directory: Path | None, *, with_shared: bool = True) -> list[str]:
    """Apply pending migrations; returns the names applied by this call.

    The shared library's own migrations (outbox and inbox tables) come first, recorded as
    `shared:NNNN_name`, then the service's."""
    _check_schema(schema)
    files = [(f"shared:{name}", path) for name, path in migration_files(SHARED_MIGRATIONS)] if with_shared else []
    if directory is not None:
        files += migration_files(directory)
    conn = await asyncpg.connect(dsn)
    applied_now: list[str] = []
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", _lock_key(schema))
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
            await conn.execute(
                f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations ("
                " name text PRIMARY KEY, checksum text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            rows = await conn.fetch(f"SELECT name, checksum FROM {schema}.schema_migrations")
            done = {r["name"]: r["checksum"] for r in rows}
            await conn.execute(f"SET LOCAL search_path TO {schema}, public")
            for name, path in files:
                sql = path.read_text()
                checksum = hashlib.sha256(sql.encode()).hexdigest()
                if name in done:
                    if done[name] != checksum:
                        raise RuntimeError(f"migration {schema}/{name} changed after it was applied")
                    continue
                await conn.execute(sql)
                await conn.execute(
                    f"INSERT INTO {schema}.schema_migrations (name, checksum) VALUES ($1, $2)", name, checksum
                )
                applied_now.append(name)
    finally:
        await conn.close()
    if applied_now:
        log.info("migrations applied", extra={"schema": schema, "migrations": applied_now})
    return applied_now
