"""The Billing Dept. path to a card on file: Support looks the User Manager up, the PBHS
Billing Dept. enters the card in Stripe (the Dashboard drives Stripe's API: here the official
stripe SDK against the local Stripe server, test tokens only), and billing-service records it
from Stripe's signed webhook; then the User Manager can buy SecureMail. Card numbers never
pass through billing.

Also: webhooks replayed or out of order never bring back an older or detached card; forged
webhooks change nothing; a card on anyone else's customer never lands on this User Manager;
only Support may use the look-up; PUT /billing/card (a Stripe.js client) still works."""
from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta

import pytest

from billing_kit import UM, Billing, BillingDept, User, new_user, stripe_event, support_user

from msp_shared.events import UserRegistered, UserRolesChanged, make_envelope

LOOKUP = "/admin/billing/users/{}"


async def lookup(billing: Billing, support: User, user: User) -> dict:
    status, body = await billing.call("GET", LOOKUP.format(user.id), support)
    assert status == 200, body
    return body


async def card_audits(billing: Billing, user: User) -> list[tuple[str | None, str, str | None]]:
    rows = await billing.pool.fetch(
        "SELECT actor, action, details->>'source' AS source FROM audit"
        " WHERE subject = $1 AND action IN ('billing.card.set', 'billing.card.removed') ORDER BY id",
        uuid.UUID(user.id))
    return [(str(r["actor"]) if r["actor"] else None, r["action"], r["source"]) for r in rows]


async def test_the_billing_dept_puts_a_card_on_file_in_stripe_and_the_user_manager_buys(
        billing: Billing, billing_dept: BillingDept) -> None:
    lee = new_user(roles=UM)
    mel = new_user(lee.practice_id)
    await billing.register(mel)
    await billing.announce_manager(lee)

    # No card yet: what the User Manager is told (the web app says the same).
    assert await billing.card(lee) is None
    status, body = await billing.call("POST", "/billing/securemail", lee, {"user_id": mel.id})
    assert (status, body["error"]) == (422, "card_required")
    assert "Billing Dept." in body["message"]

    # Lee calls the Billing Dept.; Support looks Lee up for them.
    support = support_user()
    found = await lookup(billing, support, lee)
    customer_id = await billing.customer_of(lee)
    assert found == {"user_id": lee.id, "practice_id": lee.practice_id, "customer_id": customer_id,
                     "card": None, "paid_by_another": False}

    # The Billing Dept. enters the card in Stripe: nothing is sent to billing but the webhooks.
    pm = await billing_dept.put_card(customer_id, "tok_visa")
    await billing.card_becomes(lee, "4242")
    card = await billing.card(lee)
    assert (card["brand"], card["last4"], card["exp_month"]) == ("visa", "4242", 12)
    assert (await lookup(billing, support, lee))["card"] == card
    assert (await billing_dept.customer(customer_id)).invoice_settings.default_payment_method == pm
    row = await billing.pool.fetchrow("SELECT * FROM payers WHERE user_id = $1", uuid.UUID(lee.id))
    assert (row["stripe_customer_id"], row["payment_method_id"]) == (customer_id, pm)

    # And the purchase goes through, charged to that customer.
    status, body = await billing.call("POST", "/billing/securemail", lee, {"user_id": mel.id})
    assert status == 201, body
    [sub] = billing.stripe_subscriptions(user_id=mel.id)
    assert (sub["customer"], sub["metadata"]["payer_id"]) == (customer_id, lee.id)
    await billing.webhooks_settled()
    assert await card_audits(billing, lee) == [(None, "billing.card.set", "stripe")]
    views = await billing.pool.fetch(
        "SELECT actor, outcome, ip FROM audit WHERE action = 'billing.admin.user.view' ORDER BY id")
    assert [(str(r["actor"]), r["outcome"], r["ip"]) for r in views] == [(support.id, "ok", "203.0.113.7")] * 2


async def test_a_first_card_attached_without_being_made_the_default_becomes_the_default(
        billing: Billing, billing_dept: BillingDept) -> None:
    lee = new_user(roles=UM)
    await billing.announce_manager(lee)
    customer_id = await billing.customer_of(lee)
    pm = await billing_dept.attach(customer_id, "tok_mastercard")  # attach only
    await billing.card_becomes(lee, "4444")
    # billing made it the default in Stripe: the SecureMail subscriptions are charged to it.
    assert (await billing_dept.customer(customer_id)).invoice_settings.default_payment_method == pm
    await billing.webhooks_settled()
    assert await card_audits(billing, lee) == [(None, "billing.card.set", "stripe")]


