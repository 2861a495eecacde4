"""Background work: the password-expiry warnings (14, 7 and 1 days before, each once).

`send_expiry_warnings` is one pass (tests call it with a moved clock); `expiry_warnings_ctx`
runs it periodically. Rows are claimed with SKIP LOCKED, so replicas share the work and a
warning is marked sent in the transaction that requests its email."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
from aiohttp import web

from msp_shared.clock import Clock
from msp_shared.mailer import request_email
from msp_shared.seal import Sealer
from msp_shared.web import CLOCK, POOL

from . import expiry, policy, store
from .accounts import SERVICE
from .config import AuthSettings
from .keys import AUTH_SETTINGS, SEALER

log = logging.getLogger(__name__)


async def send_expiry_warnings(pool: asyncpg.Pool, settings: AuthSettings, sealer: Sealer, clock: Clock) -> int:
    """Request the warning emails due now; returns how many were requested."""
    if not policy.rules(settings.password_policy, two_step=False).expires or not settings.password_expiry_warning_days:
        return 0
    now = clock.now()
    max_age = timedelta(days=settings.password_max_age_days)
    widest = timedelta(days=max(settings.password_expiry_warning_days))
    sent, cursor, batch = 0, None, 500
    while True:
        async with pool.acquire() as conn, conn.transaction():
            rows = await store.users_near_expiry(
                conn, changed_before=now - max_age + widest, changed_after=now - max_age, after=cursor, limit=batch
            )
            for row in rows:
                warning = expiry.warning_due(
                    row["password_changed_at"], now, max_age_days=settings.password_max_age_days,
                    thresholds=settings.password_expiry_warning_days, already_sent=row["expiry_warnings_sent"],
                )
                if warning is None:
                    continue
                sent += 1
                await request_email(
                    conn, sealer, template="password_expiry_warning", to=row["email"],
                    params={"days_left": str(expiry.days_left(row["password_changed_at"], now, settings.password_max_age_days))},
                    secrets={"link": settings.public_url.rstrip("/") + "/#/change-password"},
                    requested_by=SERVICE,
                )
                await store.mark_expiry_warnings(conn, row["id"], warning.mark_sent)
                await store.audit(conn, at=now, action="password_expiry_warning", subject_id=row["id"],
                                  details={"days": warning.days})
        if len(rows) < batch:
            return sent
        cursor = (rows[-1]["password_changed_at"], rows[-1]["id"])


async def expiry_warnings_ctx(app: web.Application) -> AsyncIterator[None]:
    settings, pool, clock, sealer = app[AUTH_SETTINGS], app[POOL], app[CLOCK], app[SEALER]

    async def loop() -> None:
        while True:
            try:
                count = await send_expiry_warnings(pool, settings, sealer, clock)
                if count:
                    log.info("password expiry warnings requested", extra={"count": count})
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("password expiry warning pass failed")
            await asyncio.sleep(settings.expiry_check_interval_seconds)

    task = asyncio.create_task(loop(), name="auth-expiry-warnings")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
