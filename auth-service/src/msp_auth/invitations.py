"""Inviting users: a single-use, time-bounded registration link sent by email. A new
invitation kills the user's earlier ones.

Who invites: Support, when it opens a practice or adds its staff (manage.py); User Managers
re-invite; and senders of secure messages inviting new recipients. That last one is
mail-service's: `invite_recipient` below is the seam for it (to be driven by an event such as
"mail.recipient.invite_requested" consumed here, or an internal endpoint), not wired yet."""
from __future__ import annotations

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
