"""Internal endpoint for mail-service: turn the recipients of a secure message (email
addresses) into user ids now, inviting the addresses that have no account.

    POST /internal/recipients {"emails": [...], "inviting_practice_id", "sender_id",
                               "phones"?: {email: {"phone"?, "cell_phone"?}}}
    → 200 {"recipients": [{"email", "user_id", "invited"}], "sender": {...}}

"invited" is true when this call sent the address an invitation: a new account, or a fresh
link for an account still waiting to register (the earlier link stops working; at most one
such re-invitation per recipient per invitations.MESSAGE_REINVITE_INTERVAL, see
invitations.reinvite_wait).

`phones` are the numbers the sender entered for recipients new to the portal: an invited
recipient gets them (the help page's "phone number ... you entered during the sending of the
original message"), and proves `phone` when registering. Ignored for existing accounts.

Only services may call it (a signed identity with the "service" role); the gateway does not
route /internal at all. A new recipient is created "invited", belongs to no practice, shows
in the sending practice's Manage Users (where its User Managers set 2-step on or off for
them; on by default) and gets the invitation email. A registered account is only looked up.
The sender's name and practice come back too: mail-service shows them to recipients and
names the practice in its notification.

Every account resolved here that is not fully registered yet (a new one included) is shared
by all who write to its address, and mail-service stores their messages against its id. So
the sender's practice is recorded for it (recipient_practices), on the locked row: Manage
Users lets a practice change such an account's email or phones only while no other practice
has written to it (manage.py), and the lock makes "written to" and "address changed" happen
one after the other, never across each other."""
from __future__ import annotations

import uuid

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared import phones
from msp_shared.errors import ApiError
from msp_shared.mailer import ADDRESS
from msp_shared.web import current_identity, read_model

from . import invitations, store
from .accounts import ctx

SERVICE_ROLE = "service"


class PhonesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    phone: str | None = Field(None, max_length=40)
    cell_phone: str | None = Field(None, max_length=40)


class RecipientsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    emails: list[str] = Field(default_factory=list, max_length=100)
    inviting_practice_id: uuid.UUID | None = None
    sender_id: uuid.UUID
    phones: dict[str, PhonesIn] = Field(default_factory=dict, max_length=100)


def require_service(request: web.Request) -> None:
    ident = current_identity(request)
    if not ident.authenticated or not ident.has_role(SERVICE_ROLE):
        raise ApiError(403, "service_only", "This endpoint is for SecurePractice services only.")


def sender_view(user: asyncpg.Record, practice: asyncpg.Record | None) -> dict:
    return {
        "user_id": str(user["id"]),
        "email": user["email"],
        "name": f"{user['first_name']} {user['last_name']}".strip(),
        "practice_id": str(practice["id"]) if practice else None,
        "practice_name": practice["name"] if practice else None,
    }


async def resolve(request: web.Request) -> web.Response:
    require_service(request)
    body = await read_model(request, RecipientsIn)
    bad = [i for i, e in enumerate(body.emails) if not ADDRESS.match(e.strip()) or len(e.strip()) > 320]
    if bad:
        raise ApiError(400, "invalid_input", "Some addresses are not valid.", {"fields": {f"emails.{i}": "invalid" for i in bad}})
    c = ctx(request)
    try:
        numbers = phones.recipients_numbers(body.phones, body.emails, region=c.settings.phone_default_region, prefix="phones")
    except phones.BadNumbers as exc:
        raise ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": exc.fields}) from None
    for attempt in (1, 2):
        try:
            return await _resolve(c, body, numbers)
        except asyncpg.UniqueViolationError:
            # Another message invited the same new address at the same moment: that account
            # exists now, so the second attempt finds it.
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


async def _resolve(c, body: RecipientsIn, numbers: dict[str, dict[str, str]]) -> web.Response:  # noqa: ANN001
    async with c.pool.acquire() as conn, conn.transaction():
        sender = await store.get_user(conn, body.sender_id)
        if sender is None:
            raise ApiError(404, "sender_not_found", "The sender has no account.")
        practice = await store.get_practice(conn, sender["practice_id"])
        # The practice the recipient is invited by is the sender's own, as auth knows it.
        inviting = sender["practice_id"]
        found: dict[str, dict] = {}
        emails = list(dict.fromkeys(e.strip() for e in body.emails))
        # Rows are locked (re-invitations) and inserted in one order for every caller, so two
        # messages naming the same addresses in another order cannot deadlock.
        for email in sorted(emails, key=str.lower):
            user = await store.get_user_by_email(conn, email)
            if user is not None and user["status"] in invitations.NOT_FULLY_REGISTERED:
                # Locked, and read again: a User Manager who changed the address meanwhile
                # (committed while this waited) leaves no row for this address, so the message
                # goes to a new account for it, not to the one now at the other address.
                user = await store.get_user_by_email(conn, email, for_update=True)
            if user is None:
                user = await invitations.invite_recipient(
                    conn, settings=c.settings, sealer=c.sealer, now=c.now, email=email,
                    sender_practice_id=inviting, sender_id=sender["id"], **numbers.get(email.lower(), {}),
                )
                invited = True
            else:
                # Still only invited (never registered): a fresh link with this message, so the
                # "message waiting" mail is never a dead end (after a User Manager corrected the
                # address, or the first link expired). Bounded per recipient; registered
                # accounts are untouched. See invitations.reinvite_recipient.
                invited = await invitations.reinvite_recipient(
                    conn, settings=c.settings, sealer=c.sealer, now=c.now, user=user,
                    sender_id=sender["id"], sender_practice_id=inviting,
                )
            if user["status"] in invitations.NOT_FULLY_REGISTERED:
                await store.record_recipient_practice(conn, user["id"], inviting, c.now)
            found[email] = {"email": user["email"], "user_id": str(user["id"]), "invited": invited}
    answer = [found[email] for email in emails]
    return web.json_response({"recipients": answer, "sender": sender_view(sender, practice)})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/internal/recipients", resolve)
