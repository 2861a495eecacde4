"""Events billing-service consumes.

auth.user.registered (and auth.user.roles_changed) -> practice_users: billing checks that a
purchase targets a user of the caller's practice, and Support's look-up that a user is a User
Manager, without reading auth-service's tables (group "billing-users", idempotent inbox: a
redelivered event changes nothing; an older roles announcement never replaces a newer one).

auth.user.registered with the role user_manager (the first user of a practice), and
auth.user.roles_changed granting it (Support) -> the User Manager's Stripe customer, so the
Billing Dept. can put a card on it in Stripe (cards.py). A group of its own,
"billing-customers": its effect calls Stripe, and a Stripe outage must delay customers only,
never practice membership. Redelivery and retries make no second customer (billing's payers
row, and Stripe's idempotency key per user)."""
from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from msp_shared.events import Envelope, UserRegistered, UserRolesChanged
from msp_shared.inbox import idempotent
from msp_shared.web import CLOCK, POOL

from . import cards, store
from .purchase_rules import USER_MANAGER

GROUP = "billing-users"
CUSTOMERS_GROUP = "billing-customers"


async def on_user_registered(conn: asyncpg.Connection, envelope: Envelope) -> None:
    """A practice user (and their roles, when announced): both events of the group."""
    data = envelope.payload()
    assert isinstance(data, (UserRegistered, UserRolesChanged))
    if data.practice_id is None:  # a recipient of no practice (a patient): nothing to bill for
        return
    if isinstance(data, UserRegistered):
        await store.remember_user(conn, data.user_id, data.practice_id, envelope.occurred_at)
    if data.roles is not None:
        await store.remember_roles(conn, data.user_id, data.roles, envelope.occurred_at)


def on_user_manager(app: web.Application) -> Any:
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        data = envelope.payload()
        assert isinstance(data, (UserRegistered, UserRolesChanged))
        if data.practice_id is None or USER_MANAGER not in (data.roles or ()):
            return
        await cards.ensure_customer(app, conn, user_id=str(data.user_id), practice_id=str(data.practice_id),
                                    at=app[CLOCK].now(), actor=None, ip=None, cause=envelope.type)
    return handle


def subscribe(app: web.Application, bus: Any) -> None:
    bus.subscribe(GROUP, [UserRegistered.TYPE, UserRolesChanged.TYPE], idempotent(app[POOL], GROUP, on_user_registered))
    bus.subscribe(CUSTOMERS_GROUP, [UserRegistered.TYPE, UserRolesChanged.TYPE],
                  idempotent(app[POOL], CUSTOMERS_GROUP, on_user_manager(app)))
