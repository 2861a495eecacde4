"""`python -m msp_auth` serves; `python -m msp_auth migrate` applies migrations and exits;
`python -m msp_auth seed` also creates the seeded Support account, then exits."""
from __future__ import annotations

import asyncio
import sys

from msp_shared import db
from msp_shared.clock import SystemClock
from msp_shared.cli import service_main

from . import blocklist
from .app import MIGRATIONS, create_app
from .config import AuthSettings
from .hashing import Argon2Params, Hasher
from .seed import seed_support


async def _seed(settings: AuthSettings) -> None:
    await db.migrate(settings.database_url, "auth", MIGRATIONS)
    pool = await db.create_pool(settings.database_url, "auth", min_size=1, max_size=2)
    hasher = Hasher(Argon2Params(settings.argon2_time_cost, settings.argon2_memory_kib, settings.argon2_parallelism,
                                 settings.argon2_hash_len, settings.argon2_salt_len), workers=1)
    try:
        await seed_support(pool, settings, hasher, blocklist.load(settings.common_passwords_file), SystemClock().now())
    finally:
        hasher.close()
        await pool.close()


def _seed_command(settings: AuthSettings) -> None:
    asyncio.run(_seed(settings))


if __name__ == "__main__":
    sys.exit(service_main(AuthSettings, create_app, schema="auth", migrations=MIGRATIONS, extra={"seed": _seed_command}))
