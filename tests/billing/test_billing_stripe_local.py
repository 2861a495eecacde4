"""The local Stripe server speaks Stripe's protocol to the official SDK: auth, idempotency,
form encoding, object shapes, lists."""
from __future__ import annotations

import aiohttp
import pytest
import stripe

from msp_billing.stripe_local import decode_form

from billing_kit import API_KEY


def _client(url: str, key: str = API_KEY) -> tuple[stripe.StripeClient, stripe.AIOHTTPClient]:
    http = stripe.AIOHTTPClient()
    return stripe.StripeClient(key, base_addresses={"api": url}, http_client=http, max_network_retries=0), http


async def test_a_wrong_api_key_is_refused(stripe_server) -> None:
    _, url = stripe_server
    client, http = _client(url, "sk_test_wrong")
    try:
        with pytest.raises(stripe.AuthenticationError) as caught:
            await client.v1.customers.create_async({"email": "x@example.test"})
        assert caught.value.http_status == 401
        assert caught.value.json_body["error"]["type"] == "invalid_request_error"
        assert "sk_test_wrong" not in caught.value.json_body["error"]["message"]  # masked
    finally:
        await http.close_async()


async def test_idempotency_keys_replay_or_refuse(stripe_server) -> None:
    state, url = stripe_server
    client, http = _client(url)
    try:
        a = await client.v1.customers.create_async({"metadata": {"user_id": "u1"}}, {"idempotency_key": "k1"})
        b = await client.v1.customers.create_async({"metadata": {"user_id": "u1"}}, {"idempotency_key": "k1"})
        assert a.id == b.id and a.id.startswith("cus_") and len(state.objects["customer"]) == 1
        with pytest.raises(stripe.IdempotencyError):
            await client.v1.customers.create_async({"metadata": {"user_id": "u2"}}, {"idempotency_key": "k1"})
    finally:
        await http.close_async()


