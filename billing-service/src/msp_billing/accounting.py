"""The three things billing records — a grant, a charge, a revoke — each written once with its
ledger row and its bus event, inside the caller's transaction. Used by the purchase API and by
Stripe webhooks alike, so whichever sees a fact first records it and the other changes nothing."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import asyncpg

from msp_shared import outbox
from msp_shared.events import InvoicePaid, SecureMailGranted, SecureMailRevoked

from . import store


def _ts(value: Any) -> datetime | None:
    return datetime.fromtimestamp(int(value), timezone.utc) if value else None


async def grant(
    conn: asyncpg.Connection, *, stripe_id: str, payer_id: str, user_id: str, practice_id: str | None,
    amount_cents: int, currency: str, at: datetime,
) -> bool:
    """Record an active subscription and grant SecureMail; False if nothing changed (already
    known, canceled before, or the user is already paid for)."""
    if not await store.insert_active_subscription(
        conn, stripe_id=stripe_id, payer_id=payer_id, user_id=user_id, practice_id=practice_id,
        amount_cents=amount_cents, currency=currency, at=at,
    ):
        return False
    await store.ledger_entry(conn, kind="grant", stripe_ref=stripe_id, payer_id=payer_id, user_id=user_id,
                             currency=currency, at=at)
    await outbox.add(conn, SecureMailGranted(user_id=user_id, paid_by=payer_id, subscription_id=stripe_id))
    return True


async def revoke(conn: asyncpg.Connection, *, stripe_id: str, at: datetime) -> asyncpg.Record | None:
    """Cancel an active subscription and revoke SecureMail; None if it was not active."""
    row = await store.cancel_subscription(conn, stripe_id, at)
    if row is None:
        return None
    await store.ledger_entry(conn, kind="revoke", stripe_ref=stripe_id, payer_id=row["payer_id"],
                             user_id=row["user_id"], currency=row["currency"], at=at)
    await outbox.add(conn, SecureMailRevoked(user_id=row["user_id"], subscription_id=stripe_id))
    return row


def invoice_subscription(invoice: dict[str, Any]) -> tuple[str | None, dict[str, str]]:
    """(subscription id, subscription metadata) of a Stripe invoice, in the current API shape
    (parent.subscription_details) or the older one (invoice.subscription)."""
    details = ((invoice.get("parent") or {}).get("subscription_details")) or {}
    sub = details.get("subscription") or invoice.get("subscription")
    if isinstance(sub, dict):
        sub = sub.get("id")
    return sub, dict(details.get("metadata") or {})


async def charge(
    conn: asyncpg.Connection, invoice: dict[str, Any], *, payer_id: str, user_id: str, at: datetime,
) -> bool:
    """Record a paid invoice with its ledger row and billing.invoice.paid; False if known."""
    if invoice.get("status") != "paid":
        return False
    sub_id, _ = invoice_subscription(invoice)
    amount = int(invoice.get("amount_paid") or 0)
    currency = str(invoice.get("currency") or "")
    if not await store.insert_invoice(
        conn, stripe_id=invoice["id"], subscription_id=sub_id, payer_id=payer_id, user_id=user_id,
        number=invoice.get("number"), status="paid", amount_paid_cents=amount, currency=currency,
        period_start=_ts(invoice.get("period_start")), period_end=_ts(invoice.get("period_end")),
        created_at=_ts(invoice.get("created")) or at,
    ):
        return False
    await store.ledger_entry(conn, kind="charge", stripe_ref=invoice["id"], payer_id=payer_id, user_id=user_id,
                             amount_cents=amount, currency=currency, at=at)
    await outbox.add(conn, InvoicePaid(invoice_id=invoice["id"], subscription_id=sub_id, payer_id=payer_id,
                                       user_id=user_id, amount_cents=amount, currency=currency))
    return True
