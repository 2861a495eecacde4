"""Billing events mail-service keeps a copy of: who has paid SecureMail (may start new
messages and open Collaborator cases). Idempotent through the inbox table."""
from __future__ import annotations

import asyncpg
from aiohttp import web

from msp_shared import inbox
from msp_shared.events import Envelope, SecureMailGranted, SecureMailRevoked
from msp_shared.web import CLOCK, POOL

from . import store

GROUP = "mail-securemail"


def on_securemail(clock):  # noqa: ANN001, ANN201
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        data = envelope.payload()
        if isinstance(data, SecureMailGranted):
            await store.grant_securemail(conn, data.user_id, data.paid_by, clock.now())
        elif isinstance(data, SecureMailRevoked):
            await store.revoke_securemail(conn, data.user_id)

    return handle


def subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    handler = inbox.idempotent(app[POOL], GROUP, on_securemail(app[CLOCK]))
    bus.subscribe(GROUP, [SecureMailGranted.TYPE, SecureMailRevoked.TYPE], handler)
