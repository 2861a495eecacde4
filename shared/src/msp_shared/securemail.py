"""Who has paid SecureMail, from billing's grant and revoke events, whatever order the bus
delivers them in: the rule, pure, and the two statements of the table each consumer keeps.

The bus retries a failed delivery through delay queues, so a grant retried after a quick
cancel can arrive after its revoke, and a revoke of an old subscription after the grant of
a new one. Applying each event blindly as it comes leaves a cancelled user able to send, or
blocks a paying one. So each consumer (mail-service, which lets paid users start messages;
auth-service, whose Manage Users shows who is paid) keeps every grant and revoke it has seen
for a user, in a `securemail_changes` table of its own schema (the same shape in each
service's migrations), and derives the state from all of them: the result depends on which events arrived, never on
the order they arrived in, and a redelivered event changes nothing.

`current_grant` replays them in the order billing made them (the envelope's occurred_at; a
revoke after a grant of the same instant), with what each event says about its subscription
(billing's subscription id, when the event carries it):

- a grant of a subscription that has a revoke anywhere among the events never takes effect
  (a subscription is granted once and revoked once, in that order, whatever the clocks say);
- a revoke of subscription X ends a grant of X, or a grant that names no subscription made
  before it; it does not end the grant of another subscription Y;
- a revoke that names no subscription ends whatever grant came before it;
- a later grant replaces an earlier one.

Billing lets a user have at most one active subscription at a time, so when every event
names its subscription, only grants of different subscriptions are ordered by time, and
those are a whole subscription's life apart: skew between billing replicas' clocks does not
matter. Events without a subscription id (published before the field existed) are ordered
by time alone."""
from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Literal

import asyncpg

from .events import Envelope, SecureMailGranted, SecureMailRevoked

GRANT = "grant"
REVOKE = "revoke"


@dataclass(frozen=True)
class Change:
    """One grant or revoke as billing published it."""

    event_id: uuid.UUID
    kind: Literal["grant", "revoke"]
    at: datetime  # the envelope's occurred_at
    subscription_id: str | None = None
    paid_by: uuid.UUID | None = None  # grants only


def _order(change: Change) -> tuple:
    return (change.at, change.kind == REVOKE, str(change.event_id))


def current_grant(changes: Iterable[Change]) -> Change | None:
    """The grant that pays for the user's SecureMail now, or None (not paid)."""
    changes = list(changes)
    revoked = {c.subscription_id for c in changes if c.kind == REVOKE and c.subscription_id is not None}
    current: Change | None = None
    for change in sorted(changes, key=_order):
        if change.kind == GRANT:
            if change.subscription_id is None or change.subscription_id not in revoked:
                current = change
        elif current is not None and (
            change.subscription_id is None or current.subscription_id in (None, change.subscription_id)
        ):
            current = None
    return current


def change_of(envelope: Envelope, data: SecureMailGranted | SecureMailRevoked) -> Change:
    at = envelope.occurred_at
    if at.tzinfo is None:  # the envelope's times are UTC
        at = at.replace(tzinfo=timezone.utc)
    if isinstance(data, SecureMailGranted):
        return Change(envelope.id, GRANT, at, data.subscription_id, data.paid_by)
    return Change(envelope.id, REVOKE, at, data.subscription_id)


# ---- the consumer's table (created by each consuming service's own migration) ---------------

async def lock_user(conn: asyncpg.Connection, user_id: uuid.UUID) -> None:
    """Serialise the grants and revokes of one user until the transaction ends: competing
    consumers may hold two of them at once, and each derives the state from all the others."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('msp-securemail:' || $1::uuid::text, 0))", user_id)


async def record(conn: asyncpg.Connection, user_id: uuid.UUID, change: Change, now: datetime) -> None:
    await conn.execute(
        "INSERT INTO securemail_changes (event_id, user_id, kind, occurred_at, subscription_id, paid_by, received_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        change.event_id, user_id, change.kind, change.at, change.subscription_id, change.paid_by, now,
    )


async def history(conn: asyncpg.Connection, user_id: uuid.UUID) -> list[Change]:
    rows = await conn.fetch(
        "SELECT event_id, kind, occurred_at, subscription_id, paid_by FROM securemail_changes WHERE user_id = $1", user_id
    )
    return [Change(r["event_id"], r["kind"], r["occurred_at"], r["subscription_id"], r["paid_by"]) for r in rows]


async def apply(conn: asyncpg.Connection, envelope: Envelope, data: SecureMailGranted | SecureMailRevoked,
                now: datetime) -> Change | None:
    """Record the event and return the grant that pays for the user now (None: not paid)."""
    await lock_user(conn, data.user_id)
    await record(conn, data.user_id, change_of(envelope, data), now)
    return current_grant(await history(conn, data.user_id))


__all__ = ["GRANT", "REVOKE", "Change", "apply", "change_of", "current_grant", "history", "lock_user", "record"]
