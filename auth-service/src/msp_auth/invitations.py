"""Inviting users: a single-use, time-bounded registration link sent by email. A new
invitation kills the user's earlier ones.

Who invites: Support, when it opens a practice or adds its staff (manage.py); User Managers
and Support re-invite (`reinvite`); and senders of secure messages, through mail-service's
call to /internal/recipients (recipients.py): an address with no account is invited
(`invite_recipient`), and a recipient still waiting to register gets a fresh link
(`reinvite_recipient`, the re-invite path). Re-invitations by messages and by User Managers
are bounded per user (`reinvite_wait`), so nobody can flood an address or keep its link dead.

A re-invitation always goes to the account's current address: nothing here changes an
address. Only a User Manager's edit does (manage.py), and only while no other practice has
written to the account (recipients.py records who has)."""
from __future__ import annotations

import math
import uuid
from datetime import datetime, timedelta

import asyncpg

from msp_shared.mailer import request_email
from msp_shared.seal import Sealer

from . import store, tokens
from .accounts import SERVICE
from .config import AuthSettings


async def send_invitation(
    conn: asyncpg.Connection,
    *,
    settings: AuthSettings,
    sealer: Sealer,
    now: datetime,
    user: asyncpg.Record,
    practice: asyncpg.Record | None,
    invited_by: uuid.UUID | str | None,
) -> None:
    """A new link for this invited user (earlier links stop working) and the email carrying it."""
    raw, digest = tokens.new_token()
    await store.create_token(
        conn, kind="invitation", user_id=user["id"], digest=digest, now=now,
        ttl=timedelta(hours=settings.invitation_ttl_hours),
        created_by=uuid.UUID(str(invited_by)) if invited_by else None,
        practice_id=practice["id"] if practice else None,
    )
    await store.update_user(conn, user["id"], {"last_invited_at": now}, now)
    link = settings.public_url.rstrip("/") + f"/#/register?token={raw}"
    await request_email(
        conn, sealer, template="invitation", to=user["email"], secrets={"link": link},
        params={"practice_name": practice["name"] if practice else "SecurePractice"}, requested_by=SERVICE,
    )


# Statuses of an account not fully registered: it has not proven a phone (if it must) yet.
NOT_FULLY_REGISTERED = ("invited", "registered_unverified")


def may_reinvite(user: asyncpg.Record) -> bool:
    """Only an account nobody has registered yet gets a new invitation: status "invited" and
    no password. A registered account (even one still proving its phone) is never touched."""
    return user["status"] == "invited" and user["password_hash"] is None


async def reinvite(
    conn: asyncpg.Connection,
    *,
    settings: AuthSettings,
    sealer: Sealer,
    now: datetime,
    user: asyncpg.Record,
    invited_by: uuid.UUID | str | None,
) -> None:
    """Re-invite a user still waiting to register: a new link (the previous one stops working)
    to the account's current address, naming the practice that first invited them. The caller
    has checked `may_reinvite` on the locked row and writes the audit entry."""
    if not may_reinvite(user):
        raise ValueError("only an invited user who has not registered can be re-invited")
    practice = await store.get_practice(conn, user["invited_by_practice"] or user["practice_id"])
    await send_invitation(conn, settings=settings, sealer=sealer, now=now, user=user, practice=practice,
                          invited_by=invited_by)


async def create_invited_user(
    conn: asyncpg.Connection,
    *,
    settings: AuthSettings,
    now: datetime,
    email: str,
    practice_id: uuid.UUID | None,
    invited_by_practice: uuid.UUID | None,
    first_name: str = "",
    last_name: str = "",
    phone: str | None = None,
    cell_phone: str | None = None,
    two_step_required: bool = True,
) -> asyncpg.Record:
    """A new user in status "invited". The first user of a practice becomes its User Manager."""
    roles = ["member"]
    if practice_id is not None and not await store.practice_has_users(conn, practice_id):
        roles.append("user_manager")
    return await store.create_user(
        conn, email=email, practice_id=practice_id, invited_by_practice=invited_by_practice,
        first_name=first_name, last_name=last_name, phone=phone, cell_phone=cell_phone, roles=roles,
        two_step_required=two_step_required, time_zone=settings.default_time_zone, now=now,
    )