async def test_replayed_and_out_of_order_card_webhooks_never_bring_an_older_card_back(
        billing: Billing, billing_dept: BillingDept) -> None:
    lee = new_user(roles=UM)
    mel = new_user(lee.practice_id)
    await billing.register(mel)
    await billing.announce_manager(lee)
    customer_id = await billing.customer_of(lee)
    billing.stripe.webhook_url = None  # this test delivers (signed) events itself, in its own order

    visa = await billing_dept.put_card(customer_id, "tok_visa")
    await billing_dept.put_card(customer_id, "tok_mastercard")  # the newer card, now the default
    await billing_dept.detach(visa)
    events = list(billing.stripe.objects["event"].values())
    assert [e["type"] for e in events] == ["payment_method.attached", "customer.updated"] * 2 + [
        "payment_method.detached"]

    for event in reversed(events):  # newest first
        status, body = await billing.webhook(event)
        assert (status, body) == (200, {"received": True}), body
    for event in events:  # and every one again
        status, body = await billing.webhook(event)
        assert (status, body.get("duplicate")) == (200, True)
    assert (await billing.card(lee))["last4"] == "4444"

    # The visa's attach sent again as a new event (a Dashboard "resend"): still the mastercard.
    assert (await billing.webhook(dict(events[0], id="evt_resent_visa_attach")))[0] == 200
    assert (await billing.card(lee))["last4"] == "4444"

    # The default card is detached in Stripe: no card on file; its attach arriving late (a new
    # event id) cannot put it back.
    mastercard = (await billing_dept.customer(customer_id)).invoice_settings.default_payment_method
    await billing_dept.detach(mastercard)
    [detached] = [e for e in billing.stripe.objects["event"].values() if e["id"] not in {x["id"] for x in events}]
    assert (await billing.webhook(detached))[0] == 200
    assert await billing.card(lee) is None
    assert (await billing.webhook(dict(events[2], id="evt_late_mastercard_attach")))[0] == 200
    assert await billing.card(lee) is None
    assert (await billing_dept.customer(customer_id)).invoice_settings.default_payment_method is None
    status, body = await billing.call("POST", "/billing/securemail", lee, {"user_id": mel.id})
    assert (status, body["error"]) == (422, "card_required")
    assert [a[1] for a in await card_audits(billing, lee)] == ["billing.card.set", "billing.card.removed"]


