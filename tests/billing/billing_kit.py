"""Helpers for billing-service tests: the local Stripe server and billing-service served on
real sockets, gateway identity headers, a bus observer, Stripe-signed webhook bodies,
auth-service (the real app, where a test needs users' sign-in addresses), and the PBHS
Billing Dept. at the Stripe Dashboard (the official SDK against the local Stripe server)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
import stripe
from aiohttp import web

from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_shared import identity
from msp_shared.bus import Bus
from msp_shared.clock import ManualClock
from msp_shared.events import EmailRequested, Envelope, UserRegistered, UserRolesChanged, make_envelope
from msp_shared.seal import Sealer
from msp_shared.web import POOL

from msp_billing.stripe_local import StripeState

UM = ("user_manager",)
SUPPORT = ("support",)
API_KEY = "sk_test_billing_suite"
WEBHOOK_SECRET = "whsec_billing_suite"


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll until truthy; the bound is generous for a slow machine, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def serve(app: web.Application) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


@dataclass
class User:
    id: str
    practice_id: str | None
    roles: tuple[str, ...] = ()


def new_user(practice_id: str | None = None, roles: tuple[str, ...] = ()) -> User:
    return User(str(uuid.uuid4()), practice_id or str(uuid.uuid4()), roles)


def support_user() -> User:
    """A PBHS Support account (no practice), as the gateway signs it."""
    return User(str(uuid.uuid4()), None, SUPPORT)


@dataclass
class Billing:
    url: str
    secret: bytes
    clock: ManualClock
    http: aiohttp.ClientSession
    pool: asyncpg.Pool  # a pool on the billing schema, for checks
    stripe: StripeState
    stripe_url: str
    webhook_secret: str
    bus: Bus
    seen: list[Envelope] = field(default_factory=list)

    def header(self, user: User | None, method: str, path: str, **extra: Any) -> dict[str, str]:
        if user is None:
            return {}
        ident = identity.Identity(user_id=user.id, practice_id=user.practice_id, roles=user.roles,
                                  session_id="s-" + user.id[:8], ip="203.0.113.7", extra=extra)
        return {identity.HEADER: identity.sign(ident, secret=self.secret, method=method, path=path,
                                               now=self.clock.now().timestamp(), ttl=30)}

    async def call(self, method: str, path: str, user: User | None, body: Any = None,
                   headers: dict[str, str] | None = None, **extra: Any) -> tuple[int, Any]:
        hdrs = {**self.header(user, method, path, **extra), **(headers or {})}
        async with self.http.request(method, self.url + path, json=body, headers=hdrs) as resp:
            return resp.status, await resp.json()

    async def register(self, user: User) -> None:
        """auth-service's announcement, as it arrives on the bus; wait until billing has it."""
        await self.bus.publish(make_envelope(UserRegistered(user_id=user.id, practice_id=user.practice_id)))
        await eventually(lambda: self.pool.fetchval("SELECT true FROM practice_users WHERE user_id = $1",
                                                    uuid.UUID(user.id)), what="user registered in billing")

    async def announce_manager(self, user: User, *, how: str = "registered") -> Envelope:
        """auth-service announcing a User Manager: registered with the role (the first user of
        a practice), or granted it by Support ("granted"); waits until billing made the
        customer. Returns the envelope (to deliver it again)."""
        roles = ("member", "user_manager")
        data = (UserRegistered(user_id=user.id, practice_id=user.practice_id, roles=roles) if how == "registered"
                else UserRolesChanged(user_id=user.id, practice_id=user.practice_id, roles=roles))
        envelope = make_envelope(data)
        await self.bus.publish(envelope)
        await self.handled(envelope)
        if how == "registered":  # the same event tells billing the user is of the practice
            await self.handled(envelope, "billing-users")
        return envelope

    async def handled(self, envelope: Envelope, consumer: str = "billing-customers") -> None:
        """Wait until `consumer` has applied the event (its idempotent inbox row)."""
        await eventually(lambda: self.pool.fetchval(
            "SELECT true FROM inbox WHERE consumer = $1 AND event_id = $2", consumer, envelope.id),
            what=f"{envelope.type} handled by {consumer}")

    async def customer_of(self, user: User) -> str | None:
        return await self.pool.fetchval("SELECT stripe_customer_id FROM payers WHERE user_id = $1",
                                        uuid.UUID(user.id))

    def stripe_customers(self, **metadata: str) -> list[dict[str, Any]]:
        return [c for c in self.stripe.objects["customer"].values()
                if all(c["metadata"].get(k) == v for k, v in metadata.items())]

    async def card(self, user: User) -> dict[str, Any] | None:
        """The card on file as the User Manager sees it (GET /billing/card); None for 404."""
        status, body = await self.call("GET", "/billing/card", user)
        assert status in (200, 404), body
        return body["card"] if status == 200 else None

    async def card_becomes(self, user: User, last4: str | None) -> None:
        """Wait until the card on file ends in `last4` (None: no card), e.g. after a webhook."""
        async def shown() -> bool:
            card = await self.card(user)
            return (card is None) if last4 is None else (card is not None and card["last4"] == last4)
        await eventually(shown, what=f"the card on file to be {last4}")

    async def webhooks_settled(self) -> None:
        """Every event the Stripe server made so far is acknowledged by billing."""
        await eventually(lambda: _true(set(self.stripe.objects["event"]) <= set(self.stripe.delivered)),
                         what="every Stripe event delivered")

    async def set_card(self, user: User, token: str = "tok_visa", email: str | None = "um@example.test") -> Any:
        status, body = await self.call("PUT", "/billing/card", user, {"payment_method_token": token, "email": email})
        assert status == 200, body
        return body

    async def outbox(self, type_: str) -> list[dict[str, Any]]:
        rows = await self.pool.fetch("SELECT envelope FROM outbox WHERE type = $1 ORDER BY created_at", type_)
        return [json.loads(r["envelope"]) for r in rows]

    def seen_of(self, type_: str) -> list[Envelope]:
        return [e for e in self.seen if e.type == type_]

    def stripe_subscriptions(self, **metadata: str) -> list[dict[str, Any]]:
        return [s for s in self.stripe.objects["subscription"].values()
                if all(s["metadata"].get(k) == v for k, v in metadata.items())]

    async def webhook(self, event: dict[str, Any], *, secret: str | None = None, timestamp: int | None = None,
                      signature: str | None = None) -> tuple[int, Any]:
        payload = json.dumps(event)
        if signature is None:
            signature = stripe_signature(payload, secret or self.webhook_secret, timestamp or int(time.time()))
        async with self.http.post(self.url + "/billing/webhooks/stripe", data=payload.encode(),
                                  headers={"Stripe-Signature": signature,
                                           "Content-Type": "application/json"}) as resp:
            return resp.status, await resp.json()


