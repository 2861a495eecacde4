"""Events billing-service consumes.

auth.user.registered -> practice_users: billing checks that a purchase targets a user of the
caller's practice without reading auth-service's tables (group "billing-users", idempotent
inbox: a redelivered event changes nothing)."""
from __future__ import annotations

from typing import Any

import asyncpg
from aiohttp import web

from msp_shared.events import Envelope, UserRegistered
from msp_shared.inbox import idempotent
from msp_shared.web import POOL

from . import store

GROUP = "billing-users"


async def on_user_registered(conn: asyncpg.Connection, envelope: Envelope) -> None:
    data = envelope.payload()
    assert isinstance(data, UserRegistered)
    if data.practice_id is None:  # a recipient of no practice (a patient): nothing to bill for
        return
    await store.remember_user(conn, data.user_id, data.practice_id, envelope.occurred_at)


def subscribe(app: web.Application, bus: Any) -> None:
    bus.subscribe(GROUP, [UserRegistered.TYPE], idempotent(app[POOL], GROUP, on_user_registered))
