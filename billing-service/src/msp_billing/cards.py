"""A User Manager's Stripe customer, and how their card gets on file.

The help page: SecureMail is charged "using the credit card used to pay for your original
account", changes go through "our Billing Dept.", and a User Manager "must have a credit card
on file". Card numbers never pass through SecurePractice:

1. Every User Manager gets a Stripe customer (ensure_customer): when auth-service announces
   one (handlers.py), when Support looks them up for the Billing Dept. (http.py, so a User
   Manager from before this existed can be set up), or with the first PUT /billing/card.
   One code path, one idempotency key per user, so all of them make one customer.
2. The PBHS Billing Dept. enters the card in Stripe itself (the Dashboard: attach a card to
   that customer, make it the default).
3. Stripe's signed webhooks (payment_method.attached/detached, customer.updated) tell billing
   something changed (webhooks.py -> sync_card). billing then asks Stripe for the customer as
   it is now and records its default card as the card on file (store.save_card, as PUT does),
   so a late, repeated or out-of-order event cannot bring back an older or detached card. A
   customer whose first card was attached but not made the default gets it as the default,
   so the SecureMail subscriptions (which Stripe charges to the customer's default) use it.

Whose customer it is comes from billing's own payers row, never from an event or from the
customer's metadata alone (anyone at the Dashboard can edit metadata): the metadata must also
name the same user, or the event is ignored and logged."""
from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg
import stripe
from aiohttp import web

from . import accounts, card_rules, store
from .keys import PAYMENTS
from .payments import customer_description

log = logging.getLogger(__name__)

Conn = asyncpg.Connection | asyncpg.Pool


async def ensure_customer(
    app: web.Application, conn: Conn, *, user_id: str, practice_id: str, at: datetime,
    actor: str | None, ip: str | None, cause: str,
) -> tuple[asyncpg.Record, bool]:
    """The User Manager's payers row (their Stripe customer), made if missing; and whether
    this call made it. `cause` says which path did, for the audit trail."""
    row = await store.payer(conn, user_id)
    if row is not None:
        return row, False
    payments = app[PAYMENTS]
    customer = await payments.create_customer(user_id, practice_id)
    created = await store.add_customer(conn, user_id=user_id, practice_id=practice_id, customer_id=customer.id, at=at)
    if created:
        await store.audit(conn, at=at, actor=actor, subject=user_id, action="billing.customer.created", outcome="ok",
                          ip=ip, details={"customer_id": customer.id, "cause": cause})
        log.info("stripe customer made for a user manager", extra={"user_id": user_id, "customer_id": customer.id})
        name = await accounts.practice_name(app, user_id, practice_id)
        if name:
            try:
                await payments.describe_customer(customer.id, customer_description(practice_id, name))
            except stripe.StripeError as exc:  # a label for the Dashboard: not worth failing for
                log.warning("stripe customer not described", extra={"error": type(exc).__name__})
    row = await store.payer(conn, user_id)
    assert row is not None
    return row, created


async def sync_card(app: web.Application, conn: asyncpg.Connection, signal: card_rules.CardSignal, *,
                    event_id: str, at: datetime) -> None:
    """Record the card Stripe has as the customer's default now (inside the webhook's
    transaction; the payers row stays locked until it commits, so two events for one customer
    are applied one after the other, each with what Stripe said after the previous one)."""
    row = await store.payer_by_customer(conn, signal.customer_id, for_update=True)
    if row is None:
        log.info("card event for a customer that is no user manager's: ignored",
                 extra={"event_id": event_id, "customer_id": signal.customer_id})
        return
    user_id = str(row["user_id"])
    payments = app[PAYMENTS]
    try:
        customer = (await payments.customer(signal.customer_id)).to_dict()
    except stripe.InvalidRequestError as exc:
        if exc.code != "resource_missing":
            raise
        customer = {"id": signal.customer_id, "deleted": True}
    if customer.get("deleted"):
        log.warning("card event for a deleted customer: card on file cleared",
                    extra={"event_id": event_id, "user_id": user_id})
        await _clear(conn, row, event_id=event_id, at=at)
        return
    owner = card_rules.owner_of(customer.get("metadata"))
    if owner is None:
        log.warning("card event for a customer without SecurePractice metadata: ignored",
                    extra={"event_id": event_id, "customer_id": signal.customer_id})
        return
    if owner != user_id:
        log.warning("card event for a customer whose metadata names another user: ignored",
                    extra={"event_id": event_id, "customer_id": signal.customer_id})
        return

    default: Any = (customer.get("invoice_settings") or {}).get("default_payment_method")
    if isinstance(default, str):  # not expanded (should not happen): ask for it
        default = await _payment_method(app, default) or None
    if default is None and signal.attached:
        # The customer's first card, attached without being made the default: make it the
        # default, if it is still attached to this very customer (it may have been detached
        # or moved since the event was sent). The key carries the event: a retry of this
        # event repeats nothing, a later attach of the same card is a new request.
        attached = await _payment_method(app, signal.attached)
        if attached.get("customer") == signal.customer_id and card_rules.card_of(attached) is not None:
            await payments.make_default(signal.customer_id, attached["id"],
                                        f"msp-default-{signal.customer_id}-{attached['id']}-{event_id}")
            default = attached
    card = card_rules.card_of(default)
    if card is None:
        await _clear(conn, row, event_id=event_id, at=at)
        return
    if default["id"] == row["payment_method_id"] and card == _row_card(row):
        return
    await store.save_card(
        conn, user_id=user_id, practice_id=str(row["practice_id"]), customer_id=signal.customer_id,
        payment_method_id=default["id"], at=at, **card,
    )
    await store.audit(conn, at=at, actor=None, subject=user_id, action="billing.card.set", outcome="ok", ip=None,
                      details={"source": "stripe", "event_id": event_id, "payment_method_id": default["id"]})


async def _payment_method(app: web.Application, payment_method_id: str) -> dict[str, Any]:
    """The payment method as Stripe has it now; {} if Stripe has none by that id (an event
    naming one that is gone, or never was, must not be retried forever)."""
    try:
        return (await app[PAYMENTS].payment_method(payment_method_id)).to_dict()
    except stripe.InvalidRequestError as exc:
        if exc.code != "resource_missing":
            raise
        return {}


def _row_card(row: asyncpg.Record) -> dict[str, Any]:
    return {"brand": row["card_brand"], "last4": row["card_last4"], "exp_month": row["card_exp_month"],
            "exp_year": row["card_exp_year"]}


async def _clear(conn: asyncpg.Connection, row: asyncpg.Record, *, event_id: str, at: datetime) -> None:
    if row["payment_method_id"] is None:
        return
    await store.clear_card(conn, str(row["user_id"]), at)
    await store.audit(conn, at=at, actor=None, subject=str(row["user_id"]), action="billing.card.removed",
                      outcome="ok", ip=None, details={"source": "stripe", "event_id": event_id,
                                                      "payment_method_id": row["payment_method_id"]})
