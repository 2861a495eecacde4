"""The user's own profile: names, phones, time zone, ADA number, specialties, 2-step on/off.

A registered user's new phone number or email address is re-verified before it replaces
the old one: the phone by a code (a "phone_change" ticket for verify-service, then the
proof here), the email by a single-use link sent to the new address. Practice details are
read-only here (Support edits them).

A session alone must not be enough to take the account over: turning 2-step off, a new email
(then "Forgot password" mails the new address) and new phones need the current password in the
same PATCH, checked and counted towards the lockout as POST /me/password does. 2-step goes on
only with a proven phone (its codes would go to a number nobody confirmed), and under the
nist_rev4 password profile goes off only when the password may stand alone (15 characters)."""
from __future__ import annotations

from datetime import timedelta
from typing import Any
from zoneinfo import available_timezones

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared import phones
from msp_shared.errors import ApiError
from msp_shared.mailer import ADDRESS, request_email
from msp_shared.web import read_model, require_user

from . import policy, store, tokens
from .accounts import (
    PHONE_CHANGE, SERVICE, Ctx, check_proof, consume_proof, ctx, public_user, two_step_without_phone, verification,
)
from .http import ACCOUNT_LOCKED, RESET_REQUIRED, check_current_password

_ZONES = frozenset(available_timezones())


class ProfilePatch(BaseModel):
    model_config = ConfigDict(extra="forbid")

    email: str | None = Field(None, min_length=3, max_length=320, pattern=ADDRESS.pattern)
    first_name: str | None = Field(None, min_length=1, max_length=100)
    last_name: str | None = Field(None, min_length=1, max_length=100)
    phone: str | None = Field(None, max_length=40)
    cell_phone: str | None = Field(None, max_length=40)
    time_zone: str | None = Field(None, max_length=64)
    ada_number: str | None = Field(None, max_length=40)
    specialties: list[str] | None = Field(None, max_length=20)
    two_step_required: bool | None = None
    current_password: str | None = Field(
        None, max_length=1024,
        description="Required to turn 2-step verification off, to change the email address, and to change "
                    "phone or cell_phone; ignored otherwise.")


class ProofIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    proof: str = Field(min_length=1, max_length=4096)


class TokenIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    token: str = Field(min_length=1, max_length=200)


def _invalid(field: str, message: str) -> ApiError:
    return ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": {field: message}})


def _normalize_phone(raw: str, region: str, field: str) -> str:
    try:
        return phones.normalize(raw, region=region)
    except phones.InvalidPhone as exc:  # says why: not a number, or a kind codes never go to
        raise _invalid(field, str(exc)) from None


PROFILE_CHANGED = ApiError(409, "profile_changed", "Your profile was changed meanwhile. Reload it and try again.")
# The changes that need the current password, as its field error names them: with a session
# alone, a thief would turn 2-step off and move the email (or the phone the codes go to), then
# take the account with "Forgot password".
GUARDED_NAMES = {"two_step_required": "turn 2-Step Verification off", "email": "change your email address",
                 "phone": "change your phone number", "cell_phone": "change your cell phone number"}


def phone_unproven(user: Any) -> bool:
    """A registered user whose number was never proved by a code (registered with 2-step off,
    or an account from before the proof was kept): requiring 2-step would send password-reset
    codes to it. Invited users prove it when they register."""
    return user["status"] != "invited" and user["phone"] is not None and user["phone_verified_at"] is None


def phone_not_verified(user: Any) -> ApiError:
    return ApiError(
        409, "phone_not_verified",
        "Confirm your phone number first: 2-Step Verification sends its codes to it. Save the number under "
        "Phone in your profile to get a code by text message or call and enter it; then turn 2-Step "
        "Verification on.",
        {"phone_hint": phones.hint(user["phone"])})


def password_needs_two_step(settings: Any) -> ApiError:
    alone = policy.rules(settings.password_policy, two_step=False).min_length
    return ApiError(
        409, "password_needs_two_step",
        f"Your password is shorter than {alone} characters, which is allowed only with 2-Step Verification. "
        f"Change your password to one of at least {alone} characters first, then turn 2-Step Verification off.",
        {"min_length": alone})


def _guarded(c: Ctx, body: ProfilePatch, user: Any) -> list[str]:
    """The changes in this patch that need the current password (values equal to the user's
    are not changes: the form may send every field). Invalid phones answer 400 here."""
    sent = body.model_fields_set
    found = []
    if "two_step_required" in sent and body.two_step_required is False and user["two_step_required"]:
        found.append("two_step_required")
    if "email" in sent and body.email and body.email.strip().lower() != user["email"].lower():
        found.append("email")
    if "phone" in sent and body.phone:
        if _normalize_phone(body.phone, c.settings.phone_default_region, "phone") != user["phone"]:
            found.append("phone")
    if "cell_phone" in sent:
        number = _normalize_phone(body.cell_phone, c.settings.phone_default_region, "cell_phone") if body.cell_phone else None
        if number != user["cell_phone"]:
            found.append("cell_phone")
    return found