async def test_forged_card_webhooks_change_nothing(billing: Billing, billing_dept: BillingDept) -> None:
    lee = new_user(roles=UM)
    await billing.announce_manager(lee)
    customer_id = await billing.customer_of(lee)
    billing.stripe.webhook_url = None
    card = {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": 2099}
    attached = stripe_event("payment_method.attached", {
        "id": "pm_forged", "object": "payment_method", "type": "card", "customer": customer_id, "card": card})
    updated = stripe_event(
        "customer.updated",
        {"id": customer_id, "object": "customer", "metadata": {"msp_user_id": lee.id},
         "invoice_settings": {"default_payment_method": "pm_forged"}},
        previous={"invoice_settings": {"default_payment_method": None}})
    for forged in (attached, updated):
        status, body = await billing.webhook(forged, secret="whsec_the_attackers_guess")
        assert (status, body["error"]) == (400, "invalid_signature")
        status, _ = await billing.webhook(forged, timestamp=int(time.time()) - 3600)  # an old capture
        assert status == 400
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_events") == 0
    assert await billing.card(lee) is None

    # Even correctly signed, an event is only a cue: billing asks Stripe, which has no card
    # for Lee, and sets no default either.
    for event in (attached, updated):
        assert (await billing.webhook(event))[0] == 200
    assert await billing.card(lee) is None
    assert (await billing_dept.customer(customer_id)).invoice_settings.default_payment_method is None
    assert await card_audits(billing, lee) == []


async def test_a_card_on_anyone_elses_customer_never_lands_on_this_user_manager(
        billing: Billing, billing_dept: BillingDept, caplog: pytest.LogCaptureFixture) -> None:
    lee, ray = new_user(roles=UM), new_user(roles=UM)  # two practices
    await billing.announce_manager(lee)
    await billing.announce_manager(ray)
    lee_customer, ray_customer = await billing.customer_of(lee), await billing.customer_of(ray)
    caplog.set_level(logging.INFO, logger="msp_billing")

    # Ray's card goes on Ray's customer: Ray's, not Lee's.
    await billing_dept.put_card(ray_customer, "tok_amex")
    await billing.card_becomes(ray, "8431")
    # A customer made by hand at the Dashboard whose metadata names Lee is not Lee's customer.
    stray = await billing_dept.new_customer({"msp_user_id": lee.id, "msp_practice_id": lee.practice_id})
    await billing_dept.put_card(stray, "tok_visa")
    # Nor is a customer without our metadata.
    bare = await billing_dept.new_customer({})
    await billing_dept.put_card(bare, "tok_visa")
    # Lee's own customer with its metadata edited to name Ray belongs to neither now.
    await billing_dept.client.v1.customers.update_async(lee_customer, {"metadata": {"msp_user_id": ray.id}})
    await billing_dept.put_card(lee_customer, "tok_mastercard")
    await billing.webhooks_settled()

    assert await billing.card(lee) is None
    assert (await billing.card(ray))["last4"] == "8431"
    payers = await billing.pool.fetch("SELECT user_id, stripe_customer_id FROM payers ORDER BY stripe_customer_id")
    assert sorted((str(r["user_id"]), r["stripe_customer_id"]) for r in payers) == sorted(
        [(lee.id, lee_customer), (ray.id, ray_customer)])
    assert await card_audits(billing, lee) == []
    assert "no user manager's: ignored" in caplog.text
    assert "names another user: ignored" in caplog.text


async def test_only_support_may_look_a_user_manager_up(billing: Billing) -> None:
    lee = new_user(roles=UM)
    member = new_user(lee.practice_id)
    rival = new_user(roles=UM)
    await billing.register(member)
    await billing.announce_manager(lee)
    customers = len(billing.stripe.objects["customer"])
    for caller in (member, lee, rival):
        for target in (lee, member):
            status, body = await billing.call("GET", LOOKUP.format(target.id), caller)
            assert (status, body["error"]) == (403, "support_only"), body
            assert "customer_id" not in body
    support = support_user()
    status, body = await billing.call("GET", LOOKUP.format(lee.id), support, restriction="verification_required")
    assert (status, body["error"]) == (403, "session_restricted")
    status, _ = await billing.call("GET", LOOKUP.format(lee.id), None)
    assert status == 401
    for unknown in (str(uuid.uuid4()), "not-a-user-id"):
        status, body = await billing.call("GET", LOOKUP.format(unknown), support)
        assert (status, body["error"]) == (404, "user_not_found")
    assert len(billing.stripe.objects["customer"]) == customers  # nobody got a customer
    outcomes = await billing.pool.fetch(
        "SELECT actor, outcome FROM audit WHERE action = 'billing.admin.user.view' ORDER BY id")
    assert [r["outcome"] for r in outcomes] == ["denied:support_only"] * 6 + [
        "denied:session_restricted", "denied:user_not_found", "denied:user_not_found"]
    assert str(outcomes[0]["actor"]) == member.id


async def test_support_opens_no_customer_for_a_user_announced_without_the_role(billing: Billing) -> None:
    """A customer is for paying: the Billing Dept. must not be able to put a card on a member's."""
    lee = new_user(roles=UM)
    ana = new_user(lee.practice_id, roles=("member",))
    registered = make_envelope(UserRegistered(user_id=ana.id, practice_id=ana.practice_id, roles=ana.roles))
    await billing.bus.publish(registered)
    await billing.handled(registered, "billing-users")
    customers = len(billing.stripe.objects["customer"])
    support = support_user()
    status, body = await billing.call("GET", LOOKUP.format(ana.id), support)
    assert (status, body["error"]) == (409, "not_user_manager")
    assert len(billing.stripe.objects["customer"]) == customers
    # Support grants her the role (auth announces it): now she gets one; an older announcement
    # arriving late does not take it back.
    granted = make_envelope(UserRolesChanged(user_id=ana.id, practice_id=ana.practice_id, roles=UM))
    stale = make_envelope(UserRolesChanged(user_id=ana.id, practice_id=ana.practice_id, roles=("member",)),
                          occurred_at=granted.occurred_at - timedelta(seconds=1))
    for envelope in (granted, stale):
        await billing.bus.publish(envelope)
        await billing.handled(envelope, "billing-users")
    assert await billing.pool.fetchval("SELECT roles FROM practice_users WHERE user_id = $1", uuid.UUID(ana.id)) == list(UM)
    assert (await lookup(billing, support, ana))["customer_id"]
    outcomes = [r["outcome"] for r in await billing.pool.fetch(
        "SELECT outcome FROM audit WHERE action = 'billing.admin.user.view' ORDER BY id")]
    assert outcomes == ["denied:not_user_manager", "ok"]


async def test_the_look_up_says_when_another_user_manager_pays_for_this_one(
        billing: Billing, billing_dept: BillingDept) -> None:
    lee, kim = new_user(roles=UM), None
    kim = new_user(lee.practice_id, roles=UM)
    await billing.announce_manager(lee)
    await billing.announce_manager(kim)
    await billing_dept.put_card(await billing.customer_of(lee), "tok_visa")
    await billing.card_becomes(lee, "4242")
    status, body = await billing.call("POST", "/billing/securemail", lee, {"user_id": kim.id})
    assert status == 201, body
    support = support_user()
    assert (await lookup(billing, support, kim))["paid_by_another"] is True
    assert (await lookup(billing, support, lee))["paid_by_another"] is False


async def test_put_card_still_works_on_the_customer_billing_made(billing: Billing, billing_dept: BillingDept) -> None:
    """A client with Stripe.js may still PUT a token; it lands on the same customer."""
    lee = new_user(roles=UM)
    await billing.announce_manager(lee)
    customer_id = await billing.customer_of(lee)
    status, body = await billing.call("PUT", "/billing/card", lee, {"payment_method_token": "tok_mastercard"})
    assert (status, body["error"]) == (422, "email_required")  # still the first card
    body = await billing.set_card(lee, "tok_mastercard", email="accounts@bright.example")
    assert body["card"]["last4"] == "4444"
    await billing.webhooks_settled()
    assert (await billing.card(lee))["last4"] == "4444"
    assert list(billing.stripe.objects["customer"]) == [customer_id]
    customer = await billing_dept.customer(customer_id)
    assert customer.email == "accounts@bright.example"
    assert (lee.id, "billing.card.set", None) in await card_audits(billing, lee)
