"""Buying SecureMail: the User Manager's card, the purchase, who may buy for whom, idempotency,
cancellation, invoices — through billing-service's HTTP API, the official stripe SDK and the
local Stripe server, with events checked in the outbox and on the bus."""
from __future__ import annotations

import asyncio
import uuid

from msp_shared.events import UserRegistered, make_envelope

from billing_kit import UM, Billing, eventually, new_user


async def test_user_manager_buys_securemail_for_a_user_of_their_practice(billing: Billing) -> None:
    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)

    body = await billing.set_card(manager, "tok_visa")
    assert body["card"] == {"brand": "visa", "last4": "4242", "exp_month": 12, "exp_year": body["card"]["exp_year"]}
    status, card = await billing.call("GET", "/billing/card", manager)
    assert status == 200 and card["card"]["last4"] == "4242"
    assert "number" not in str(card) and "4242424242424242" not in str(card)

    status, body = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert status == 201, body
    sub = body["subscription"]
    assert (sub["user_id"], sub["paid_by"], sub["status"], sub["amount_cents"], sub["currency"]) == (
        user.id, manager.id, "active", 1000, "usd")

    # In Stripe: one active subscription at $10/month carrying our ids.
    [stripe_sub] = billing.stripe_subscriptions(user_id=user.id)
    assert stripe_sub["id"] == sub["subscription_id"] and stripe_sub["status"] == "active"
    assert stripe_sub["items"]["data"][0]["price"]["unit_amount"] == 1000
    assert stripe_sub["metadata"]["payer_id"] == manager.id

    # Granted at once: the event is in the outbox (same transaction) and reaches the bus.
    [granted] = await billing.outbox("billing.securemail.granted")
    # naming the subscription, so consumers can order grants and revokes that arrive late
    assert granted["data"] == {"user_id": user.id, "paid_by": manager.id, "subscription_id": sub["subscription_id"]}
    await eventually(lambda: _async(billing.seen_of("billing.securemail.granted")), what="grant on the bus")

    status, body = await billing.call("GET", "/billing/invoices", manager)
    assert status == 200
    [invoice] = body["invoices"]
    assert (invoice["user_id"], invoice["own"], invoice["amount_cents"], invoice["status"]) == (user.id, False, 1000, "paid")

    # The Stripe server's own webhooks (subscription created, invoice paid) arrive too and
    # change nothing: one grant, one charge, one event each.
    await eventually(lambda: _async(len(billing.stripe.delivered) >= 2), what="webhooks delivered")
    ledger = await billing.pool.fetch("SELECT kind, amount_cents FROM ledger ORDER BY id")
    assert [(r["kind"], r["amount_cents"]) for r in ledger] == [("grant", 0), ("charge", 1000)]
    assert len(await billing.outbox("billing.securemail.granted")) == 1
    [paid] = await billing.outbox("billing.invoice.paid")
    assert paid["data"]["amount_cents"] == 1000 and paid["data"]["invoice_id"] == invoice["id"]

    audit = await billing.pool.fetch("SELECT actor, subject, action, outcome, ip FROM audit WHERE action = $1",
                                     "billing.securemail.purchase")
    assert [(str(a["actor"]), str(a["subject"]), a["outcome"], a["ip"]) for a in audit] == [
        (manager.id, user.id, "ok", "203.0.113.7")]


async def _async(value):  # eventually() takes an awaitable check
    return value


async def test_a_member_cannot_buy_or_see_billing(billing: Billing) -> None:
    member = new_user()
    colleague = new_user(member.practice_id)
    await billing.register(colleague)
    status, body = await billing.call("POST", "/billing/securemail", member, {"user_id": colleague.id})
    assert (status, body["error"]) == (403, "user_manager_required")
    status, _ = await billing.call("PUT", "/billing/card", member, {"payment_method_token": "tok_visa",
                                                                     "email": "m@example.test"})
    assert status == 403
    status, _ = await billing.call("GET", "/billing/invoices", member)
    assert status == 403
    assert billing.stripe.objects["customer"] == {} and billing.stripe.objects["subscription"] == {}
    outcomes = await billing.pool.fetch("SELECT outcome FROM audit WHERE actor = $1", uuid.UUID(member.id))
    assert {r["outcome"] for r in outcomes} == {"denied:user_manager_required"}


async def test_a_restricted_session_cannot_use_billing(billing: Billing) -> None:
    manager = new_user(roles=UM)
    status, body = await billing.call("GET", "/billing/card", manager, restriction="password_expired")
    assert (status, body["error"]) == (403, "session_restricted")


