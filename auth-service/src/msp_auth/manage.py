"""User Manager ("Manage Users") and Support ("/admin") endpoints.

Authorisation is decided here on every request, from the caller's row in the database (not
only the roles in the identity header, which may be up to a session old):
- a User Manager acts on their own practice's users (list, 2-step toggle, edit an invited
  user's contact details, unlock) and may re-invite any invited user, also of another
  practice, as the help page says (learning nothing about that user; at most one link per
  user per invitations.MESSAGE_REINVITE_INTERVAL); nothing else outside their practice
  (404, as if absent);
- an invited account is shared by everyone who writes to its address, so its email and
  phones may be edited only while no other practice has written to it (recipients.py
  records who has): otherwise a manager could move other practices' messages to an address
  or phone of their choosing;
- for the same reason, 2-step may not be turned off for such an account (it protects the
  other practices' messages too); nor, under the nist_rev4 password profile, for a user whose
  password is allowed only with 2-step (8 characters instead of 15); and it is not turned on
  for a registered user whose phone nobody proved (password resets would send codes to it);
- a member can do none of it (403);
- Support opens practices, invites their staff, edits practice details, unlocks accounts,
  grants and revokes User Manager, and reads the audit trail. Support never sees or sets a
  password: no route here takes or returns one."""
from __future__ import annotations

import csv
import io
import json
import uuid
from datetime import datetime
from typing import Any

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared import outbox, phones
from msp_shared.errors import ApiError, forbidden, not_found
from msp_shared.events import UserRegistered, UserRolesChanged
from msp_shared.mailer import ADDRESS
from msp_shared.web import read_model, require_user

from . import policy, store
from .accounts import Ctx, ctx, practice_view, revoke_sessions, two_step_without_phone
from .invitations import NOT_FULLY_REGISTERED, create_invited_user, may_reinvite, reinvite, reinvite_wait, send_invitation

USER_MANAGER = "user_manager"
SUPPORT = "support"


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ManagedUserPatch(Model):
    two_step_required: bool | None = None
    email: str | None = Field(None, min_length=3, max_length=320, pattern=ADDRESS.pattern)
    phone: str | None = Field(None, max_length=40)
    cell_phone: str | None = Field(None, max_length=40)


class NewUser(Model):
    email: str = Field(min_length=3, max_length=320, pattern=ADDRESS.pattern)
    first_name: str = Field("", max_length=100)
    last_name: str = Field("", max_length=100)
    phone: str | None = Field(None, max_length=40)
    cell_phone: str | None = Field(None, max_length=40)
    two_step_required: bool = True


class PracticeIn(Model):
    name: str = Field(min_length=1, max_length=200)
    address: str = Field("", max_length=500)
    phone: str = Field("", max_length=40)
    identifiers: dict[str, str] = Field(default_factory=dict, max_length=10)
    first_user: NewUser


class PracticePatch(Model):
    name: str | None = Field(None, min_length=1, max_length=200)
    address: str | None = Field(None, max_length=500)
    phone: str | None = Field(None, max_length=40)
    identifiers: dict[str, str] | None = Field(None, max_length=10)


# ---- who is asking ---------------------------------------------------------------------------------

async def caller(conn: asyncpg.Connection, request: web.Request) -> asyncpg.Record:
    ident = require_user(request)
    user = await store.get_user(conn, ident.user_id)
    if user is None:
        raise ApiError(401, "not_signed_in", "Please sign in.")
    return user


def require_manager(user: asyncpg.Record) -> uuid.UUID:
    if USER_MANAGER not in user["roles"] or user["practice_id"] is None:
        raise forbidden("Only a User Manager of the practice can do this.")
    return user["practice_id"]


def require_support(user: asyncpg.Record) -> None:
    if SUPPORT not in user["roles"]:
        raise forbidden("Only SecurePractice Support can do this.")


# Users another practice invited stay in its Manage Users until fully registered
# (invitations.NOT_FULLY_REGISTERED): until then it may correct the phone their code goes to
# (the recipient cannot, see accounts.phone_to_prove), unless other practices wrote to them.


def in_practice_list(target: asyncpg.Record | None, practice_id: uuid.UUID) -> bool:
    """Whether the user shows in this practice's Manage Users view."""
    if target is None:
        return False
    if target["practice_id"] == practice_id:
        return True
    return target["invited_by_practice"] == practice_id and target["status"] in NOT_FULLY_REGISTERED