async def invite_recipient(
    conn: asyncpg.Connection,
    *,
    settings: AuthSettings,
    sealer: Sealer,
    now: datetime,
    email: str,
    sender_practice_id: uuid.UUID,
    sender_id: uuid.UUID,
    phone: str | None = None,
    cell_phone: str | None = None,
) -> asyncpg.Record:
    """Seam for mail-service: a secure message to an address with no account invites it,
    with the phone numbers the sender entered (E.164; the registration code goes to `phone`).
    The recipient belongs to no practice yet; the sender's practice sees them in Manage Users
    until they register. An address that already has an account is returned unchanged: a
    sender never changes someone else's numbers."""
    existing = await store.get_user_by_email(conn, email)
    if existing is not None:
        return existing
    user = await create_invited_user(
        conn, settings=settings, now=now, email=email, practice_id=None, invited_by_practice=sender_practice_id,
        phone=phone, cell_phone=cell_phone,
    )
    practice = await store.get_practice(conn, sender_practice_id)
    await send_invitation(conn, settings=settings, sealer=sealer, now=now, user=user, practice=practice, invited_by=sender_id)
    await store.audit(conn, at=now, action="invitation_sent", actor_id=sender_id, subject_id=user["id"],
                      practice_id=sender_practice_id, details={"reason": "message_recipient"})
    return user


# A secure message to someone still waiting to register sends them a fresh invitation, so
# the "message waiting" mail never arrives without a way in (the help page: correct the
# address, "then ... send them a new message to the current email address").
#
# Anti-flood bound, for messages and for User Managers' re-invites alike (any paid sender
# can write to any address, and any User Manager may re-invite an invited user of another
# practice): at most one re-invitation per user per MESSAGE_REINVITE_INTERVAL. A user sent a
# link (by a message, a re-invite or their first invitation) less than that long ago gets
# none: that link still works, and is not killed by another. The one exception is a link
# revoked because a User Manager corrected the address: the current address never got a
# link, so the next message or re-invite sends one at once (only a manager of the inviting
# practice can change the address, and only while no other practice has written to it),
# though never more than MAX_INVITATIONS_PER_INTERVAL links in all: else correcting the
# address back and forth would be a way around the bound. Registered accounts never get one (`may_reinvite`).
# Support's re-invite is not bounded.
MESSAGE_REINVITE_INTERVAL = timedelta(minutes=15)
MAX_INVITATIONS_PER_INTERVAL = 3


async def reinvite_wait(conn: asyncpg.Connection, user_id: uuid.UUID, now: datetime) -> int | None:
    """Seconds until this user may be sent another link under the bound above, or None when
    one may go now. Call it on the locked user row."""
    sent = await store.tokens_since(conn, user_id, "invitation", now - MESSAGE_REINVITE_INTERVAL)
    until = [s["created_at"] + MESSAGE_REINVITE_INTERVAL for s in sent if s["unrevoked"]]
    if len(sent) >= MAX_INVITATIONS_PER_INTERVAL:  # newest first: when the oldest that counts leaves the window
        until.append(sent[MAX_INVITATIONS_PER_INTERVAL - 1]["created_at"] + MESSAGE_REINVITE_INTERVAL)
    if not until:
        return None
    return max(1, math.ceil((max(until) - now).total_seconds()))


async def reinvite_recipient(
    conn: asyncpg.Connection,
    *,
    settings: AuthSettings,
    sealer: Sealer,
    now: datetime,
    user: asyncpg.Record,
    sender_id: uuid.UUID,
    sender_practice_id: uuid.UUID | None,
) -> bool:
    """A secure message to an existing account: if it is still only invited, re-invite it
    (as `reinvite`, audited alike with the sender as actor), within the bound above. True
    when an invitation was sent. Registered accounts are returned untouched."""
    if not may_reinvite(user):
        return False
    # Lock the row: two messages at the same moment must not both send a link.
    locked = await store.get_user(conn, user["id"], for_update=True)
    if locked is None or not may_reinvite(locked):
        return False
    if await reinvite_wait(conn, locked["id"], now) is not None:
        return False
    await reinvite(conn, settings=settings, sealer=sealer, now=now, user=locked, invited_by=sender_id)
    # The same entry as a re-invite's, and as a new recipient's invitation: the sender is the actor.
    await store.audit(conn, at=now, action="invitation_sent", actor_id=sender_id, subject_id=locked["id"],
                      practice_id=locked["practice_id"] or sender_practice_id,
                      details={"reason": "message_recipient", "reinvite": True})
    return True
