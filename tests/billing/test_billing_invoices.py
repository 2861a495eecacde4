"""Listing invoices and "email my invoices" (the help page: "a button that will email the
invoices for your user only to your email address"): the mail lists the invoices of the
caller's own account only, whoever paid them, and goes to the address the caller signs in
with, as the real auth-service has it at that moment; the client cannot choose it.

The mail is read where billing-service hands it over: the mail.email.requested event in its
transactional outbox, recipient and text sealed for mail-service."""
from __future__ import annotations

import uuid
from typing import Any

import pytest

from msp_shared.config import DEV_SEAL_KEY
from msp_shared.seal import Sealer

from billing_kit import UM, Accounts, Billing, User


@pytest.fixture
def billing_extra(accounts: Accounts) -> dict:
    """billing-service asks this test's auth-service for sign-in addresses."""
    return {"auth_url": accounts.url}


async def requested_mails(billing: Billing) -> list[dict[str, Any]]:
    """Every email billing asked for: {"to", "text", "title", "template"} (secrets opened)."""
    mails = []
    for envelope in await billing.outbox("mail.email.requested"):
        data = envelope["data"]
        opened = Sealer(DEV_SEAL_KEY).open(data["sealed"], context="mail.email.requested")
        mails.append({"template": data["template"], "title": data["params"].get("title"), **opened,
                      "clear": str(envelope)})
    return mails


async def invoice_numbers(billing: Billing, user: User) -> list[str]:
    rows = await billing.pool.fetch("SELECT number FROM invoices WHERE user_id = $1", uuid.UUID(user.id))
    return [r["number"] for r in rows]


async def email_invoices(billing: Billing, user: User, body: Any = None) -> tuple[int, Any]:
    return await billing.call("POST", "/billing/invoices/email", user, {} if body is None else body)


async def test_mail_goes_to_the_callers_sign_in_address_with_their_own_invoices_only(
        billing: Billing, accounts: Accounts) -> None:
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    mel = await accounts.make_user("mel@bright.example", lee.practice_id)
    await billing.register(mel)
    await billing.set_card(lee, email="accounts@bright.example")  # the billing email, for Stripe

    status, body = await email_invoices(billing, lee)
    assert (status, body["error"]) == (422, "no_invoices")

    for target in (lee, mel):
        assert (await billing.call("POST", "/billing/securemail", lee, {"user_id": target.id}))[0] == 201
    [own] = await invoice_numbers(billing, lee)
    [mels] = await invoice_numbers(billing, mel)
    _, listed = await billing.call("GET", "/billing/invoices", lee)
    assert sorted((i["number"], i["own"]) for i in listed["invoices"]) == sorted([(own, True), (mels, False)])

    status, body = await email_invoices(billing, lee)
    assert (status, body) == (202, {"queued": True, "invoices": 1})
    [mail] = await requested_mails(billing)
    assert mail["to"] == "lee@bright.example"
    assert (mail["template"], mail["title"]) == ("generic_notice", "Your SecureMail invoices")
    assert own in mail["text"] and "10.00 USD" in mail["text"] and mail["text"].count("Invoice ") == 1
    assert mels not in mail["text"]  # Mel's account is paid by Lee, but is not Lee's own
    # Address and invoices travel sealed only.
    assert "lee@bright.example" not in mail["clear"] and own not in mail["clear"]

    # The billing email stays Stripe's (its receipts) and nowhere else: billing keeps no copy.
    [customer] = billing.stripe.objects["customer"].values()
    assert customer["email"] == "accounts@bright.example"
    assert await billing.pool.fetchval("SELECT email_sealed FROM payers WHERE user_id = $1", uuid.UUID(lee.id)) is None
    outcomes = await billing.pool.fetch(
        "SELECT actor, outcome, details FROM audit WHERE action = 'billing.invoices.email' ORDER BY id")
    assert [(str(r["actor"]), r["outcome"]) for r in outcomes] == [(lee.id, "ok")]


