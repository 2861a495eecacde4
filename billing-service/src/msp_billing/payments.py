"""billing-service's only door to Stripe: the official SDK's StripeClient with its aiohttp
async HTTP client (no thread pool, nothing blocks the event loop), pointed at
settings.stripe_api_base (api.stripe.com in production, the local server by default).

Every POST carries an idempotency key we choose, so an SDK retry or a repeated user request
never makes a second customer or subscription."""
from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import stripe

from .config import BillingSettings


def customer_description(practice_id: str, practice_name: str | None) -> str:
    """How a User Manager's customer reads in the Stripe Dashboard (no personal data)."""
    if practice_name:
        return f"SecurePractice User Manager, {practice_name} (practice {practice_id})"
    return f"SecurePractice User Manager, practice {practice_id}"


class Payments:
    def __init__(self, settings: BillingSettings) -> None:
        self._settings = settings
        self._http = stripe.AIOHTTPClient(timeout=settings.stripe_timeout_seconds)
        self.client = stripe.StripeClient(
            settings.stripe_api_key.get_secret_value(),
            base_addresses={"api": settings.stripe_api_base},
            http_client=self._http,
            max_network_retries=settings.stripe_max_network_retries,
        )
        self._price_id: str | None = None
        self._price_lock = asyncio.Lock()

    async def close(self) -> None:
        await self._http.close_async()

    # -- customers and cards --

    async def create_customer(self, user_id: str, practice_id: str) -> stripe.Customer:
        """The User Manager's Stripe customer, once per user: the idempotency key is the user's
        id and the parameters depend on nothing but the two ids, so a retry, a redelivered
        event or a concurrent path gets the same customer (within Stripe's 24 h; past that,
        billing's own payers row is what stops a second one). Found in the Dashboard by its
        metadata; the practice's name is added by describe_customer when it is known."""
        return await self.client.v1.customers.create_async(
            {
                "metadata": {"msp_user_id": user_id, "msp_practice_id": practice_id},
                "description": customer_description(practice_id, None),
            },
            # v2: the parameters changed (no email); a key reused with other parameters is refused
            {"idempotency_key": f"msp-customer-v2-{user_id}"},
        )

    async def describe_customer(self, customer_id: str, description: str) -> None:
        digest = hashlib.sha256(description.encode()).hexdigest()[:16]
        await self.client.v1.customers.update_async(
            customer_id, {"description": description}, {"idempotency_key": f"msp-describe-{customer_id}-{digest}"}
        )

    async def customer(self, customer_id: str) -> stripe.Customer:
        """The customer as Stripe has it now, its default card expanded."""
        return await self.client.v1.customers.retrieve_async(
            customer_id, {"expand": ["invoice_settings.default_payment_method"]}
        )

    async def payment_method(self, payment_method_id: str) -> stripe.PaymentMethod:
        return await self.client.v1.payment_methods.retrieve_async(payment_method_id)

    async def make_default(self, customer_id: str, payment_method_id: str, request_key: str) -> stripe.Customer:
        """Make an attached card the one the customer's invoices (SecureMail subscriptions)
        are charged to."""
        return await self.client.v1.customers.update_async(
            customer_id,
            {"invoice_settings": {"default_payment_method": payment_method_id}},
            {"idempotency_key": request_key},
        )

    async def set_card(
        self, customer_id: str, token: str, request_key: str, email: str | None = None
    ) -> stripe.PaymentMethod:
        """Attach the card the browser tokenised (a tok_... or pm_... from Stripe.js) and make it
        the customer's default for invoices (and update the billing email if one is given)."""
        if token.startswith("tok_"):
            pm = await self.client.v1.payment_methods.create_async(
                {"type": "card", "card": {"token": token}}, {"idempotency_key": f"{request_key}-pm"}
            )
            token = pm.id
        pm = await self.client.v1.payment_methods.attach_async(
            token, {"customer": customer_id}, {"idempotency_key": f"{request_key}-attach"}
        )
        update: dict[str, Any] = {"invoice_settings": {"default_payment_method": pm.id}}
        if email:
            update["email"] = email
        await self.client.v1.customers.update_async(
            customer_id,
            update,
            {"idempotency_key": f"{request_key}-default"},
        )
        return pm

    # -- SecureMail subscriptions --

    async def securemail_price(self) -> str:
        if self._price_id is None:
            async with self._price_lock:
                if self._price_id is None:
                    self._price_id = await self._find_or_create_price()
        return self._price_id

    async def _find_or_create_price(self) -> str:
        s = self._settings
        found = await self.client.v1.prices.list_async({"lookup_keys": [s.securemail_price_lookup_key]})
        for price in found.data:
            if price.unit_amount == s.securemail_price_cents and price.currency == s.currency:
                return price.id
        price = await self.client.v1.prices.create_async(
            {
                "unit_amount": s.securemail_price_cents,
                "currency": s.currency,
                "recurring": {"interval": "month"},
                "lookup_key": s.securemail_price_lookup_key,
                "product_data": {"name": "SecureMail account"},
            },
            {"idempotency_key": f"msp-price-{s.securemail_price_lookup_key}-{s.securemail_price_cents}-{s.currency}"},
        )
        return price.id

    async def subscribe(self, customer_id: str, metadata: dict[str, str], idempotency_key: str) -> stripe.Subscription:
        """Charge now (error_if_incomplete: a declined card fails the call, nothing is left
        half-made) and return the subscription with its first invoice expanded."""
        return await self.client.v1.subscriptions.create_async(
            {
                "customer": customer_id,
                "items": [{"price": await self.securemail_price(), "quantity": 1}],
                "metadata": metadata,
                "payment_behavior": "error_if_incomplete",
                "expand": ["latest_invoice"],
            },
            {"idempotency_key": idempotency_key},
        )

    async def cancel(self, subscription_id: str, idempotency_key: str) -> None:
        """Cancel now; a subscription Stripe already canceled counts as done."""
        try:
            await self.client.v1.subscriptions.cancel_async(
                subscription_id, options={"idempotency_key": idempotency_key}
            )
        except stripe.InvalidRequestError as exc:
            if exc.code != "resource_missing":
                raise

    def construct_event(self, payload: bytes, signature: str | None) -> stripe.Event:
        """Verify the Stripe-Signature over the raw body (tolerance from settings; the SDK
        compares with the wall clock) and parse the event. Raises SignatureVerificationError."""
        return self.client.construct_event(
            payload,
            signature,
            self._settings.stripe_webhook_secret.get_secret_value(),
            tolerance=self._settings.stripe_webhook_tolerance_seconds,
        )
