"""Billing events mail-service keeps a copy of: who has paid SecureMail (may start new
messages and open Collaborator cases). Idempotent through the inbox table.

Grants and revokes may arrive out of order (retries through delay queues): each is recorded
with its time and subscription, and the user's state is derived from all of theirs (see
msp_shared.securemail), so the order of arrival does not change the outcome."""
from __future__ import annotations

import asyncpg
from aiohttp import web

from msp_shared import inbox, securemail
from msp_shared.events import Envelope, SecureMailGranted, SecureMailRevoked
from msp_shared.web import CLOCK, POOL

from . import store

GROUP = "mail-securemail"


def on_securemail(clock):  # noqa: ANN001, ANN201
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        data = envelope.payload()
        if not isinstance(data, (SecureMailGranted, SecureMailRevoked)):
            return
        now = clock.now()
        grant = await securemail.apply(conn, envelope, data, now)
        if grant is None:
            await store.revoke_securemail(conn, data.user_id)
        else:
            await store.grant_securemail(conn, data.user_id, grant.paid_by, now, grant=grant)

    return handle


def subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    handler = inbox.idempotent(app[POOL], GROUP, on_securemail(app[CLOCK]))
    bus.subscribe(GROUP, [SecureMailGranted.TYPE, SecureMailRevoked.TYPE], handler)
