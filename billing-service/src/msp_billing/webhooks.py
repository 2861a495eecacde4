"""POST /billing/webhooks/stripe: Stripe calls it directly (no gateway, no identity header).

Trust comes from the Stripe-Signature over the raw body (the SDK's construct_event, 300 s
tolerance). Webhooks arrive late, twice and out of order, so:
- each event id is applied once (stripe_events row written in the effect's transaction);
- facts are idempotent and monotonic: a subscription is granted once, 'canceled' is terminal
  (a "deleted" arriving before "created" leaves a canceled tombstone that "created" cannot
  revive), an invoice is charged once, whether the API or the webhook saw it first;
- card events (payment_method.attached/detached, customer.updated of the default payment
  method) are only a cue: the card on file is what Stripe says the customer's default is when
  billing asks, under a lock on that customer's row (cards.py), so no event order can bring an
  older or detached card back. Events about customers that are no User Manager's are ignored."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timezone
from typing import Any

import stripe
from aiohttp import web

from msp_shared.errors import ApiError
from msp_shared.web import CLOCK, POOL, read_limited

from . import accounting, card_rules, cards, store
from .keys import PAYMENTS

log = logging.getLogger(__name__)

PATH = "/billing/webhooks/stripe"
MAX_BODY = 256 * 1024


def _ids(metadata: dict[str, Any]) -> tuple[str, str, str | None] | None:
    """(payer, user, practice) from our subscription metadata; None for foreign objects."""
    try:
        payer, user = str(uuid.UUID(metadata["payer_id"])), str(uuid.UUID(metadata["user_id"]))
        practice = str(uuid.UUID(metadata["practice_id"])) if metadata.get("practice_id") else None
    except (KeyError, TypeError, ValueError):
        return None
    return payer, user, practice


def _amount(sub: dict[str, Any]) -> tuple[int, str]:
    items = (sub.get("items") or {}).get("data") or []
    total = sum(int((i.get("price") or {}).get("unit_amount") or 0) * int(i.get("quantity") or 1) for i in items)
    return total, str(sub.get("currency") or "")


async def _subscription_created(conn: Any, sub: dict[str, Any], at: datetime) -> None:
    ids = _ids(sub.get("metadata") or {})
    if ids is None:
        return
    if sub.get("status") in ("canceled", "incomplete_expired"):
        await _subscription_deleted(conn, sub, at)
        return
    if sub.get("status") not in ("active", "trialing"):
        return
    amount, currency = _amount(sub)
    await accounting.grant(conn, stripe_id=sub["id"], payer_id=ids[0], user_id=ids[1], practice_id=ids[2],
                           amount_cents=amount, currency=currency, at=at)


async def _subscription_deleted(conn: Any, sub: dict[str, Any], at: datetime) -> None:
    if await accounting.revoke(conn, stripe_id=sub["id"], at=at) is not None:
        return
    ids = _ids(sub.get("metadata") or {})
    if ids is not None:
        amount, currency = _amount(sub)
        await store.insert_canceled_subscription(conn, stripe_id=sub["id"], payer_id=ids[0], user_id=ids[1],
                                                 practice_id=ids[2], amount_cents=amount, currency=currency, at=at)


async def _invoice_paid(conn: Any, invoice: dict[str, Any], at: datetime) -> None:
    sub_id, metadata = accounting.invoice_subscription(invoice)
    known = await store.subscription(conn, sub_id) if sub_id else None
    if known is not None:
        payer, user = str(known["payer_id"]), str(known["user_id"])
    elif (ids := _ids(metadata)) is not None:
        payer, user = ids[0], ids[1]
    else:
        return
    await accounting.charge(conn, invoice, payer_id=payer, user_id=user, at=at)


HANDLERS = {
    "customer.subscription.created": _subscription_created,
    "customer.subscription.deleted": _subscription_deleted,
    "invoice.paid": _invoice_paid,
}


async def stripe_webhook(request: web.Request) -> web.Response:
    payload = await read_limited(request, MAX_BODY)
    try:
        event = request.app[PAYMENTS].construct_event(payload, request.headers.get("Stripe-Signature"))
    except stripe.SignatureVerificationError:
        log.warning("stripe webhook refused: bad signature")
        raise ApiError(400, "invalid_signature", "The webhook signature is invalid or too old.") from None
    except ValueError:
        raise ApiError(400, "invalid_payload", "The webhook body is not a Stripe event.") from None

    data = event.to_dict()
    if not isinstance(data.get("id"), str) or not isinstance(data.get("type"), str):
        raise ApiError(400, "invalid_payload", "The webhook body is not a Stripe event.")
    obj = (data.get("data") or {}).get("object") or {}
    now = request.app[CLOCK].now()
    created = datetime.fromtimestamp(int(data.get("created") or now.timestamp()), timezone.utc)
    async with request.app[POOL].acquire() as conn, conn.transaction():
        if not await store.first_delivery(conn, data["id"], data.get("type", ""), created, now):
            return web.json_response({"received": True, "duplicate": True})
        handler = HANDLERS.get(data.get("type", ""))
        if handler is not None and obj.get("id"):
            await handler(conn, obj, now)
        elif data["type"] in card_rules.CARD_EVENTS:
            previous = (data.get("data") or {}).get("previous_attributes")
            signal = card_rules.card_signal(data["type"], obj, previous if isinstance(previous, dict) else None)
            if signal is not None:
                try:
                    await cards.sync_card(request.app, conn, signal, event_id=data["id"], at=now)
                except stripe.StripeError as exc:  # nothing is kept (not even the event id): Stripe retries
                    log.warning("card event not applied: stripe unavailable",
                                extra={"event_id": data["id"], "error": type(exc).__name__})
                    raise ApiError(503, "payment_provider_unavailable",
                                   "The payment provider is not answering; deliver the event again.") from None
    log.info("stripe webhook applied", extra={"event_id": data["id"], "type": data.get("type")})
    return web.json_response({"received": True})


__all__ = ["PATH", "stripe_webhook"]
