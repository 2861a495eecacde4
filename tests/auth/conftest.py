"""auth-service under test: the real app (real PostgreSQL, real RabbitMQ for its outbox
relay) driven through aiohttp's test client with signed gateway identity headers and a
ManualClock. argon2 runs with cheap parameters here, except where a test says otherwise."""
from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import pytest

from msp_auth.config import AuthSettings
from msp_shared.clock import ManualClock

from auth_kit import CHEAP_ARGON2, Auth, start_auth


@pytest.fixture
async def auth_settings(base_env: dict) -> AuthSettings:
    # This test's throwaway database need not wait for the disk at every commit (this
    # machine's fsync makes each commit slow); behaviour is unchanged.
    conn = await asyncpg.connect(base_env["database_url"])
    try:
        name = await conn.fetchval("SELECT current_database()")
        await conn.execute(f'ALTER DATABASE "{name}" SET synchronous_commit TO off')
    finally:
        await conn.close()
    return AuthSettings(**base_env, **CHEAP_ARGON2, shutdown_grace_seconds=2)


@pytest.fixture
async def auth(auth_settings: AuthSettings, clock: ManualClock) -> AsyncIterator[Auth]:
    kit, client = await start_auth(auth_settings, clock)
    try:
        yield kit
    finally:
        await client.close()