EMAIL_TAKEN = ApiError(409, "email_taken", "Another account already uses this email address.")
ADDRESSED_BY_OTHERS = ApiError(
    409, "addressed_by_other_practices",
    "Other practices have also written to this address, so its details cannot be changed here. "
    "Send your message to the correct address instead.")


TWO_STEP_SHARED = ApiError(
    409, "addressed_by_other_practices",
    "Other practices have also written to this user, so 2-Step Verification cannot be turned off here: it "
    "protects their messages too.")
PHONE_NOT_VERIFIED = ApiError(
    409, "phone_not_verified",
    "This user has not confirmed their phone number with a code yet, so 2-Step Verification cannot be required: "
    "its codes would go to a number nobody proved. They can confirm it in their profile (saving the number under "
    "Phone sends them a code by text message or call); then 2-Step Verification can be turned on.")


def password_needs_two_step(settings: Any) -> ApiError:
    alone = policy.rules(settings.password_policy, two_step=False).min_length
    return ApiError(
        409, "password_needs_two_step",
        f"This user's password may be shorter than {alone} characters, which is allowed only with 2-Step "
        f"Verification. They can change it to one of at least {alone} characters in their profile; then 2-Step "
        "Verification can be turned off.",
        {"min_length": alone})


async def addressed_by_others(conn: asyncpg.Connection, target: asyncpg.Record, practice_id: uuid.UUID) -> bool:
    """Whether anyone but this practice has a stake in the account: it is another practice's
    user or was invited by one, or a sender of another practice (or of none) has written to
    it. Read on the locked row, so a message resolving the address waits for the edit (and
    then finds the new address) or the edit sees the message's practice."""
    if any(p is not None and p != practice_id for p in (target["practice_id"], target["invited_by_practice"])):
        return True
    return await store.addressed_by_other_practices(conn, target["id"], practice_id)


def managed_view(user: asyncpg.Record, practice_id: uuid.UUID | None = None) -> dict[str, Any]:
    return {
        "id": str(user["id"]),
        "email": user["email"],
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "phone": user["phone"],
        "cell_phone": user["cell_phone"],
        "status": user["status"],
        "roles": list(user["roles"]),
        "two_step_required": user["two_step_required"],
        "securemail_paid": user["securemail_paid"],
        "locked": user["locked_at"] is not None,
        # set when someone else unlocked the account: the user must choose a new password first
        "reset_required": user["password_reset_required"],
        "last_invited_at": user["last_invited_at"].isoformat() if user["last_invited_at"] else None,
        "practice_id": str(user["practice_id"]) if user["practice_id"] else None,
        "own_practice": practice_id is None or user["practice_id"] == practice_id,
    }


def _user_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["user_id"])
    except ValueError:
        raise not_found() from None


def _phone(raw: str | None, c: Ctx, field: str, *, for_codes: bool = True) -> str | None:
    if raw is None or raw.strip() == "":
        return None
    try:
        return phones.normalize(raw, region=c.settings.phone_default_region, for_codes=for_codes)
    except phones.InvalidPhone as exc:  # says why: not a number, or a kind codes never go to
        raise ApiError(400, "invalid_input", "Some fields are missing or invalid.",
                       {"fields": {field: str(exc)}}) from None


# ---- shared actions ---------------------------------------------------------------------------------

async def _unlock(conn: asyncpg.Connection, c: Ctx, target: asyncpg.Record, by: str) -> dict[str, Any]:
    """Unlock by someone else: the old password stays unusable until the user resets it."""
    if target["locked_at"] is None:
        return {"unlocked": False, "user": managed_view(target)}
    await store.update_user(conn, target["id"], {
        "locked_at": None, "failed_logins": 0, "password_reset_required": target["password_hash"] is not None,
    }, c.now)
    await c.audit(conn, "account_unlocked", subject=target["id"], practice_id=target["practice_id"], by=by)
    return {"unlocked": True, "user": managed_view(await store.get_user(conn, target["id"]))}


