"""Consumer group "mail-outbound": records each EmailRequested (once, thanks to the inbox)
and wakes the sender. Sending happens later, outside the message handler, so an SMTP
outage never blocks or dead-letters the queue: the request is safe in the table."""
from __future__ import annotations

import asyncpg
from msp_shared.clock import Clock
from msp_shared.events import EmailRequested, Envelope

from . import store

GROUP = "mail-outbound"


def record_request(clock: Clock):
    async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
        request = envelope.payload()
        assert isinstance(request, EmailRequested)
        await store.insert_request(
            conn,
            id=envelope.id,
            template=request.template,
            sealed=request.sealed,
            params=dict(request.params),
            requested_by=request.requested_by,
            now=clock.now(),
        )

    return handle