async def _check_current_password(conn: Any, c: Ctx, user: Any, password: str | None, guarded: list[str]) -> str:
    """check_current_password for a guarded change; a missing password is audited too (a
    session trying those changes without it is what a thief's looks like)."""
    wanted = " or ".join(GUARDED_NAMES[f] for f in guarded)
    if not password:
        async with conn.transaction():
            await c.audit(conn, "profile_change", outcome="refused", subject=user["id"], practice_id=user["practice_id"],
                          fields=guarded, reason="current_password_missing")
    return await check_current_password(conn, c, user, password, action="profile_change",
                                        missing=f"Enter your current password to {wanted}.")


async def patch_me(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, ProfilePatch)
    sent = body.model_fields_set
    extra: dict = {}
    async with c.pool.acquire() as conn:
        user = await store.get_user(conn, ident.user_id)
        if user is None:
            raise ApiError(401, "not_signed_in", "Please sign in.")
        guarded = _guarded(c, body, user)
        checked_hash = await _check_current_password(conn, c, user, body.current_password, guarded) if guarded else None
        refusal = None
        async with conn.transaction():
            user = await store.get_user(conn, user["id"], for_update=True)
            if user is None:
                raise ApiError(401, "not_signed_in", "Please sign in.")
            if _guarded(c, body, user):
                # Checked above, on the row as it was: it must still have that password.
                if checked_hash is None or user["password_hash"] != checked_hash:
                    raise PROFILE_CHANGED
                if user["locked_at"] is not None:
                    raise ACCOUNT_LOCKED
                if user["password_reset_required"]:
                    raise RESET_REQUIRED
                if user["password_single_factor_ok"] is None:  # known again: the user typed it
                    await store.record_single_factor_ok(conn, user["id"], checked_hash,
                                                        policy.single_factor_ok(body.current_password))
            changes: dict = {}
            for name in ("first_name", "last_name"):
                if name in sent and getattr(body, name) is not None:
                    changes[name] = getattr(body, name).strip()
            if "time_zone" in sent and body.time_zone is not None:
                if body.time_zone not in _ZONES:
                    raise _invalid("time_zone", "Choose a time zone from the list.")
                changes["time_zone"] = body.time_zone
            if "ada_number" in sent:
                changes["ada_number"] = (body.ada_number or "").strip() or None
            if "specialties" in sent:
                changes["specialties"] = [s.strip()[:100] for s in body.specialties or [] if s.strip()]
            if "cell_phone" in sent:
                changes["cell_phone"] = _normalize_phone(body.cell_phone, c.settings.phone_default_region, "cell_phone") if body.cell_phone else None
            if "two_step_required" in sent and body.two_step_required is not None and body.two_step_required != user["two_step_required"]:
                if body.two_step_required and two_step_without_phone(user):
                    raise ApiError(422, "phone_required", "Add and confirm your phone number first: the codes are sent to it.")
                if body.two_step_required and phone_unproven(user):
                    refusal, reason = phone_not_verified(user), "phone_not_verified"
                elif not body.two_step_required and user["password_hash"] is not None and not policy.two_step_off_allowed(
                        c.settings.password_policy, policy.single_factor_ok(body.current_password or "")):
                    # The password was just checked: its own length decides, known or not before.
                    refusal, reason = password_needs_two_step(c.settings), "password_needs_two_step"
                if refusal is not None:
                    await c.audit(conn, "two_step_changed", outcome="refused", subject=user["id"],
                                  practice_id=user["practice_id"], required=body.two_step_required, reason=reason)
                else:
                    changes["two_step_required"] = body.two_step_required
                    await c.audit(conn, "two_step_changed", subject=user["id"], practice_id=user["practice_id"],
                                  required=body.two_step_required)
            if refusal is None:
                await _phone_and_email(conn, c, body, user, changes, extra)
                if changes:
                    user = await store.update_user(conn, user["id"], changes, c.now)
                practice = await store.get_practice(conn, user["practice_id"])
                return web.json_response({"user": public_user(c.settings, user, practice, c.now), **extra})
    # Audited (and committed) above, nothing else changed; refused here.
    raise refusal