async def _reinvite(conn: asyncpg.Connection, c: Ctx, target: asyncpg.Record, by: str) -> None:
    await reinvite(conn, settings=c.settings, sealer=c.sealer, now=c.now, user=target, invited_by=c.actor_id)
    await c.audit(conn, "invitation_sent", subject=target["id"], practice_id=target["practice_id"], by=by, reinvite=True)


# ---- User Manager --------------------------------------------------------------------------------------

async def list_practice_users(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn:
        practice_id = require_manager(await caller(conn, request))
        rows = await store.list_practice_users(conn, practice_id)
    return web.json_response({"users": [managed_view(r, practice_id) for r in rows]})


async def patch_practice_user(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, ManagedUserPatch)
    async with c.pool.acquire() as conn:
        async with conn.transaction():
            practice_id = require_manager(await caller(conn, request))
            target = await store.get_user(conn, _user_id(request), for_update=True)
            if not in_practice_list(target, practice_id):
                raise not_found("No such user in your practice.")
            refusal = await _refuse_contact_edit(conn, c, body, target, practice_id)
            if refusal is None:
                refusal = await _refuse_two_step(conn, c, body, target, practice_id)
            if refusal is None:
                return await _patch(conn, c, body, target, practice_id)
        # Audited (and committed) above; refused here.
        raise refusal


async def _refuse_contact_edit(conn: asyncpg.Connection, c: Ctx, body: ManagedUserPatch, target: asyncpg.Record,
                               practice_id: uuid.UUID) -> ApiError | None:
    """A change of an invited user's email or phones that another practice's messages forbid
    (see addressed_by_others), or to an address another account has: audited, to be raised
    once the audit row is committed. The second tells a User Manager that an address has an
    account, as writing to it would; the audit trail shows Support who keeps asking."""
    if target["status"] not in NOT_FULLY_REGISTERED:
        return None  # the registered-user refusal answers (_patch)
    changing = _contact_changes(body, target, c)
    if not changing:
        return None
    if await addressed_by_others(conn, target, practice_id):
        refusal, reason = ADDRESSED_BY_OTHERS, "addressed_by_other_practices"
    elif ("email" in changing and target["status"] == "invited"
          and await store.email_taken(conn, changing["email"], except_user=target["id"])):
        refusal, reason = EMAIL_TAKEN, "email_taken"
    else:
        return None
    await c.audit(conn, "invited_user_edited", outcome="refused", subject=target["id"],
                  practice_id=target["practice_id"], fields=sorted(changing), reason=reason)
    return refusal


async def _refuse_two_step(conn: asyncpg.Connection, c: Ctx, body: ManagedUserPatch, target: asyncpg.Record,
                           practice_id: uuid.UUID) -> ApiError | None:
    """A change of the 2-step setting this manager may not make: audited, to be raised once
    the audit row is committed. Off: not for an account other practices have a stake in (see
    addressed_by_others), nor, under nist_rev4, while the user's password is not known to be
    long enough alone (unknown counts as not). On: not for a registered user whose phone was
    never proved (no phone at all is _patch's no_phone)."""
    if body.two_step_required is None or body.two_step_required == target["two_step_required"]:
        return None
    if body.two_step_required:
        if two_step_without_phone(target) or target["status"] == "invited" or target["phone_verified_at"] is not None:
            return None
        refusal, reason = PHONE_NOT_VERIFIED, "phone_not_verified"
    elif target["status"] in NOT_FULLY_REGISTERED and await addressed_by_others(conn, target, practice_id):
        refusal, reason = TWO_STEP_SHARED, "addressed_by_other_practices"
    elif target["password_hash"] is not None and not policy.two_step_off_allowed(
            c.settings.password_policy, target["password_single_factor_ok"]):
        refusal, reason = password_needs_two_step(c.settings), "password_needs_two_step"
    else:
        return None
    await c.audit(conn, "two_step_changed", outcome="refused", subject=target["id"], practice_id=target["practice_id"],
                  required=body.two_step_required, reason=reason)
    return refusal


def _contact_changes(body: ManagedUserPatch, target: asyncpg.Record, c: Ctx) -> dict[str, Any]:
    """The contact fields of the patch whose value differs from the user's: a form saved as it
    was is not an edit (the Edit page sends every field)."""
    sent = body.model_fields_set & {"email", "phone", "cell_phone"}
    changes: dict[str, Any] = {}
    if "email" in sent and body.email and body.email.strip().lower() != target["email"].lower():
        changes["email"] = body.email.strip()
    for field in ("phone", "cell_phone"):
        if field in sent:
            number = _phone(getattr(body, field), c, field)
            if number != target[field]:
                changes[field] = number
    return changes


async def _patch(conn: asyncpg.Connection, c: Ctx, body: ManagedUserPatch, target: asyncpg.Record,
                 practice_id: uuid.UUID) -> web.Response:
    changes: dict[str, Any] = {}
    contact = body.model_fields_set & {"email", "phone", "cell_phone"}
    if contact:
        new_email = body.email.strip() if "email" in contact and body.email else None
        if new_email and new_email.lower() == target["email"].lower():
            new_email = None
        # The phones until a phone is proven (with a wrong one the user could not finish);
        # the email only until the invitation is used (its link proved the address).
        if target["status"] not in NOT_FULLY_REGISTERED or (new_email and target["status"] != "invited"):
            raise ApiError(409, "user_registered",
                           "Registered users edit their own contact details in their profile; here only an invited "
                           "user's email, and the phone numbers of a user who has not verified a phone yet.")
        edits = _contact_changes(body, target, c)
        if new_email:  # not taken: _refuse_contact_edit looked, on the locked row
            changes["email"] = new_email
        if "phone" in edits:
            changes["phone"] = edits["phone"]
            changes["phone_from_inviter"] = changes["phone"] is not None  # the number to prove
        if "cell_phone" in edits:
            changes["cell_phone"] = edits["cell_phone"]
    if body.two_step_required is not None and body.two_step_required != target["two_step_required"]:
        if body.two_step_required and two_step_without_phone(target):
            raise ApiError(409, "no_phone", "This user has no phone number on file for the codes. They can add one "
                           "in their profile, and turn 2-Step Verification on there.")
        changes["two_step_required"] = body.two_step_required
        if not body.two_step_required and target["status"] == "registered_unverified":
            changes["status"] = "verified"  # nothing left to prove: fully registered
            await outbox.add(conn, UserRegistered(user_id=target["id"], practice_id=target["practice_id"],
                                                  roles=tuple(target["roles"])))
        await c.audit(conn, "two_step_changed", subject=target["id"], practice_id=target["practice_id"],
                      required=body.two_step_required)
    # A new address means the link went to a wrong one: whoever holds that mail must not
    # register as this user. Other edits keep the link (the user follows it again).
    link_revoked = "email" in changes
    if link_revoked:
        await store.revoke_tokens(conn, target["id"], "invitation", c.now)
    if changes:
        target = await store.update_user(conn, target["id"], changes, c.now)
        edited = sorted(set(changes) - {"two_step_required", "status", "phone_from_inviter"})
        if edited:
            await c.audit(conn, "invited_user_edited", subject=target["id"], practice_id=target["practice_id"],
                          fields=edited, invitation_revoked=link_revoked)
    # Saving sends nothing: the manager re-invites explicitly if they want a new link.
    return web.json_response({"user": managed_view(target, practice_id), "invitation_revoked": link_revoked})


async def reinvite_practice_user(request: web.Request) -> web.Response:
    """A new link to an invited user's current address. A User Manager may re-invite an
    invited user of another practice too (the help page), but learns nothing about them from
    the answer, and no user gets a link more often than invitations.MESSAGE_REINVITE_INTERVAL
    from User Managers and messages together (else one could keep a person's link dead and
    fill their inbox). Support is not bounded."""
    c = ctx(request)
    async with c.pool.acquire() as conn:
        async with conn.transaction():
            actor = await caller(conn, request)
            support = SUPPORT in actor["roles"]
            if not support:
                require_manager(actor)
            target = await store.get_user(conn, _user_id(request), for_update=True)
            if target is None:
                raise not_found("No such user.")
            if not may_reinvite(target):
                own = support or target["practice_id"] == actor["practice_id"]
                if not own:
                    raise not_found("No such user.")
                raise ApiError(409, "already_registered", "This user has already registered.")
            if not ADDRESS.match(target["email"]):  # saved before addresses were checked as mail is
                raise ApiError(409, "invalid_email", "This user's email address is not valid. Correct it, then re-invite.")
            listed = support or in_practice_list(target, actor["practice_id"])
            wait = None if support else await reinvite_wait(conn, target["id"], c.now)
            if wait is None:
                await _reinvite(conn, c, target, by="support" if support else "user_manager")
                if not listed:
                    return web.json_response({"reinvited": True}, status=202)
                target = await store.get_user(conn, target["id"])
                return web.json_response({"reinvited": True, "user": managed_view(target, actor["practice_id"])},
                                         status=202)
            await c.audit(conn, "invitation_sent", outcome="throttled", subject=target["id"],
                          practice_id=target["practice_id"], by="user_manager", reinvite=True, retry_after=wait)
        # Audited (and committed) above; refused here.
        raise ApiError(429, "too_many_requests",
                       "An invitation was sent to this user only minutes ago. Ask them to look for it (also in "
                       "their spam folder), or try again later.",
                       {"retry_after": wait})


async def unlock_practice_user(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn, conn.transaction():
        practice_id = require_manager(await caller(conn, request))
        target = await store.get_user(conn, _user_id(request), for_update=True)
        if target is None or target["practice_id"] != practice_id:
            raise not_found("No such user in your practice.")
        return web.json_response(await _unlock(conn, c, target, by="user_manager"))


# ---- Support -----------------------------------------------------------------------------------------------

async def open_practice(request: web.Request) -> web.Response:
    """Open a practice (its main account) and invite its first user, who becomes its User Manager."""
    c = ctx(request)
    body = await read_model(request, PracticeIn)
    async with c.pool.acquire() as conn, conn.transaction():
        require_support(await caller(conn, request))
        if await store.email_taken(conn, body.first_user.email):
            raise ApiError(409, "email_taken", "Another account already uses this email address.")
        practice = await store.create_practice(conn, name=body.name.strip(), address=body.address,
                                               phone=_phone(body.phone, c, "phone", for_codes=False) or "",
                                               identifiers=body.identifiers,
                                               now=c.now)
        user = await _invite_staff(conn, c, practice, body.first_user)
        await c.audit(conn, "practice_opened", practice_id=practice["id"])
        return web.json_response({"practice": practice_view(practice), "user": managed_view(user)}, status=201)


async def _invite_staff(conn: asyncpg.Connection, c: Ctx, practice: asyncpg.Record, new: NewUser) -> asyncpg.Record:
    user = await create_invited_user(
        conn, settings=c.settings, now=c.now, email=new.email.strip(), practice_id=practice["id"],
        invited_by_practice=practice["id"], first_name=new.first_name.strip(), last_name=new.last_name.strip(),
        phone=_phone(new.phone, c, "phone"), cell_phone=_phone(new.cell_phone, c, "cell_phone"),
        two_step_required=new.two_step_required,
    )
    await send_invitation(conn, settings=c.settings, sealer=c.sealer, now=c.now, user=user, practice=practice,
                          invited_by=c.actor_id)
    await c.audit(conn, "invitation_sent", subject=user["id"], practice_id=practice["id"], by="support")
    return await store.get_user(conn, user["id"])


def _practice_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["practice_id"])
    except ValueError:
        raise not_found() from None


async def invite_practice_staff(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, NewUser)
    async with c.pool.acquire() as conn, conn.transaction():
        require_support(await caller(conn, request))
        practice = await store.get_practice(conn, _practice_id(request))
        if practice is None:
            raise not_found("No such practice.")
        if await store.email_taken(conn, body.email):
            raise ApiError(409, "email_taken", "Another account already uses this email address.")
        user = await _invite_staff(conn, c, practice, body)
        return web.json_response({"user": managed_view(user)}, status=201)


async def list_practices(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn:
        require_support(await caller(conn, request))
        rows = await store.list_practices(conn, name=request.query.get("name") or None)
    return web.json_response({"practices": [practice_view(r) for r in rows]})


async def get_practice(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn:
        require_support(await caller(conn, request))
        practice = await store.get_practice(conn, _practice_id(request))
        if practice is None:
            raise not_found("No such practice.")
        users = await store.list_practice_users(conn, practice["id"])
    return web.json_response({"practice": practice_view(practice), "users": [managed_view(u, practice["id"]) for u in users]})


async def patch_practice(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, PracticePatch)
    async with c.pool.acquire() as conn, conn.transaction():
        require_support(await caller(conn, request))
        fields = {k: getattr(body, k) for k in body.model_fields_set if getattr(body, k) is not None}
        if "phone" in fields:  # E.164, as users' phones are
            fields["phone"] = _phone(fields["phone"], c, "phone", for_codes=False) or ""
        practice = await store.update_practice(conn, _practice_id(request), fields, c.now)
        if practice is None:
            raise not_found("No such practice.")
        await c.audit(conn, "practice_updated", practice_id=practice["id"], fields=sorted(fields))
        return web.json_response({"practice": practice_view(practice)})


USERS_PAGE_MAX = 200


async def find_users(request: web.Request) -> web.Response:
    """Support's search: email and name (parts of them), practice_id, id (the ids audit rows
    carry), locked=true; in email order, `limit` rows (default 100) and `next`, the cursor to
    pass as `after` for the following page (null on the last one). The cursor is a user id, so
    no address ends up in a URL."""
    c = ctx(request)
    locked = request.query.get("locked", "")
    if locked not in ("", "true", "false"):
        raise _bad_query("locked", "true or false")
    name = request.query.get("name", "").strip() or None
    if name is not None and len(name) > 200:
        raise _bad_query("name", "at most 200 characters")
    limit = _query_int(request, "limit", 100)
    if not 1 <= limit <= USERS_PAGE_MAX:
        raise _bad_query("limit", f"1 to {USERS_PAGE_MAX}")
    practice_id, user_id, after = _query_uuid(request, "practice_id"), _query_uuid(request, "id"), _query_uuid(request, "after")
    async with c.pool.acquire() as conn:
        require_support(await caller(conn, request))
        after_email = await store.email_key(conn, after) if after else None
        if after and after_email is None:
            raise _bad_query("after", "no such user: start the search again")
        rows = await store.find_users(conn, email=request.query.get("email") or None, name=name, practice_id=practice_id,
                                      user_id=user_id, locked_only=locked == "true", after_email=after_email, limit=limit + 1)
    page = rows[:limit]
    return web.json_response({"users": [managed_view(r) for r in page],
                              "next": str(page[-1]["id"]) if len(rows) > limit else None})


async def admin_unlock(request: web.Request) -> web.Response:
    c = ctx(request)
    async with c.pool.acquire() as conn, conn.transaction():
        require_support(await caller(conn, request))
        target = await store.get_user(conn, _user_id(request), for_update=True)
        if target is None:
            raise not_found("No such user.")
        return web.json_response(await _unlock(conn, c, target, by="support"))


async def set_role(request: web.Request) -> web.Response:
    """PUT grants, DELETE revokes User Manager. Every session of the user ends (their roles changed)."""
    c = ctx(request)
    role = request.match_info["role"]
    if role != USER_MANAGER:
        raise ApiError(400, "invalid_role", "Only the User Manager role can be granted or revoked here.")
    grant = request.method == "PUT"
    async with c.pool.acquire() as conn, conn.transaction():
        require_support(await caller(conn, request))
        target = await store.get_user(conn, _user_id(request), for_update=True)
        if target is None:
            raise not_found("No such user.")
        if target["practice_id"] is None or SUPPORT in target["roles"]:
            raise ApiError(409, "no_practice", "Only a practice's own users can be User Managers.")
        roles = [r for r in target["roles"] if r != USER_MANAGER] + ([USER_MANAGER] if grant else [])
        if roles != list(target["roles"]):
            target = await store.update_user(conn, target["id"], {"roles": roles}, c.now)
            await c.audit(conn, "role_granted" if grant else "role_revoked", subject=target["id"],
                          practice_id=target["practice_id"], role=USER_MANAGER)
            await revoke_sessions(conn, target["id"], "role_changed")
            # billing-service opens a new User Manager's Stripe customer for the Billing Dept.
            await outbox.add(conn, UserRolesChanged(user_id=target["id"], practice_id=target["practice_id"],
                                                    roles=tuple(roles)))
        return web.json_response({"user": managed_view(target)})


AUDIT_COLUMNS = ("id", "at", "action", "outcome", "actor_id", "subject_id", "practice_id", "ip", "details")


def _audit_row(row: asyncpg.Record) -> dict[str, Any]:
    details = row["details"]
    return {
        "id": row["id"],
        "at": row["at"].isoformat(),
        "action": row["action"],
        "outcome": row["outcome"],
        "actor_id": str(row["actor_id"]) if row["actor_id"] else None,
        "subject_id": str(row["subject_id"]) if row["subject_id"] else None,
        "practice_id": str(row["practice_id"]) if row["practice_id"] else None,
        "ip": row["ip"],
        "details": json.loads(details) if isinstance(details, str) else details,
    }


def _bad_query(name: str, problem: str) -> ApiError:
    return ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": {name: problem}})


def _query_uuid(request: web.Request, name: str) -> uuid.UUID | None:
    value = request.query.get(name)
    try:
        return uuid.UUID(value) if value else None
    except ValueError:
        raise _bad_query(name, "not an id") from None


def _query_time(request: web.Request, name: str) -> datetime | None:
    """An ISO 8601 time with its offset (2026-11-26T09:00:00Z): without one it would be
    read in some time zone nobody stated."""
    value = request.query.get(name)
    try:
        moment = datetime.fromisoformat(value) if value else None
    except ValueError:
        raise _bad_query(name, "not a time") from None
    if moment is not None and moment.utcoffset() is None:
        raise _bad_query(name, "give the time zone, e.g. 2026-11-26T09:00:00Z")
    return moment


def _query_int(request: web.Request, name: str, default: int | None) -> int | None:
    """A whole number that fits the database's bigint (a larger one would fail in the driver)."""
    value = request.query.get(name)
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not -(2**63) <= number < 2**63:
        raise _bad_query(name, "not a number")
    return number


async def read_audit(request: web.Request) -> web.StreamResponse:
    """The audit trail, newest first; `?format=csv` for a spreadsheet. Filters: subject_id,
    actor_id, practice_id, action, since, until, before_id (paging), limit (max 5000)."""
    c = ctx(request)
    limit = min(max(_query_int(request, "limit", 200), 1), 5000)
    before_id = _query_int(request, "before_id", None)
    async with c.pool.acquire() as conn:
        require_support(await caller(conn, request))
        rows = await store.list_audit(
            conn, subject_id=_query_uuid(request, "subject_id"), actor_id=_query_uuid(request, "actor_id"),
            practice_id=_query_uuid(request, "practice_id"), action=request.query.get("action") or None,
            since=_query_time(request, "since"), until=_query_time(request, "until"), before_id=before_id, limit=limit,
        )
    entries = [_audit_row(r) for r in rows]
    if request.query.get("format") == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(AUDIT_COLUMNS)
        for e in entries:
            writer.writerow([_csv_safe(e[k] if k != "details" else json.dumps(e[k], sort_keys=True)) for k in AUDIT_COLUMNS])
        return web.Response(
            text=out.getvalue(), content_type="text/csv",
            headers={"Content-Disposition": 'attachment; filename="audit.csv"'},
        )
    return web.json_response({"entries": entries})


def _csv_safe(value: Any) -> str:
    """No spreadsheet formula injection: a cell starting with = + - @ is prefixed with '."""
    text = "" if value is None else str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@") else text


def add_routes(app: web.Application) -> None:
    app.router.add_get("/practice/users", list_practice_users)
    app.router.add_patch("/practice/users/{user_id}", patch_practice_user)
    app.router.add_post("/practice/users/{user_id}/reinvite", reinvite_practice_user)
    app.router.add_post("/practice/users/{user_id}/unlock", unlock_practice_user)
    app.router.add_get("/admin/practices", list_practices)
    app.router.add_post("/admin/practices", open_practice)
    app.router.add_get("/admin/practices/{practice_id}", get_practice)
    app.router.add_patch("/admin/practices/{practice_id}", patch_practice)
    app.router.add_post("/admin/practices/{practice_id}/users", invite_practice_staff)
    app.router.add_get("/admin/users", find_users)
    app.router.add_post("/admin/users/{user_id}/unlock", admin_unlock)
    app.router.add_put("/admin/users/{user_id}/roles/{role}", set_role)
    app.router.add_delete("/admin/users/{user_id}/roles/{role}", set_role)
    app.router.add_get("/admin/audit", read_audit)
