"""The Support account seeded at start (MSP_SEED_SUPPORT_EMAIL / MSP_SEED_SUPPORT_PASSWORD),
created once: an existing account is left as it is (its password is never overwritten)."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from msp_shared.web import CLOCK, POOL

from . import policy, store
from .config import DEV_SUPPORT_PASSWORD, AuthSettings
from .hashing import Hasher
from .keys import AUTH_SETTINGS, BLOCKLIST, HASHER

log = logging.getLogger(__name__)
SEED_LOCK = 0x6D7370_5EED  # advisory lock: two replicas starting together seed once


class WeakSeedPassword(ValueError):
    pass


async def seed_support(pool: asyncpg.Pool, settings: AuthSettings, hasher: Hasher, common: frozenset[str], now) -> bool:  # noqa: ANN001
    """Create the Support user if missing; True if created."""
    email, secret = settings.seed_support_email, settings.seed_support_password
    if not email or secret is None:
        return False
    password = secret.get_secret_value()
    if password == DEV_SUPPORT_PASSWORD:
        log.warning("seeding Support with the development default password; set MSP_SEED_SUPPORT_PASSWORD")
    violations = policy.check(password, profile=settings.password_policy, email=email, common_passwords=common, two_step=False)
    if violations:
        raise WeakSeedPassword(
            "MSP_SEED_SUPPORT_PASSWORD breaks the password rules: " + "; ".join(v.message for v in violations)
        )
    async with pool.acquire() as conn:
        if await store.get_user_by_email(conn, email) is not None:
            return False
        password_hash = await hasher.hash(password)
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SEED_LOCK)
            if await store.get_user_by_email(conn, email) is not None:
                return False
            user = await store.create_user(
                conn, email=email, practice_id=None, invited_by_practice=None, first_name="SecurePractice",
                last_name="Support", roles=("support",), two_step_required=False,
                time_zone=settings.default_time_zone, now=now,
            )
            await store.update_user(conn, user["id"], {"status": "verified", "registered_at": now}, now)
            await store.set_password(conn, user["id"], password_hash, now, single_factor_ok=policy.single_factor_ok(password))
            await store.audit(conn, at=now, action="support_account_seeded", subject_id=user["id"])
    log.info("support account seeded", extra={"user_id": str(user["id"])})
    return True


async def seed_ctx(app: web.Application) -> AsyncIterator[None]:
    await seed_support(app[POOL], app[AUTH_SETTINGS], app[HASHER], app[BLOCKLIST], app[CLOCK].now())
    yield
