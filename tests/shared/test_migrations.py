import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

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


async def test_the_outbox_order_migration_numbers_the_events_still_owed_in_their_old_order(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """shared 0002 on an outbox with history: events still owed keep the order the relay
    used before (created_at, id), published ones get no number, new ones come after."""
    first = tmp_path / "shared-0001"
    first.mkdir()
    (first / "0001_outbox_inbox.sql").write_text((db.SHARED_MIGRATIONS / "0001_outbox_inbox.sql").read_text())
    monkeypatch.setattr(db, "SHARED_MIGRATIONS", first)
    assert await db.migrate(database_url, "demo", None) == ["shared:0001_outbox_inbox"]
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "demo"})
    try:
        ids = [uuid.UUID(int=i) for i in (3, 1, 2, 4)]
        for minutes, event_id, published in [(3, ids[0], False), (1, ids[1], False), (2, ids[2], True), (4, ids[3], False)]:
            await conn.execute(
                "INSERT INTO outbox (id, type, envelope, created_at, published_at)"
                " VALUES ($1, 't', '{}', now() - make_interval(mins => $2), CASE WHEN $3 THEN now() END)",
                event_id, 10 - minutes, published)
        monkeypatch.setattr(db, "SHARED_MIGRATIONS", Path(db.__file__).parent / "migrations")
        assert await db.migrate(database_url, "demo", None) == SHARED[1:]
        rows = await conn.fetch("SELECT id, position FROM outbox ORDER BY created_at")
        assert [(r["id"], r["position"]) for r in rows] == [(ids[1], 1), (ids[2], None), (ids[0], 2), (ids[3], 3)]
        new = await conn.fetchval("INSERT INTO outbox (id, type, envelope) VALUES ($1, 't', '{}') RETURNING position",
                                  uuid.uuid4())
        assert new == 4
    finally:
        await conn.close()
