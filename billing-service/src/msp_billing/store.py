"""All of billing-service's SQL. Functions take a connection so the caller owns the
transaction (a state change and its outbox event commit together)."""
from __future__ import annotations

import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg

Conn = asyncpg.Connection | asyncpg.Pool


# ---- practice membership (from auth.user.registered) ------------------------------------

async def remember_user(conn: Conn, user_id: uuid.UUID, practice_id: uuid.UUID, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO practice_users (user_id, practice_id, registered_at) VALUES ($1, $2, $3)"
        " ON CONFLICT (user_id) DO UPDATE SET practice_id = EXCLUDED.practice_id",
        user_id, practice_id, at,
    )


async def remember_roles(conn: Conn, user_id: uuid.UUID, roles: tuple[str, ...], at: datetime) -> None:
    """The user's roles as announced at `at`; an older announcement arriving later changes nothing."""
    await conn.execute(
        "UPDATE practice_users SET roles = $2, roles_at = $3 WHERE user_id = $1 AND (roles_at IS NULL OR roles_at <= $3)",
        user_id, list(roles), at,
    )


async def roles_of(conn: Conn, user_id: str) -> list[str] | None:
    """The roles last announced for the user; None when none ever were (or billing knows no such user)."""
    return await conn.fetchval("SELECT roles FROM practice_users WHERE user_id = $1", uuid.UUID(user_id))


async def practice_of(conn: Conn, user_id: str) -> str | None:
    value = await conn.fetchval("SELECT practice_id FROM practice_users WHERE user_id = $1", uuid.UUID(user_id))
    return str(value) if value else None


# ---- payers and cards ----------------------------------------------------------------------
# A payers row is a User Manager's Stripe customer (made when auth-service announces them, on
# Support's lookup, or with the first PUT /billing/card) and the display copy of the card that
# is the customer's default in Stripe (none yet: payment_method_id is NULL).

