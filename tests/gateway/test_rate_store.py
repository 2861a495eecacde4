"""The shared PostgreSQL rate-limit store: exact under concurrency (a burst of parallel
attempts from several replicas cannot slip past the limit), with the right Retry-After."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

from msp_gateway.app import MIGRATIONS, SCHEMA
from msp_gateway.store import PostgresRateStore
from msp_shared.db import create_pool, migrate

WINDOW = timedelta(minutes=15)


async def test_parallel_hits_from_two_replicas_allow_exactly_the_limit(database_url: str) -> None:
    await migrate(database_url, SCHEMA, MIGRATIONS)
    pools = [await create_pool(database_url, SCHEMA) for _ in range(2)]  # two gateway replicas
    try:
        stores = [PostgresRateStore(p) for p in pools]
        now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
        waits = await asyncio.gather(*(
            stores[i % 2].hit("login:ip:198.51.100.9", limit=5, window=WINDOW, now=now) for i in range(30)
        ))
        assert sorted(waits)[:6] == [0, 0, 0, 0, 0, 900]  # 5 allowed, the rest wait the whole window
        assert waits.count(0) == 5
        assert await pools[0].fetchval("SELECT count(*) FROM rate_hits WHERE key = 'login:ip:198.51.100.9'") == 5
        # Another key is counted apart; the same key is free again once the window has passed.
        assert await stores[0].hit("login:ip:198.51.100.10", limit=5, window=WINDOW, now=now) == 0
        later = now + timedelta(minutes=10)
        assert await stores[1].hit("login:ip:198.51.100.9", limit=5, window=WINDOW, now=later) == 300
        assert await stores[1].hit("login:ip:198.51.100.9", limit=5, window=WINDOW, now=now + WINDOW) == 0
    finally:
        for p in pools:
            await p.close()


async def test_one_statement_counts_the_address_then_the_account(database_url: str) -> None:
    """hit_all: keys counted in order in one round trip; the first key at its limit refuses,
    and neither it nor a later key is recorded (keys before it are)."""
    await migrate(database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(database_url, SCHEMA)
    try:
        store = PostgresRateStore(pool)
        now = datetime(2026, 1, 6, 9, 0, tzinfo=timezone.utc)
        ip, acct = "login:ip:192.0.2.7", "login:acct:abc"

        async def count(key: str) -> int:
            return await pool.fetchval("SELECT count(*) FROM rate_hits WHERE key = $1", key)

        assert [await store.hit_all([(ip, 3), (acct, 2)], window=WINDOW, now=now) for _ in range(2)] == [0, 0]
        assert await store.hit_all([(ip, 3), (acct, 2)], window=WINDOW, now=now) == 900  # the account is spent
        assert (await count(ip), await count(acct)) == (3, 2)  # the address paid for the refused attempt
        assert await store.hit_all([(ip, 3), ("login:acct:other", 2)], window=WINDOW, now=now) == 900  # address spent
        assert await count("login:acct:other") == 0  # a refused address does not spend the account's budget
        assert await store.hit_all([], window=WINDOW, now=now) == 0
    finally:
        await pool.close()


async def test_parallel_multi_key_hits_in_any_order_are_exact_and_never_deadlock(database_url: str) -> None:
    await migrate(database_url, SCHEMA, MIGRATIONS)
    pools = [await create_pool(database_url, SCHEMA, max_size=10) for _ in range(2)]
    try:
        stores = [PostgresRateStore(p) for p in pools]
        now = datetime(2026, 1, 7, 9, 0, tzinfo=timezone.utc)
        a, b = "t:ip:a", "t:acct:b"
        orders = [[(a, 100), (b, 7)], [(b, 7), (a, 100)]]  # opposite orders: locks must still be ordered
        waits = await asyncio.wait_for(asyncio.gather(*(
            stores[i % 2].hit_all(orders[i % 2], window=WINDOW, now=now) for i in range(40)
        )), timeout=30)
        assert waits.count(0) == 7
        assert await pools[0].fetchval("SELECT count(*) FROM rate_hits WHERE key = $1", b) == 7
    finally:
        for p in pools:
            await p.close()


async def test_only_soft_state_commits_skip_the_disk_wait(database_url: str) -> None:
    """Rate-limit hits and new sessions commit asynchronously (migration 0004); the setting is
    local to their own transaction, so a logout or revocation run next on the same connection
    still waits for the disk."""
    import uuid

    await migrate(database_url, SCHEMA, MIGRATIONS)
    pool = await create_pool(database_url, SCHEMA, min_size=1, max_size=1)  # one connection: any leak would show
    try:
        now = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SHOW synchronous_commit") == "on"
            async with conn.transaction():
                await conn.fetchval("SELECT rate_hits($1, $2, $3, $4)", ["k"], [5], now - WINDOW, now)
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
            async with conn.transaction():
                await conn.fetchval("SELECT insert_session($1, $2, $3, NULL, '{}', NULL, $4, $4, NULL, NULL)",
                                    b"h", uuid.uuid4(), uuid.uuid4(), now)
                assert await conn.fetchval("SHOW synchronous_commit") == "off"
            assert await conn.fetchval("SELECT count(*) FROM sessions") == 1
        # as the store runs them, each its own transaction: nothing is left behind on the connection
        await PostgresRateStore(pool).hit("k", limit=5, window=WINDOW, now=now)
        assert await pool.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await pool.close()
