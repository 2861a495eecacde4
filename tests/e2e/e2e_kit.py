"""Helpers for the browser tests (a module of its own: test modules cannot import conftest,
whose name every test folder shares): people who send and read secure messages."""
from __future__ import annotations

import os
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import stripe
from playwright.async_api import Page, expect

from msp_auth import policy as auth_policy
from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_shared import outbox
from msp_shared.bus import Bus
from msp_shared.events import SecureMailGranted, UserRegistered, make_envelope
from msp_shared.web import POOL, SETTINGS
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Stack, eventually

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
            await auth_store.set_password(conn, row["id"], password_hash, now,
                                          single_factor_ok=auth_policy.single_factor_ok(MEMBER_PASSWORD))
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
    """What the PBHS Billing Dept. does for a User Manager who calls them (the web app has no
    card form): Support looks the manager up through the gateway
    (GET /api/v1/admin/billing/users/{id}: their Stripe customer, made then if missing), then
    the Billing Dept. enters the card in Stripe itself, the way the Stripe Dashboard does it,
    with the official stripe SDK against the stack's local Stripe server: a card from the test
    token (tok_visa: Visa ending in 4242) attached to that customer and made its default, and
    `billing_email` (the address for Stripe's receipts) set on the customer. No card detail
    passes through SecurePractice: billing-service records the card when Stripe's signed
    webhook reaches it through the gateway. Waits for that, and returns the card billing then
    reports to Support ({brand, last4, exp_month, exp_year})."""
    billing_email = billing_email or "accounts-payable@" + manager.email.split("@")[1]
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        status, found, _ = await support.call("GET", f"/admin/billing/users/{manager.id}")
        assert status == 200, found
        customer_id = found["customer_id"]

        settings = stack.billing_app[SETTINGS]  # where the stack's Stripe server is, and its key
        http = stripe.AIOHTTPClient()
        dashboard = stripe.StripeClient(settings.stripe_api_key.get_secret_value(),
                                        base_addresses={"api": settings.stripe_api_base}, http_client=http,
                                        max_network_retries=0)
        try:
            pm = await dashboard.v1.payment_methods.create_async({"type": "card", "card": {"token": token}})
            await dashboard.v1.payment_methods.attach_async(pm.id, {"customer": customer_id})
            await dashboard.v1.customers.update_async(
                customer_id, {"email": billing_email, "invoice_settings": {"default_payment_method": pm.id}})
        finally:
            await http.close_async()

        async def on_file() -> dict | None:
            status, body, _ = await support.call("GET", f"/admin/billing/users/{manager.id}")
            assert status == 200, body
            card = body["card"]
            return card if card and card["last4"] == pm.card.last4 else None
        card = await eventually(on_file, what="Stripe's webhook to put the card on file in billing")
        signed_out, _, _ = await support.call("DELETE", "/session")
        assert signed_out == 204, signed_out
    return card


async def log_in_as(page: Page, who: Member) -> None:
    """The login form, as the member would fill it, up to their inbox."""
    await page.goto("/#/login")
    await page.get_by_label("Email address").fill(who.email)
    await page.get_by_label("Password", exact=True).fill(who.password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()


async def open_profile(page: Page) -> None:
    """The way the help page describes it: "Profile" from the drop-down menu in the upper
    right corner (the account menu, named after the user)."""
    nav = page.get_by_role("navigation", name="Main")
    await nav.locator("#account-name").click()
    await nav.get_by_role("link", name="Profile", exact=True).click()
    await expect(page.get_by_role("heading", name="Profile", level=1)).to_be_visible()



async def invite_staff(stack: Stack, practice_id: str, email: str, **fields: object) -> dict:
    """What Support does from a practice's page ("Invite a user to this practice"), through the
    gateway as Support's browser sends it: a new user of that practice, status "invited", with
    an invitation mailed to `email`. `fields`: first_name, last_name, phone, cell_phone,
    two_step_required (on unless given). Returns the user as the API answers it."""
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        status, body, _ = await support.call("POST", f"/admin/practices/{practice_id}/users",
                                             json={"email": email, **fields})
        assert status == 201, body
        signed_out, _, _ = await support.call("DELETE", "/session")
        assert signed_out == 204, signed_out
    assert body["user"]["status"] == "invited", body
    return body["user"]


async def set_phone_on_file(stack: Stack, who: Member, phone: str, *, two_step_required: bool = True) -> None:
    """A member's phone (E.164) as proving it in their profile leaves it (a proven number on
    file), with 2-Step Verification on or off as the profile's checkbox leaves it, arranged in
    auth-service's database."""
    now = stack.clock.now()
    async with stack.auth_app[POOL].acquire() as conn:
        await auth_store.update_user(conn, uuid.UUID(who.id), {
            "phone": phone, "phone_from_inviter": False, "phone_verified_at": now,
            "two_step_required": two_step_required}, now)