async def _true(value: bool) -> bool:
    return value


class BillingDept:
    """The PBHS Billing Dept. at the Stripe Dashboard, which drives Stripe's API: the official
    stripe SDK against the local Stripe server (PaymentMethod.create with a test token, attach,
    Customer.modify invoice_settings.default_payment_method). No card number goes anywhere."""

    def __init__(self, stripe_url: str, api_key: str = API_KEY) -> None:
        self._http = stripe.AIOHTTPClient()
        self.client = stripe.StripeClient(api_key, base_addresses={"api": stripe_url}, http_client=self._http,
                                          max_network_retries=0)

    async def close(self) -> None:
        await self._http.close_async()

    async def attach(self, customer_id: str, token: str = "tok_visa") -> str:
        pm = await self.client.v1.payment_methods.create_async({"type": "card", "card": {"token": token}})
        await self.client.v1.payment_methods.attach_async(pm.id, {"customer": customer_id})
        return pm.id

    async def make_default(self, customer_id: str, payment_method_id: str) -> None:
        await self.client.v1.customers.update_async(
            customer_id, {"invoice_settings": {"default_payment_method": payment_method_id}})

    async def put_card(self, customer_id: str, token: str = "tok_visa") -> str:
        """Add a card to the customer and make it the default, as the Dashboard does."""
        pm = await self.attach(customer_id, token)
        await self.make_default(customer_id, pm)
        return pm

    async def detach(self, payment_method_id: str) -> None:
        await self.client.v1.payment_methods.detach_async(payment_method_id)

    async def customer(self, customer_id: str) -> stripe.Customer:
        return await self.client.v1.customers.retrieve_async(customer_id)

    async def new_customer(self, metadata: dict[str, str]) -> str:
        """A customer made by hand at the Dashboard (not by billing)."""
        return (await self.client.v1.customers.create_async({"metadata": metadata})).id