async def test_user_manager_of_another_practice_gets_404(billing: Billing) -> None:
    user = new_user()
    await billing.register(user)
    outsider = new_user(roles=UM)  # a User Manager of another practice, with a card
    await billing.set_card(outsider)
    status, body = await billing.call("POST", "/billing/securemail", outsider, {"user_id": user.id})
    assert (status, body["error"]) == (404, "user_not_found")
    # A user billing never heard of gets the very same answer.
    status, body2 = await billing.call("POST", "/billing/securemail", outsider, {"user_id": str(uuid.uuid4())})
    assert (status, body2) == (404, body)
    assert billing.stripe.objects["subscription"] == {}
    assert await billing.outbox("billing.securemail.granted") == []


async def test_no_card_is_a_clear_422(billing: Billing) -> None:
    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)
    status, body = await billing.call("GET", "/billing/card", manager)
    assert (status, body["error"]) == (404, "no_card")
    status, body = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert (status, body["error"]) == (422, "card_required")
    assert "card" in body["message"].lower()
    assert billing.stripe.objects["subscription"] == {}


async def test_first_card_needs_a_billing_email_and_raw_numbers_are_refused(billing: Billing) -> None:
    manager = new_user(roles=UM)
    status, body = await billing.call("PUT", "/billing/card", manager, {"payment_method_token": "tok_visa"})
    assert (status, body["error"]) == (422, "email_required")
    status, body = await billing.call("PUT", "/billing/card", manager,
                                      {"payment_method_token": "4242424242424242", "email": "a@example.test"})
    assert (status, body["error"]) == (400, "invalid_input")
    status, body = await billing.call("PUT", "/billing/card", manager,
                                      {"payment_method_token": "tok_nosuchcard", "email": "a@example.test"})
    assert (status, body["error"]) == (422, "card_invalid")


async def test_user_manager_paid_by_another_cannot_pay_for_others(billing: Billing) -> None:
    first = new_user(roles=UM)
    second = new_user(first.practice_id, roles=UM)
    user = new_user(first.practice_id)
    for u in (second, user):
        await billing.register(u)
    await billing.set_card(first)
    status, _ = await billing.call("POST", "/billing/securemail", first, {"user_id": second.id})
    assert status == 201

    await billing.set_card(second, "tok_mastercard", "second@example.test")
    status, body = await billing.call("POST", "/billing/securemail", second, {"user_id": user.id})
    assert (status, body["error"]) == (422, "paid_by_another_user_manager")
    assert billing.stripe_subscriptions(user_id=user.id) == []


async def test_the_same_purchase_twice_makes_one_subscription(billing: Billing) -> None:
    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)
    await billing.set_card(manager)

    # A double click: two requests at once.
    (s1, b1), (s2, b2) = await asyncio.gather(
        billing.call("POST", "/billing/securemail", manager, {"user_id": user.id}),
        billing.call("POST", "/billing/securemail", manager, {"user_id": user.id}),
    )
    assert sorted([s1, s2]) == [200, 201], (b1, b2)
    assert b1["subscription"]["subscription_id"] == b2["subscription"]["subscription_id"]
    # And once more later.
    s3, b3 = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert s3 == 200 and b3["subscription"]["subscription_id"] == b1["subscription"]["subscription_id"]


async def test_an_active_subscription_does_not_move_the_purchase_key_on(billing: Billing) -> None:
    # A double click whose second request reads the key's generation just after the first
    # one recorded its row must still reuse the first key (one Stripe subscription, no 409):
    # only ended subscriptions count, so a new purchase after a cancellation gets a new key.
    from msp_billing import store

    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)
    await billing.set_card(manager)
    assert await store.purchase_generation(billing.pool, manager.id, user.id) == 0
    status, body = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert status == 201
    assert await store.purchase_generation(billing.pool, manager.id, user.id) == 0
    status, _ = await billing.call("DELETE", f"/billing/securemail/{user.id}", manager)
    assert status == 200
    assert await store.purchase_generation(billing.pool, manager.id, user.id) == 1

    assert len(billing.stripe_subscriptions(user_id=user.id)) == 1
    assert len(billing.stripe.objects["invoice"]) == 1
    assert len(await billing.outbox("billing.securemail.granted")) == 1


async def test_another_manager_cannot_pay_twice_for_a_paid_user(billing: Billing) -> None:
    first = new_user(roles=UM)
    other = new_user(first.practice_id, roles=UM)
    user = new_user(first.practice_id)
    await billing.register(user)
    await billing.set_card(first)
    await billing.set_card(other, "tok_amex", "other@example.test")
    assert (await billing.call("POST", "/billing/securemail", first, {"user_id": user.id}))[0] == 201
    status, body = await billing.call("POST", "/billing/securemail", other, {"user_id": user.id})
    assert (status, body["error"]) == (409, "already_paid")
    assert len(billing.stripe_subscriptions(user_id=user.id)) == 1


