"""Events auth-service consumes (group "auth", idempotent inbox: a redelivered event changes
nothing):

- billing.securemail.granted / revoked -> users.securemail_paid (the "paid" column of
  Manage Users), and an audit row (a purchase is a security event);
- verify.code.sent / verify.code.checked -> audit rows, so the one audit trail Support reads
  shows 2-step codes sent, refused (send limits: SMS pumping) or failed, and checked, refused
  checks of another user's code included (ids, purpose, channel, outcome, client IP, the
  signed-in actor if any, the subject's practice; never code or number);
- gateway.session.ended -> an audit row: "logout" when the user ended the session (signing out,
  or signing in again over it), "session_expired" when the idle or absolute limit did."""
from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import asyncpg
from aiohttp import web

from msp_shared.events import (
    Envelope, SecureMailGranted, SecureMailRevoked, SessionEnded, VerifyCodeChecked, VerifyCodeSent,
)
from msp_shared import securemail
from msp_shared.inbox import idempotent
from msp_shared.web import POOL

from . import store

GROUP = "auth"
USER_ENDED = frozenset({"logout", "replaced"})  # the other reasons are the clock's


async def handle(conn: asyncpg.Connection, envelope: Envelope) -> None:
    data = envelope.payload()
    at = envelope.occurred_at
    if isinstance(data, (SecureMailGranted, SecureMailRevoked)):
        granted = isinstance(data, SecureMailGranted)
        user = await store.get_user(conn, data.user_id, for_update=True)
        if user is None:
            return  # not ours (or gone): nothing to mark
        # Derived from every grant and revoke seen, as mail-service does: events arrive out of
        # order (bus retries go through delay queues), and a late one must not undo a newer one.
        # (The real time is only recorded as when it arrived; no rule reads it.)
        paid = await securemail.apply(conn, envelope, data, datetime.now(timezone.utc)) is not None
        if paid != user["securemail_paid"]:
            await store.update_user(conn, user["id"], {"securemail_paid": paid}, at)
        await store.audit(
            conn, at=at, action="securemail_granted" if granted else "securemail_revoked",
            actor_id=data.paid_by if granted else None, subject_id=user["id"], practice_id=user["practice_id"],
            details={"event_id": str(envelope.id)},
        )
    elif isinstance(data, (VerifyCodeSent, VerifyCodeChecked)):
        # The subject is whose code it is; the actor whoever was signed in when asking (None in
        # anonymous flows: a password reset before signing in). The subject may be a user this
        # service no longer has: then no practice.
        user = await store.get_user(conn, data.user_id)
        sent = isinstance(data, VerifyCodeSent)
        details: dict[str, Any] = {
            "purpose": data.purpose,
            "verification_id": str(data.verification_id) if data.verification_id else None,  # None: refused
        }
        outcome = data.outcome
        if sent:
            details["channel"] = data.channel
            outcome = "ok" if outcome == "sent" else outcome  # "ok", as every success in this trail
        await store.audit(
            conn, at=at, action="verification_code_sent" if sent else "verification_code_checked", outcome=outcome,
            actor_id=data.actor_id, subject_id=data.user_id, practice_id=user["practice_id"] if user else None,
            ip=data.ip, details=details,
        )
    elif isinstance(data, SessionEnded):
        by_user = data.reason in USER_ENDED
        user = await store.get_user(conn, data.user_id)
        await store.audit(
            conn, at=at, action="logout" if by_user else "session_expired", actor_id=data.user_id if by_user else None,
            subject_id=data.user_id, practice_id=user["practice_id"] if user else None, ip=data.ip,
            details={"reason": data.reason, "session_id": str(data.session_id),
                     "last_seen_at": data.last_seen_at.isoformat() if data.last_seen_at else None},
        )


def subscribe(app: web.Application, bus: Any) -> None:
    types = [SecureMailGranted.TYPE, SecureMailRevoked.TYPE, VerifyCodeSent.TYPE, VerifyCodeChecked.TYPE, SessionEnded.TYPE]
    bus.subscribe(GROUP, types, idempotent(app[POOL], GROUP, handle))