def stripe_signature(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's scheme, computed here independently of the server under test."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def stripe_event(type_: str, obj: dict[str, Any], *, event_id: str | None = None,
                 previous: dict[str, Any] | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {"object": obj}
    if previous is not None:
        data["previous_attributes"] = previous
    return {"id": event_id or f"evt_{uuid.uuid4().hex[:24]}", "object": "event", "api_version": "2025-01-01",
            "created": int(time.time()), "data": data, "livemode": False, "pending_webhooks": 1,
            "request": {"id": None, "idempotency_key": None}, "type": type_}


def subscription_object(sub_id: str, payer: User, user: User, status: str = "active") -> dict[str, Any]:
    return {"id": sub_id, "object": "subscription", "customer": "cus_x", "status": status, "currency": "usd",
            "created": int(time.time()),
            "metadata": {"payer_id": payer.id, "user_id": user.id, "practice_id": payer.practice_id},
            "items": {"object": "list", "has_more": False, "url": "/v1/subscription_items",
                      "data": [{"id": "si_x", "object": "subscription_item", "quantity": 1,
                                "price": {"id": "price_x", "object": "price", "unit_amount": 1000,
                                          "currency": "usd"}}]}}


@dataclass
class Accounts:
    """auth-service, the real app on a real socket, owning users and their email addresses."""
    url: str
    app: web.Application
    secret: bytes
    clock: ManualClock
    http: aiohttp.ClientSession
    sealer: Sealer

    @property
    def pool(self) -> asyncpg.Pool:
        return self.app[POOL]

    async def make_user(self, email: str, practice_id: str | None = None, roles: tuple[str, ...] = ()) -> User:
        """A registered user of the practice (created in auth-service if new), as billing's
        tests name users: roles as the gateway would sign them."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            if practice_id is None:
                practice = await auth_store.create_practice(conn, name="Bright Smiles", address="1 Main St",
                                                            phone="+12025550100", identifiers={}, now=now)
                practice_id = str(practice["id"])
            row = await auth_store.create_user(
                conn, email=email, practice_id=uuid.UUID(practice_id), invited_by_practice=uuid.UUID(practice_id),
                first_name="Dana", last_name="Example", phone=None, roles=("member", *roles), two_step_required=False,
                time_zone="America/New_York", now=now)
            await auth_store.update_user(conn, row["id"], {"status": "verified", "registered_at": now,
                                                           "terms_version": "2026-01"}, now)
        return User(str(row["id"]), practice_id, roles)

    async def call(self, method: str, path: str, user: User, body: Any = None) -> tuple[int, Any]:
        ident = identity.Identity(user_id=user.id, practice_id=user.practice_id, roles=("member", *user.roles),
                                  session_id="s-" + user.id[:8], ip="203.0.113.7")
        header = identity.sign(ident, secret=self.secret, method=method, path=path,
                               now=self.clock.now().timestamp(), ttl=30)
        async with self.http.request(method, self.url + path, json=body, headers={identity.HEADER: header}) as resp:
            return resp.status, await resp.json()

    async def change_email(self, user: User, new_email: str) -> None:
        """The user's own change of address, as auth-service does it: PATCH /me, then the
        single-use link mailed to the new address, opened while signed in (which takes the
        current password: the user is given one here)."""
        password = "Tulip-Harbor-42!"
        async with self.pool.acquire() as conn:
            await auth_store.set_password(conn, uuid.UUID(user.id), await self.app[HASHER].hash(password), self.clock.now())
        status, body = await self.call("PATCH", "/me", user, {"email": new_email, "current_password": password})
        assert status == 200 and body.get("email_confirmation_sent"), body
        rows = await self.pool.fetch("SELECT envelope FROM outbox WHERE type = $1 ORDER BY created_at, id",
                                     EmailRequested.TYPE)
        links = [opened["link"] for opened in (
            self.sealer.open(json.loads(r["envelope"])["data"]["sealed"], context=EmailRequested.TYPE) for r in rows)
            if opened["to"] == new_email and "link" in opened]
        fragment = urlsplit(links[-1]).fragment  # "/confirm-email?token=..."
        token = parse_qs(urlsplit(fragment).query)["token"][0]
        status, body = await self.call("POST", "/me/email/confirm", user, {"token": token})
        assert status == 200 and body["user"]["email"] == new_email, body
