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