async def _phone_and_email(conn: Any, c: Ctx, body: ProfilePatch, user: Any, changes: dict, extra: dict) -> None:
    """A new phone (or the current one, never proved) gets a code ticket; a new email a link."""
    sent = body.model_fields_set
    if "phone" in sent and body.phone:
        phone = _normalize_phone(body.phone, c.settings.phone_default_region, "phone")
        if phone != user["phone"] or user["phone_verified_at"] is None:
            # Not changed yet: the user proves the number first (POST /me/phone). The number
            # on file, never proved, is proved the same way (then 2-step can go on).
            extra["verification"] = verification(c, user["id"], phone, PHONE_CHANGE)
            await c.audit(conn, "verification_ticket_issued", subject=user["id"], practice_id=user["practice_id"],
                          purpose=PHONE_CHANGE)
    if "email" in sent and body.email and body.email.strip().lower() != user["email"].lower():
        new_email = body.email.strip()
        # Each request mails an address the user chose: bounded, so the portal is nobody's mailer.
        recent = await store.count_tokens_since(conn, user["id"], "email_change", c.now - timedelta(hours=1))
        if recent >= c.settings.email_change_requests_per_hour:
            raise ApiError(429, "too_many_requests", "Too many new email addresses in the last hour. Try again later.",
                           {"retry_after": 3600})
        raw, digest = tokens.new_token()
        # Made (and counted) for a taken address too, but never sent there: only the newest
        # request can be confirmed, so this also ends any earlier link.
        await store.create_token(conn, kind="email_change", user_id=user["id"], digest=digest, now=c.now,
                                 ttl=timedelta(hours=c.settings.email_change_ttl_hours))
        changes["pending_email"] = new_email
        if await store.email_taken(conn, new_email, except_user=user["id"]):
            # The same answer as for a free address, so that nobody learns through PATCH /me
            # which addresses have accounts. The address's owner is told instead; no link.
            await request_email(
                conn, c.sealer, template="generic_notice", to=new_email,
                params={"title": "Your email address was entered on SecurePractice",
                        "text": "Another SecurePractice user asked to use this address for their account. It already "
                                "belongs to an account, so nothing was changed. If this was you, sign in with "
                                "this address instead. If not, you need not do anything."},
                requested_by=SERVICE,
            )
            await c.audit(conn, "email_change_requested", outcome="refused", subject=user["id"],
                          practice_id=user["practice_id"], reason="email_taken")
        else:
            await request_email(
                conn, c.sealer, template="generic_notice", to=new_email,
                secrets={"link": c.link(f"confirm-email?token={raw}")},
                params={"title": "Confirm your new SecurePractice email address",
                        "text": "Open this link while signed in to SecurePractice to use this address for your account."},
                requested_by=SERVICE,
            )
            await c.audit(conn, "email_change_requested", subject=user["id"], practice_id=user["practice_id"])
        extra["email_confirmation_sent"] = True


async def confirm_phone(request: web.Request) -> web.Response:
    """The proof that the user holds the new number (ticket from PATCH /me): it replaces the old one."""
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, ProofIn)
    async with c.pool.acquire() as conn, conn.transaction():
        user = await store.get_user(conn, ident.user_id, for_update=True)
        if user is None:
            raise ApiError(401, "not_signed_in", "Please sign in.")
        # The proof names the number that was proven; it must be this user's phone-change proof.
        claims = check_proof(c, body.proof, user_id=user["id"], phone=None, purpose=PHONE_CHANGE)
        await consume_proof(conn, c, claims, user["id"])
        same = claims["phone"] == user["phone"]
        user = await store.update_user(conn, user["id"], {"phone": claims["phone"], "phone_from_inviter": False,
                                                          "phone_verified_at": c.now}, c.now)
        if same:  # the number on file, proved at last
            await c.audit(conn, "phone_verified", subject=user["id"], practice_id=user["practice_id"], purpose=PHONE_CHANGE)
        else:
            await c.audit(conn, "profile_phone_changed", subject=user["id"], practice_id=user["practice_id"])
        practice = await store.get_practice(conn, user["practice_id"])
        return web.json_response({"user": public_user(c.settings, user, practice, c.now)})


async def confirm_email(request: web.Request) -> web.Response:
    """The link sent to the new address, opened while signed in: the new address replaces the old."""
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, TokenIn)
    async with c.pool.acquire() as conn, conn.transaction():
        token = await store.live_token(conn, "email_change", tokens.digest(body.token), c.now, for_update=True)
        if token is None or not tokens.same(token["digest"], body.token) or str(token["user_id"]) != ident.user_id:
            raise ApiError(404, "link_invalid", "This confirmation link is invalid, used or expired.")
        user = await store.get_user(conn, token["user_id"], for_update=True)
        new_email = user["pending_email"]
        if not new_email or await store.email_taken(conn, new_email, except_user=user["id"]):
            raise ApiError(409, "email_taken", "Another account already uses this email address.")
        await store.use_token(conn, token["id"], c.now)
        old_email = user["email"]
        user = await store.update_user(conn, user["id"], {"email": new_email, "pending_email": None}, c.now)
        await request_email(
            conn, c.sealer, template="generic_notice", to=old_email,
            params={"title": "Your SecurePractice email address was changed",
                    "text": "The email address of your SecurePractice account was changed. If this was not you, contact your practice's User Manager or SecurePractice Support."},
            requested_by=SERVICE,
        )
        await c.audit(conn, "profile_email_changed", subject=user["id"], practice_id=user["practice_id"])
        practice = await store.get_practice(conn, user["practice_id"])
        return web.json_response({"user": public_user(c.settings, user, practice, c.now)})


def add_routes(app: web.Application) -> None:
    app.router.add_patch("/me", patch_me)
    app.router.add_post("/me/phone", confirm_phone)
    app.router.add_post("/me/email/confirm", confirm_email)
