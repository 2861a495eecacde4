"""Billing events mail-service keeps a copy of: who has paid SecureMail (may start new
messages and open Collaborator cases). Idempotent through the inbox table.

Grants and revokes may arrive out of order (retries through delay queues): each is recorded
with its time and subscription, and the user's state is derived from all of theirs (see
securemail.py), so the order of arrival does not change the outcome."""
from __future__ import annotations

from datetime import timezone

import asyncpg
from aiohttp import web

from msp_shared import inbox
from msp_shared.events import Envelope, SecureMailGranted, SecureMailRevoked
from msp_shared.web import CLOCK, POOL

from . import securemail, store

GROUP = "mail-securemail"


def change_of(envelope: Envelope, data: SecureMailGranted | SecureMailRevoked) -> securemail.Change:
    at = envelope.occurred_at
    if at.tzinfo is None:  # the envelope's times are UTC
        at = at.replace(tzinfo=timezone.utc)
    if isinstance(data, SecureMailGranted):
        return securemail.Change(envelope.id, securemail.GRANT, at, data.subscription_id, data.paid_by)
    return securemail.Change(envelope.id, securemail.REVOKE, at, data.subscription_id)


def on_securemail(clock):  # noqa: ANN001, ANN201
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        data = envelope.payload()
        if not isinstance(data, (SecureMailGranted, SecureMailRevoked)):
            return
        now = clock.now()
        await store.lock_securemail_user(conn, data.user_id)
        await store.record_securemail_change(conn, data.user_id, change_of(envelope, data), now)
        grant = securemail.current_grant(await store.securemail_changes(conn, data.user_id))
        if grant is None:
            await store.revoke_securemail(conn, data.user_id)
        else:
            await store.grant_securemail(conn, data.user_id, grant.paid_by, now, grant=grant)

    return handle


def subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    handler = inbox.idempotent(app[POOL], GROUP, on_securemail(app[CLOCK]))
    bus.subscribe(GROUP, [SecureMailGranted.TYPE, SecureMailRevoked.TYPE], handler)