async def test_cancel_revokes_and_a_new_purchase_is_a_new_subscription(billing: Billing) -> None:
    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)
    await billing.set_card(manager)
    _, first = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})

    intruder = new_user(manager.practice_id, roles=UM)  # not the payer
    status, _ = await billing.call("DELETE", f"/billing/securemail/{user.id}", intruder)
    assert status == 404

    status, body = await billing.call("DELETE", f"/billing/securemail/{user.id}", manager)
    assert status == 200 and body["subscription"]["status"] == "canceled"
    sub_id = first["subscription"]["subscription_id"]
    assert billing.stripe.objects["subscription"][sub_id]["status"] == "canceled"
    [revoked] = await billing.outbox("billing.securemail.revoked")
    assert revoked["data"] == {"user_id": user.id, "subscription_id": sub_id}
    await eventually(lambda: _async(billing.seen_of("billing.securemail.revoked")), what="revoke on the bus")

    status, again = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert status == 201 and again["subscription"]["subscription_id"] != sub_id
    assert len(await billing.outbox("billing.securemail.granted")) == 2


async def test_a_declined_card_grants_nothing(billing: Billing) -> None:
    manager = new_user(roles=UM)
    user = new_user(manager.practice_id)
    await billing.register(user)
    await billing.set_card(manager, "tok_chargeDeclined")
    status, body = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert (status, body["error"]) == (422, "card_declined")
    assert await billing.outbox("billing.securemail.granted") == []
    assert (await billing.call("GET", "/billing/invoices", manager))[1]["invoices"] == []
    outcomes = [r["outcome"] for r in await billing.pool.fetch(
        "SELECT outcome FROM audit WHERE action = 'billing.securemail.purchase'")]
    assert outcomes == ["failed"]

    # With a working card the retry goes through (the declined attempt's idempotency key,
    # which Stripe keeps with its 402, is not reused).
    await billing.set_card(manager, "tok_visa")
    status, body = await billing.call("POST", "/billing/securemail", manager, {"user_id": user.id})
    assert status == 201, body
    assert len(await billing.outbox("billing.securemail.granted")) == 1


async def test_invoices_mail_is_not_sent_while_auth_service_cannot_give_the_address(billing: Billing) -> None:
    """The address is asked of auth-service when the mail is requested (test_billing_invoices.py);
    here nothing answers there: a clear 503 to try again, and nothing queued or half done."""
    manager = new_user(roles=UM)
    await billing.set_card(manager, email="manager@example.test")
    assert (await billing.call("POST", "/billing/securemail", manager, {"user_id": manager.id}))[0] == 201
    status, body = await billing.call("POST", "/billing/invoices/email", manager, {})
    assert (status, body["error"]) == (503, "accounts_unavailable")
    assert await billing.outbox("mail.email.requested") == []
    assert await billing.pool.fetchval("SELECT count(*) FROM audit WHERE action = 'billing.invoices.email'") == 0


async def test_requests_without_gateway_identity_are_refused(billing: Billing) -> None:
    manager = new_user(roles=UM)
    for method, path in [("GET", "/billing/card"), ("POST", "/billing/securemail"), ("GET", "/billing/invoices")]:
        status, body = await billing.call(method, path, None, {"user_id": manager.id} if method == "POST" else None)
        assert (status, body["error"]) == (401, "gateway_identity_required")
    # A header signed for another path is no good either.
    header = billing.header(manager, "GET", "/billing/invoices")
    status, body = await billing.call("GET", "/billing/card", None, headers=header)
    assert status == 401
    # Only the webhook path is exempt, and only for POST.
    status, body = await billing.call("GET", "/billing/webhooks/stripe", None)
    assert status == 401


async def test_user_registrations_are_consumed_once(billing: Billing) -> None:
    user = new_user()
    envelope = make_envelope(UserRegistered(user_id=user.id, practice_id=user.practice_id))
    await billing.bus.publish(envelope)
    await billing.bus.publish(envelope)  # redelivered
    await eventually(lambda: billing.pool.fetchval(
        "SELECT count(*) = 1 FROM inbox WHERE consumer = 'billing-users' AND event_id = $1", envelope.id),
        what="registration consumed")
    rows = await billing.pool.fetch("SELECT practice_id FROM practice_users WHERE user_id = $1", uuid.UUID(user.id))
    assert [str(r["practice_id"]) for r in rows] == [user.practice_id]
