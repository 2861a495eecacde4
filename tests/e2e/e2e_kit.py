"""Helpers for the browser tests (a module of its own: test modules cannot import conftest,
whose name every test folder shares): people who send and read secure messages."""
from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_shared.bus import Bus
from msp_shared.events import SecureMailGranted, make_envelope
from msp_shared.web import POOL
from stack import Stack, eventually

MEMBER_PASSWORD = "Tulip-Harbor-42!"

# Debian's Chromium, driven by Playwright (no browser download); the tests that need it skip,
# saying why, where it is missing.
CHROMIUM = os.environ.get("MSP_TEST_CHROMIUM", "/usr/bin/chromium")
needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(),
    reason=f"{CHROMIUM} is missing: install Debian's chromium (scripts/bootstrap.sh does)",
)


@dataclass
class Member:
    id: str
    email: str
    password: str = MEMBER_PASSWORD


MakeMember = Callable[..., Awaitable[Member]]


async def make_member(stack: Stack, practices: dict[str, uuid.UUID], email: str, practice_name: str, *,
                      paid: bool = False) -> Member:
    """A registered, verified user of `practice_name` (created once, kept in `practices`),
    arranged in auth-service's database as registration would leave it; `paid` grants
    SecureMail the way billing does, with its event on the real bus."""
    now = stack.clock.now()
    password_hash = await stack.auth_app[HASHER].hash(MEMBER_PASSWORD)
    async with stack.auth_app[POOL].acquire() as conn:
        if practice_name not in practices:
            row = await auth_store.create_practice(conn, name=practice_name, address="1 Main St",
                                                   phone="+12025550100", identifiers={}, now=now)
            practices[practice_name] = row["id"]
        practice_id = practices[practice_name]
        row = await auth_store.create_user(
            conn, email=email, practice_id=practice_id, invited_by_practice=practice_id, first_name="Dana",
            last_name=email.split("@")[0].title(), phone=None, roles=("member",), two_step_required=False,
            time_zone="America/New_York", now=now)
        await auth_store.set_password(conn, row["id"], password_hash, now)
        await auth_store.update_user(conn, row["id"], {"status": "verified", "registered_at": now,
                                                       "terms_version": "2026-01"}, now)
    if paid:
        bus = Bus(stack.amqp_url, stack.exchange, service="billing-test")
        await bus.connect()
        try:
            await bus.publish(make_envelope(SecureMailGranted(user_id=row["id"], paid_by=row["id"])))
        finally:
            await bus.close()

        async def granted() -> bool:
            return bool(await stack.mail_app[POOL].fetchval(
                "SELECT count(*) FROM securemail_accounts WHERE user_id = $1", row["id"]))
        await eventually(granted, what="the SecureMail grant")
    return Member(str(row["id"]), email)
