import asyncio
from pathlib import Path

import asyncpg

from msp_shared import db


def _write(directory: Path) -> Path:
    directory.mkdir()
    (directory / "0001_things.sql").write_text("CREATE TABLE things (id int PRIMARY KEY, name text);")
    (directory / "0002_more.sql").write_text("ALTER TABLE things ADD COLUMN note text;")
    return directory


async def _columns(dsn: str) -> list[str]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT column_name FROM information_schema.columns WHERE table_schema='demo' AND table_name='things' ORDER BY ordinal_position"
        )
        return [r["column_name"] for r in rows]
    finally:
        await conn.close()


SHARED = [f"shared:{name}" for name, _ in db.migration_files(db.SHARED_MIGRATIONS)]
assert SHARED[:2] == ["shared:0001_outbox_inbox", "shared:0002_outbox_position"]


async def test_applied_twice_changes_nothing_the_second_time(database_url: str, tmp_path: Path) -> None:
    migrations = _write(tmp_path / "m")
    first = await db.migrate(database_url, "demo", migrations)
    second = await db.migrate(database_url, "demo", migrations)
    assert first == SHARED + ["0001_things", "0002_more"]  # the shared library's first
    assert second == []
    assert await _columns(database_url) == ["id", "name", "note"]


async def test_two_processes_at_once_leave_one_correct_schema(database_url: str, tmp_path: Path) -> None:
    migrations = _write(tmp_path / "m")
    results = await asyncio.gather(*(db.migrate(database_url, "demo", migrations) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(SHARED) + 2]
    assert await _columns(database_url) == ["id", "name", "note"]


async def test_an_edited_applied_migration_is_refused(database_url: str, tmp_path: Path) -> None:
    migrations = _write(tmp_path / "m")
    await db.migrate(database_url, "demo", migrations)
    (migrations / "0001_things.sql").write_text("CREATE TABLE things (id bigint PRIMARY KEY);")
    try:
        await db.migrate(database_url, "demo", migrations)
    except RuntimeError as exc:
        assert "changed after it was applied" in str(exc)
    else:
        raise AssertionError("an edited migration was accepted")
