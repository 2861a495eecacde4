"""Events the gateway consumes: auth-service's revocations end every session of the user.

Only sessions that existed when auth-service decided (the envelope's occurred_at, real time)
end: the fresh session auth-service granted in the same answer (password change or reset)
must survive its own revocation, which can arrive after it. Clock skew between hosts narrows
or widens that boundary by the skew (milliseconds under NTP).

Two subscriptions, because a revocation has two effects:
- the rows, in the database all replicas share, are deleted by a durable consumer group
  (GROUP_ROWS): its queue outlives every replica and every broker reconnect, so a revocation
  published while no gateway runs, or while a replica's connection is down, is still
  carried out when one consumes again;
- each replica drops the user's sessions from its own memory through a queue of its own
  (GROUP, per replica). That queue lives only as long as the replica's connection: an
  event published while it was gone is missed there, and the replica trusts its cached copy
  at most `session_cache_seconds` more before it reads the (deleted) row again.

Both deletes are idempotent, so the second one and any redelivery change nothing."""
from __future__ import annotations

import logging

from aiohttp import web

from msp_shared.bus import Bus
from msp_shared.events import Envelope, SessionsRevoked
from msp_shared.web import POOL

from . import store
from .http import GATEWAY

log = logging.getLogger(__name__)

GROUP = "gateway.sessions"  # per replica: the in-memory copies
GROUP_ROWS = "gateway.revocations"  # durable, shared by the replicas: the rows


def subscribe(app: web.Application, bus: Bus) -> None:
    async def drop_cached_sessions(envelope: Envelope) -> None:
        event = envelope.payload()
        assert isinstance(event, SessionsRevoked)
        sessions = app[GATEWAY].sessions
        assert sessions is not None
        ended = await sessions.revoke_user(event.user_id, min_epoch=event.epoch, created_before=envelope.occurred_at)
        log.info("sessions revoked", extra={"user_id": str(event.user_id), "reason": event.reason, "ended": ended})

    async def delete_session_rows(envelope: Envelope) -> None:
        event = envelope.payload()
        assert isinstance(event, SessionsRevoked)
        await store.delete_user_sessions(app[POOL], event.user_id, min_epoch=event.epoch,
                                         created_before=envelope.occurred_at)

    bus.subscribe(GROUP_ROWS, [SessionsRevoked.TYPE], delete_session_rows)
    bus.subscribe(GROUP, [SessionsRevoked.TYPE], drop_cached_sessions, per_replica=True)
