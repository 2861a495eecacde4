"""Which Stripe events can change a User Manager's card on file, and whose customer a Stripe
customer is (pure rules, no I/O; cards.py applies them).

The card on file is always the card Stripe has as the customer's default
(invoice_settings.default_payment_method), which is what Stripe charges SecureMail
subscriptions to. An event only says *that* something changed: webhooks arrive late, twice and
out of order, so billing then asks Stripe for the customer as it is now and records that,
never the card an event names."""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

ATTACHED = "payment_method.attached"
DETACHED = "payment_method.detached"
CUSTOMER_UPDATED = "customer.updated"
CARD_EVENTS = frozenset({ATTACHED, DETACHED, CUSTOMER_UPDATED})

# Our metadata on a User Manager's customer (payments.create_customer); customers made by the
# first PUT /billing/card before it carry the older "user_id".
OWNER_KEYS = ("msp_user_id", "user_id")


@dataclass(frozen=True)
class CardSignal:
    customer_id: str
    attached: str | None = None  # the payment method an attach event names


def card_signal(type_: str, obj: dict[str, Any], previous: dict[str, Any] | None) -> CardSignal | None:
    """The customer whose card on file may have changed, per event; None if the event cannot
    change one (a customer.updated that did not touch the default payment method)."""
    if type_ == ATTACHED:
        customer, attached = obj.get("customer"), obj.get("id")
        return CardSignal(customer, attached if isinstance(attached, str) else None) if _id(customer) else None
    if type_ == DETACHED:
        customer = (previous or {}).get("customer")
        return CardSignal(customer) if _id(customer) else None
    if type_ == CUSTOMER_UPDATED:
        if previous is not None and "default_payment_method" not in (previous.get("invoice_settings") or {}):
            return None
        customer = obj.get("id")
        return CardSignal(customer) if _id(customer) else None
    return None


def _id(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("cus_")


def owner_of(metadata: dict[str, Any] | None) -> str | None:
    """The SecurePractice user a customer's metadata names; None without our metadata."""
    for key in OWNER_KEYS:
        value = (metadata or {}).get(key)
        if value:
            try:
                return str(uuid.UUID(str(value)))
            except ValueError:
                return None
    return None


def card_of(payment_method: dict[str, Any] | None) -> dict[str, Any] | None:
    """The display facts of a card payment method (brand, last 4, expiry), else None."""
    if not payment_method or payment_method.get("type") != "card":
        return None
    card = payment_method.get("card") or {}
    try:
        return {"brand": str(card["brand"]), "last4": str(card["last4"]),
                "exp_month": int(card["exp_month"]), "exp_year": int(card["exp_year"])}
    except (KeyError, TypeError, ValueError):
        return None