async def payer(conn: Conn, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM payers WHERE user_id = $1", uuid.UUID(user_id))


async def payer_by_customer(conn: Conn, customer_id: str, *, for_update: bool = False) -> asyncpg.Record | None:
    """The User Manager whose Stripe customer this is, by billing's own record (never by the
    customer's metadata, which anyone at the Dashboard can edit). `for_update` locks the row:
    card changes for one customer are then applied one at a time."""
    return await conn.fetchrow(
        "SELECT * FROM payers WHERE stripe_customer_id = $1" + (" FOR UPDATE" if for_update else ""), customer_id
    )


async def add_customer(conn: Conn, *, user_id: str, practice_id: str, customer_id: str, at: datetime) -> bool:
    """Record a User Manager's Stripe customer, no card yet; False if they had one already."""
    inserted = await conn.fetchval(
        "INSERT INTO payers (user_id, practice_id, stripe_customer_id, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $4) ON CONFLICT (user_id) DO NOTHING RETURNING true",
        uuid.UUID(user_id), uuid.UUID(practice_id), customer_id, at,
    )
    return bool(inserted)


async def clear_card(conn: Conn, user_id: str, at: datetime) -> None:
    """No card on file any more (Stripe's customer has no default card)."""
    await conn.execute(
        "UPDATE payers SET payment_method_id = NULL, card_brand = NULL, card_last4 = NULL, card_exp_month = NULL,"
        " card_exp_year = NULL, updated_at = $2 WHERE user_id = $1",
        uuid.UUID(user_id), at,
    )


async def save_card(
    conn: Conn, *, user_id: str, practice_id: str, customer_id: str, payment_method_id: str,
    brand: str, last4: str, exp_month: int, exp_year: int, at: datetime,
) -> None:
    await conn.execute(
        "INSERT INTO payers (user_id, practice_id, stripe_customer_id, payment_method_id, card_brand,"
        " card_last4, card_exp_month, card_exp_year, created_at, updated_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9)"
        " ON CONFLICT (user_id) DO UPDATE SET payment_method_id = EXCLUDED.payment_method_id,"
        " card_brand = EXCLUDED.card_brand, card_last4 = EXCLUDED.card_last4,"
        " card_exp_month = EXCLUDED.card_exp_month, card_exp_year = EXCLUDED.card_exp_year,"
        " updated_at = EXCLUDED.updated_at",
        uuid.UUID(user_id), uuid.UUID(practice_id), customer_id, payment_method_id, brand, last4,
        exp_month, exp_year, at,
    )


# ---- subscriptions -------------------------------------------------------------------------

async def active_subscription_for(conn: Conn, user_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT * FROM subscriptions WHERE user_id = $1 AND status = 'active'", uuid.UUID(user_id)
    )


async def purchase_generation(conn: Conn, payer_id: str, user_id: str) -> int:
    """How many of this payer's subscriptions for this user have ended. Only canceled ones
    count: a concurrent purchase that recorded its active row a moment ago must not move the
    key on, or a double click would make a second Stripe subscription (and a 409)."""
    return await conn.fetchval(
        "SELECT count(*) FROM subscriptions WHERE payer_id = $1 AND user_id = $2 AND status = 'canceled'",
        uuid.UUID(payer_id), uuid.UUID(user_id),
    )


async def paid_accounts(conn: Conn, payer_id: str) -> list[asyncpg.Record]:
    return await conn.fetch(
        "SELECT * FROM subscriptions WHERE payer_id = $1 AND status = 'active' ORDER BY created_at",
        uuid.UUID(payer_id),
    )


async def insert_active_subscription(
    conn: Conn, *, stripe_id: str, payer_id: str, user_id: str, practice_id: str | None,
    amount_cents: int, currency: str, at: datetime,
) -> bool:
    """True if this call recorded it. No effect if the subscription is already known (active or
    canceled: canceled is terminal) or the user already has another active one."""
    inserted = await conn.fetchval(
        "INSERT INTO subscriptions (stripe_subscription_id, payer_id, user_id, practice_id, status,"
        " amount_cents, currency, created_at) VALUES ($1, $2, $3, $4, 'active', $5, $6, $7)"
        " ON CONFLICT DO NOTHING RETURNING true",
        stripe_id, uuid.UUID(payer_id), uuid.UUID(user_id), uuid.UUID(practice_id) if practice_id else None,
        amount_cents, currency, at,
    )
    return bool(inserted)


async def subscription(conn: Conn, stripe_id: str) -> asyncpg.Record | None:
    return await conn.fetchrow("SELECT * FROM subscriptions WHERE stripe_subscription_id = $1", stripe_id)


async def cancel_subscription(conn: Conn, stripe_id: str, at: datetime) -> asyncpg.Record | None:
    """Active -> canceled; returns the row if this call made the change."""
    return await conn.fetchrow(
        "UPDATE subscriptions SET status = 'canceled', canceled_at = $2"
        " WHERE stripe_subscription_id = $1 AND status = 'active' RETURNING *",
        stripe_id, at,
    )


async def insert_canceled_subscription(
    conn: Conn, *, stripe_id: str, payer_id: str, user_id: str, practice_id: str | None,
    amount_cents: int, currency: str, at: datetime,
) -> None:
    """A "deleted" that arrived before we knew the subscription: a terminal tombstone."""
    await conn.execute(
        "INSERT INTO subscriptions (stripe_subscription_id, payer_id, user_id, practice_id, status,"
        " amount_cents, currency, created_at, canceled_at)"
        " VALUES ($1, $2, $3, $4, 'canceled', $5, $6, $7, $7) ON CONFLICT DO NOTHING",
        stripe_id, uuid.UUID(payer_id), uuid.UUID(user_id), uuid.UUID(practice_id) if practice_id else None,
        amount_cents, currency, at,
    )


# ---- invoices ------------------------------------------------------------------------------

async def insert_invoice(
    conn: Conn, *, stripe_id: str, subscription_id: str | None, payer_id: str, user_id: str,
    number: str | None, status: str, amount_paid_cents: int, currency: str,
    period_start: datetime | None, period_end: datetime | None, created_at: datetime,
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO invoices (stripe_invoice_id, stripe_subscription_id, payer_id, user_id, number, status,"
        " amount_paid_cents, currency, period_start, period_end, created_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)"
        " ON CONFLICT (stripe_invoice_id) DO NOTHING RETURNING true",
        stripe_id, subscription_id, uuid.UUID(payer_id), uuid.UUID(user_id), number, status,
        amount_paid_cents, currency, period_start, period_end, created_at,
    )
    return bool(inserted)


async def invoices_visible_to(conn: Conn, caller_id: str) -> list[asyncpg.Record]:
    """The invoices a User Manager may list: those they paid (for any user) and those of their
    own account, whoever paid them."""
    return await conn.fetch(
        "SELECT * FROM invoices WHERE payer_id = $1 OR user_id = $1 ORDER BY created_at DESC, stripe_invoice_id",
        uuid.UUID(caller_id),
    )


async def invoices_of_user(conn: Conn, user_id: str) -> list[asyncpg.Record]:
    """The invoices of one user's own account, whoever paid them."""
    return await conn.fetch(
        "SELECT * FROM invoices WHERE user_id = $1 ORDER BY created_at DESC, stripe_invoice_id",
        uuid.UUID(user_id),
    )


# ---- ledger, webhook events, audit ---------------------------------------------------------

async def ledger_entry(
    conn: Conn, *, kind: str, stripe_ref: str, payer_id: str, user_id: str,
    amount_cents: int = 0, currency: str, at: datetime,
) -> bool:
    inserted = await conn.fetchval(
        "INSERT INTO ledger (kind, stripe_ref, payer_id, user_id, amount_cents, currency, occurred_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (kind, stripe_ref) DO NOTHING RETURNING true",
        kind, stripe_ref, uuid.UUID(str(payer_id)), uuid.UUID(str(user_id)), amount_cents, currency, at,
    )
    return bool(inserted)


async def first_delivery(conn: Conn, event_id: str, type_: str, created: datetime, at: datetime) -> bool:
    """Record a Stripe event id; False if it was already applied (a replay or redelivery)."""
    inserted = await conn.fetchval(
        "INSERT INTO stripe_events (event_id, type, created, received_at) VALUES ($1, $2, $3, $4)"
        " ON CONFLICT DO NOTHING RETURNING true",
        event_id, type_, created, at,
    )
    return bool(inserted)


async def audit(
    conn: Conn, *, at: datetime, actor: str | None, subject: str | None, action: str, outcome: str,
    ip: str | None, details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO audit (at, actor, subject, action, outcome, ip, details) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb)",
        at, _uuid_or_none(actor), _uuid_or_none(subject), action, outcome, ip, json.dumps(details or {}),
    )


def _uuid_or_none(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(str(value)) if value else None
    except ValueError:
        return None
