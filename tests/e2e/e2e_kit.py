"""Helpers for the browser tests (a module of its own: test modules cannot import conftest,
whose name every test folder shares): people who send and read secure messages."""
from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Page, expect

from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_shared import outbox
from msp_shared.bus import Bus
from msp_shared.events import SecureMailGranted, UserRegistered, make_envelope
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
    practice_id: str = ""
    roles: tuple[str, ...] = ("member",)


MakeMember = Callable[..., Awaitable[Member]]


async def make_member(stack: Stack, practices: dict[str, uuid.UUID], email: str, practice_name: str, *,
                      paid: bool = False, manager: bool = False) -> Member:
    """A registered, verified user of `practice_name` (created once, kept in `practices`),
    arranged in auth-service's database as registration would leave it, including the
    auth.user.registered event registration announces (written to auth-service's outbox, so
    its relay publishes it): billing-service knows the user before this returns. `manager`
    makes a User Manager (roles member and user_manager); `paid` grants SecureMail the way
    billing does, with its event on the real bus."""
    roles = ("member", "user_manager") if manager else ("member",)
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
            last_name=email.split("@")[0].title(), phone=None, roles=roles, two_step_required=False,
            time_zone="America/New_York", now=now)
        async with conn.transaction():
            await auth_store.set_password(conn, row["id"], password_hash, now)
            await auth_store.update_user(conn, row["id"], {"status": "verified", "registered_at": now,
                                                           "terms_version": "2026-01"}, now)
            await outbox.add(conn, UserRegistered(user_id=row["id"], practice_id=practice_id))

    async def known_to_billing() -> bool:
        return bool(await stack.billing_app[POOL].fetchval(
            "SELECT count(*) FROM practice_users WHERE user_id = $1", row["id"]))
    await eventually(known_to_billing, what="billing-service to learn the registered user")
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
    return Member(str(row["id"]), email, practice_id=str(practice_id), roles=roles)


async def put_card_on_file(stack: Stack, manager: Member, *, token: str = "tok_visa",
                           billing_email: str | None = None) -> dict:
    """What the PBHS Billing Dept. does for a User Manager: PUT /api/v1/billing/card with a
    Stripe test token (tok_visa: Visa ending in 4242) and the address invoices go to,
    through the gateway in a session of that manager's own (signed out afterwards).
    Returns the card billing reports."""
    billing_email = billing_email or "accounts-payable@" + manager.email.split("@")[1]
    async with stack.browser() as api:
        status, body, _ = await api.login(manager.email, manager.password)
        assert status == 200, body
        status, body, _ = await api.call("PUT", "/billing/card",
                                         json={"payment_method_token": token, "email": billing_email})
        assert status == 200, body
        signed_out, _, _ = await api.call("DELETE", "/session")
        assert signed_out == 204, signed_out
    return body["card"]


async def log_in_as(page: Page, who: Member) -> None:
    """The login form, as the member would fill it, up to their inbox."""
    await page.goto("/#/login")
    await page.get_by_label("Email address").fill(who.email)
    await page.get_by_label("Password", exact=True).fill(who.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
