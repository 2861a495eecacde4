"""Events the gateway consumes: auth-service's revocations end every session of the user.

Only sessions that existed when auth-service decided (the envelope's occurred_at, real time)
end: the fresh session auth-service granted in the same answer (password change or reset)
must survive its own revocation, which can arrive after it. Clock skew between hosts narrows
or widens that boundary by the skew (milliseconds under NTP).

Subscribed per replica (each replica its own queue) because each must drop the sessions from
its own memory; the database delete is idempotent, so a redelivery has no further effect."""
from __future__ import annotations

import logging

from aiohttp import web

from msp_shared.bus import Bus
from msp_shared.events import Envelope, SessionsRevoked

from .http import GATEWAY

log = logging.getLogger(__name__)

GROUP = "gateway.sessions"


def subscribe(app: web.Application, bus: Bus) -> None:
    async def on_sessions_revoked(envelope: Envelope) -> None:
        event = envelope.payload()
        assert isinstance(event, SessionsRevoked)
        sessions = app[GATEWAY].sessions
        assert sessions is not None
        ended = await sessions.revoke_user(event.user_id, created_before=envelope.occurred_at)
        log.info("sessions revoked", extra={"user_id": str(event.user_id), "reason": event.reason, "ended": ended})

    bus.subscribe(GROUP, [SessionsRevoked.TYPE], on_sessions_revoked, per_replica=True)
