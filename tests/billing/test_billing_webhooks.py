"""Stripe webhooks: signed over the raw body, replay-proof, and safe when events arrive late,
twice or out of order. Events are built and signed here (the Stripe server's automatic
delivery is switched off so each test controls exactly what arrives)."""
from __future__ import annotations

import json
import time
import uuid

from billing_kit import UM, Billing, new_user, stripe_event, stripe_signature, subscription_object


def _quiet(billing: Billing) -> None:
    billing.stripe.webhook_url = None


async def test_a_bad_signature_is_refused(billing: Billing) -> None:
    _quiet(billing)
    payer, user = new_user(roles=UM), new_user()
    event = stripe_event("customer.subscription.created", subscription_object("sub_forged", payer, user))
    status, body = await billing.webhook(event, secret="whsec_not_the_right_one")
    assert (status, body["error"]) == (400, "invalid_signature")
    status, _ = await billing.webhook(event, signature="")
    assert status == 400
    # A valid signature over a different body: the raw body is what is signed.
    payload = json.dumps(event)
    good = stripe_signature(payload, billing.webhook_secret, int(time.time()))
    tampered = dict(event, data={"object": subscription_object("sub_other", payer, user)})
    status, _ = await billing.webhook(tampered, signature=good)
    assert status == 400
    assert await billing.outbox("billing.securemail.granted") == []
    assert await billing.pool.fetchval("SELECT count(*) FROM subscriptions") == 0


async def test_a_stale_timestamp_is_refused(billing: Billing) -> None:
    _quiet(billing)
    payer, user = new_user(roles=UM), new_user()
    event = stripe_event("customer.subscription.created", subscription_object("sub_old", payer, user))
    status, body = await billing.webhook(event, timestamp=int(time.time()) - 301 - 5)
    assert (status, body["error"]) == (400, "invalid_signature")
    assert await billing.pool.fetchval("SELECT count(*) FROM stripe_events") == 0


async def test_a_replayed_event_has_no_second_effect(billing: Billing) -> None:
    _quiet(billing)
    payer, user = new_user(roles=UM), new_user()
    sub = subscription_object("sub_replayed", payer, user)
    created = stripe_event("customer.subscription.created", sub)
    status, body = await billing.webhook(created)
    assert status == 200 and body == {"received": True}
    [granted] = await billing.outbox("billing.securemail.granted")
    assert granted["data"] == {"user_id": user.id, "paid_by": payer.id, "subscription_id": "sub_replayed"}

    status, body = await billing.webhook(created)  # the same event, re-signed, again
    assert status == 200 and body["duplicate"] is True
    deleted = stripe_event("customer.subscription.deleted", dict(sub, status="canceled"))
    assert (await billing.webhook(deleted))[0] == 200
    assert (await billing.webhook(deleted))[0] == 200
    # A different event saying "created" again (Stripe retried with a new id) changes nothing either.
    assert (await billing.webhook(stripe_event("customer.subscription.created", sub)))[0] == 200

    assert len(await billing.outbox("billing.securemail.granted")) == 1
    assert len(await billing.outbox("billing.securemail.revoked")) == 1
    status = await billing.pool.fetchval("SELECT status FROM subscriptions WHERE stripe_subscription_id = $1",
                                         "sub_replayed")
    assert status == "canceled"
    kinds = [r["kind"] for r in await billing.pool.fetch("SELECT kind FROM ledger ORDER BY id")]
    assert kinds == ["grant", "revoke"]


async def test_deleted_before_created_stays_deleted(billing: Billing) -> None:
    _quiet(billing)
    payer, user = new_user(roles=UM), new_user()
    sub = subscription_object("sub_ooo", payer, user)
    assert (await billing.webhook(stripe_event("customer.subscription.deleted", dict(sub, status="canceled"))))[0] == 200
    assert (await billing.webhook(stripe_event("customer.subscription.created", sub)))[0] == 200
    row = await billing.pool.fetchrow("SELECT status FROM subscriptions WHERE stripe_subscription_id = 'sub_ooo'")
    assert row["status"] == "canceled"
    assert await billing.outbox("billing.securemail.granted") == []
    assert await billing.outbox("billing.securemail.revoked") == []


async def test_invoice_paid_is_recorded_once_even_before_the_subscription(billing: Billing) -> None:
    _quiet(billing)
    payer, user = new_user(roles=UM), new_user()
    invoice = {
        "id": "in_early", "object": "invoice", "status": "paid", "amount_paid": 1000, "currency": "usd",
        "customer": "cus_x", "number": "MSP-9", "created": int(time.time()),
        "period_start": int(time.time()), "period_end": int(time.time()) + 30 * 86400,
        "parent": {"type": "subscription_details",
                   "subscription_details": {"subscription": "sub_late",
                                            "metadata": {"payer_id": payer.id, "user_id": user.id}}},
    }
    for _ in range(2):
        assert (await billing.webhook(stripe_event("invoice.paid", invoice)))[0] == 200
    [paid] = await billing.outbox("billing.invoice.paid")
    assert paid["data"] == {"invoice_id": "in_early", "subscription_id": "sub_late", "payer_id": payer.id,
                            "user_id": user.id, "amount_cents": 1000, "currency": "usd"}
    _, body = await billing.call("GET", "/billing/invoices", payer)
    assert [i["id"] for i in body["invoices"]] == ["in_early"]


async def test_foreign_and_unknown_events_are_acknowledged_without_effect(billing: Billing) -> None:
    _quiet(billing)
    assert (await billing.webhook(stripe_event("customer.created", {"id": "cus_1", "object": "customer"})))[0] == 200
    sub = {"id": "sub_foreign", "object": "subscription", "status": "active", "metadata": {}}
    assert (await billing.webhook(stripe_event("customer.subscription.created", sub)))[0] == 200
    assert await billing.pool.fetchval("SELECT count(*) FROM subscriptions") == 0
    status, body = await billing.webhook({"not": "an event"})
    assert status == 400


async def test_webhooks_need_no_gateway_identity_but_cannot_be_used_to_reach_other_routes(billing: Billing) -> None:
    _quiet(billing)
    async with billing.http.post(billing.url + "/billing/webhooks/stripe/", data=b"{}") as resp:
        assert resp.status in (401, 404)
    async with billing.http.post(billing.url + "/billing/securemail",
                                 json={"user_id": str(uuid.uuid4())},
                                 headers={"Stripe-Signature": "t=1,v1=00"}) as resp:
        assert resp.status == 401