async def test_the_sdk_flow_in_stripe_shapes(stripe_server) -> None:
    state, url = stripe_server
    client, http = _client(url)
    try:
        cus = await client.v1.customers.create_async({"email": "um@example.test"})
        assert cus.object == "customer"
        pm = await client.v1.payment_methods.attach_async("pm_card_mastercard", {"customer": cus.id})
        assert pm.id.startswith("pm_") and pm.id != "pm_card_mastercard" and pm.card.last4 == "4444"
        cus = await client.v1.customers.update_async(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
        assert cus.invoice_settings.default_payment_method == pm.id
        price = await client.v1.prices.create_async(
            {"unit_amount": 1000, "currency": "usd", "recurring": {"interval": "month"}, "lookup_key": "lk"})
        assert price.id.startswith("price_") and price.recurring.interval == "month"
        found = await client.v1.prices.list_async({"lookup_keys": ["lk"]})
        assert found.object == "list" and [p.id for p in found.data] == [price.id]
        sub = await client.v1.subscriptions.create_async({
            "customer": cus.id, "items": [{"price": price.id, "quantity": 2}],
            "metadata": {"user_id": "u"}, "expand": ["latest_invoice"]})
        assert sub.id.startswith("sub_") and sub.status == "active" and sub.metadata["user_id"] == "u"
        assert sub.latest_invoice.id.startswith("in_") and sub.latest_invoice.amount_paid == 2000
        invoices = await client.v1.invoices.list_async({"customer": cus.id})
        assert [i.id for i in invoices.data] == [sub.latest_invoice.id] and invoices.has_more is False
        canceled = await client.v1.subscriptions.cancel_async(sub.id)
        assert canceled.status == "canceled"
        types = [e.type for e in (await client.v1.events.list_async()).data]
        assert sorted(types) == ["customer.subscription.created", "customer.subscription.deleted", "customer.updated",
                                 "invoice.paid", "payment_method.attached"]
        with pytest.raises(stripe.InvalidRequestError) as missing:
            await client.v1.customers.retrieve_async("cus_nope")
        assert missing.value.code == "resource_missing"
    finally:
        await http.close_async()


async def test_card_changes_are_announced_like_stripe_does(stripe_server) -> None:
    """What the Dashboard drives when the Billing Dept. enters a card: attach (not the default
    by itself), the customer's default set by an update, a detach; each announced by its event,
    an update only when something changed, with the old values in previous_attributes."""
    state, url = stripe_server
    client, http = _client(url)
    try:
        cus = await client.v1.customers.create_async({"metadata": {"msp_user_id": "u"}})
        pm = await client.v1.payment_methods.create_async({"type": "card", "card": {"token": "tok_visa"}})
        attached = await client.v1.payment_methods.attach_async(pm.id, {"customer": cus.id})
        assert attached.customer == cus.id
        assert (await client.v1.customers.retrieve_async(cus.id)).invoice_settings.default_payment_method is None
        await client.v1.customers.update_async(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
        await client.v1.customers.update_async(cus.id, {"invoice_settings": {"default_payment_method": pm.id}})
        expanded = await client.v1.customers.retrieve_async(cus.id, {"expand": ["invoice_settings.default_payment_method"]})
        assert expanded.invoice_settings.default_payment_method.card.last4 == "4242"
        with pytest.raises(stripe.InvalidRequestError):  # only a card of this customer can be its default
            other = await client.v1.payment_methods.create_async({"type": "card", "card": {"token": "tok_amex"}})
            await client.v1.customers.update_async(cus.id, {"invoice_settings": {"default_payment_method": other.id}})
        await client.v1.payment_methods.detach_async(pm.id)
        assert (await client.v1.customers.retrieve_async(cus.id)).invoice_settings.default_payment_method is None

        events = list(state.objects["event"].values())
        assert [e["type"] for e in events] == ["payment_method.attached", "customer.updated", "payment_method.detached"]
        assert events[0]["data"]["object"]["customer"] == cus.id and "_declines" not in events[0]["data"]["object"]
        assert events[1]["data"]["previous_attributes"] == {"invoice_settings": {"default_payment_method": None}}
        assert events[1]["data"]["object"]["invoice_settings"]["default_payment_method"] == pm.id
        assert events[2]["data"]["object"]["customer"] is None
        assert events[2]["data"]["previous_attributes"] == {"customer": cus.id}
    finally:
        await http.close_async()


async def test_raw_protocol_bracket_forms_and_bearer_auth(stripe_server) -> None:
    state, url = stripe_server
    async with aiohttp.ClientSession() as http:
        async with http.post(url + "/v1/customers", data={"email": "a@example.test"}) as resp:
            assert resp.status == 401
            assert (await resp.json())["error"]["type"] == "invalid_request_error"
        auth = {"Authorization": f"Bearer {API_KEY}"}
        form = [("email", "a@example.test"), ("metadata[user_id]", "u-1"), ("metadata[practice_id]", "p-1")]
        async with http.post(url + "/v1/customers", data=form, headers=auth) as resp:
            body = await resp.json()
        assert body["object"] == "customer" and body["metadata"] == {"user_id": "u-1", "practice_id": "p-1"}
        async with http.get(url + "/v1/invoices", params={"customer": body["id"]}, headers=auth) as resp:
            assert await resp.json() == {"object": "list", "data": [], "has_more": False, "url": "/v1/invoices"}
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200


def test_decode_form_nests_brackets_into_dicts_and_lists() -> None:
    pairs = [("items[0][price]", "price_1"), ("items[0][quantity]", "2"), ("items[1][price]", "price_2"),
             ("metadata[user_id]", "u"), ("expand[]", "latest_invoice"), ("customer", "cus_1")]
    assert decode_form(pairs) == {
        "items": [{"price": "price_1", "quantity": "2"}, {"price": "price_2"}],
        "metadata": {"user_id": "u"}, "expand": ["latest_invoice"], "customer": "cus_1",
    }