async def test_a_user_manager_paid_for_by_another_gets_their_own_invoices(
        billing: Billing, accounts: Accounts) -> None:
    """The help page's User Manager "already paid for by another User Manager": no card of
    their own, and still the invoices of their own account, at their own address."""
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    nia = await accounts.make_user("nia@bright.example", lee.practice_id, roles=UM)
    mel = await accounts.make_user("mel@bright.example", lee.practice_id)
    for user in (nia, mel):
        await billing.register(user)
    await billing.set_card(lee, email="accounts@bright.example")
    for target in (lee, nia, mel):
        assert (await billing.call("POST", "/billing/securemail", lee, {"user_id": target.id}))[0] == 201
    [nias] = await invoice_numbers(billing, nia)

    status, _ = await billing.call("GET", "/billing/card", nia)
    assert status == 404  # no card of her own
    _, listed = await billing.call("GET", "/billing/invoices", nia)
    assert [(i["number"], i["user_id"], i["own"]) for i in listed["invoices"]] == [(nias, nia.id, True)]

    status, body = await email_invoices(billing, nia)
    assert (status, body["invoices"]) == (202, 1)
    [mail] = await requested_mails(billing)
    assert mail["to"] == "nia@bright.example"
    assert nias in mail["text"] and mail["text"].count("Invoice ") == 1  # not Lee's, not Mel's

    # Who pays changes nothing about the payer's own mail: Lee still gets Lee's invoice only.
    [lees] = await invoice_numbers(billing, lee)
    assert (await email_invoices(billing, lee))[0] == 202
    lee_mail = (await requested_mails(billing))[-1]
    assert lee_mail["to"] == "lee@bright.example"
    assert lees in lee_mail["text"] and nias not in lee_mail["text"] and lee_mail["text"].count("Invoice ") == 1

    # A plain member has no invoices page, and no invoices mail either (User Managers only).
    status, body = await email_invoices(billing, mel)
    assert (status, body["error"]) == (403, "user_manager_required")
    assert len(await requested_mails(billing)) == 2


async def test_after_a_change_of_address_the_mail_goes_to_the_new_one(
        billing: Billing, accounts: Accounts) -> None:
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    await billing.set_card(lee, email="accounts@bright.example")
    assert (await billing.call("POST", "/billing/securemail", lee, {"user_id": lee.id}))[0] == 201
    assert (await email_invoices(billing, lee))[0] == 202

    await accounts.change_email(lee, "lee.new@bright.example")
    assert (await email_invoices(billing, lee))[0] == 202
    assert [m["to"] for m in await requested_mails(billing)] == ["lee@bright.example", "lee.new@bright.example"]


async def test_the_client_cannot_choose_where_the_invoices_go(billing: Billing, accounts: Accounts) -> None:
    lee = await accounts.make_user("lee@bright.example", roles=UM)
    mel = await accounts.make_user("mel@bright.example", lee.practice_id)
    await billing.register(mel)
    await billing.set_card(lee, email="accounts@bright.example")
    for target in (lee, mel):
        assert (await billing.call("POST", "/billing/securemail", lee, {"user_id": target.id}))[0] == 201

    for body in ({"to": "attacker@evil.example"}, {"email": "attacker@evil.example"}, {"user_id": mel.id},
                 {"to": "lee@bright.example\r\nBcc: attacker@evil.example"}):
        status, answer = await email_invoices(billing, lee, body)
        assert (status, answer["error"]) == (400, "invalid_input"), (body, answer)
    assert await requested_mails(billing) == []
    denied = await billing.pool.fetch("SELECT outcome FROM audit WHERE action = 'billing.invoices.email'")
    assert [r["outcome"] for r in denied] == ["denied:invalid_input"] * 4

    # Without a body (the button's request), the caller's own address and invoices.
    async with billing.http.post(billing.url + "/billing/invoices/email",
                                 headers=billing.header(lee, "POST", "/billing/invoices/email")) as resp:
        assert resp.status == 202, await resp.text()
    [mail] = await requested_mails(billing)
    assert mail["to"] == "lee@bright.example" and mail["text"].count("Invoice ") == 1
