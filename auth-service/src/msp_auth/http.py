"""HTTP handlers for signing in and everything a user does for themselves: login, forgot and
reset password, change password, invitations and registration (with 2-step), profile.

Routes have no /api/v1 prefix: the gateway maps /api/v1/<path> here. Anonymous routes still
need the gateway's (anonymous) identity header, which carries the client's ip for the audit."""
from __future__ import annotations

import uuid
from datetime import timedelta

import asyncpg
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared import outbox, phones
from msp_shared.errors import ApiError
from msp_shared.events import UserLocked, UserRegistered
from msp_shared.identity import Identity
from msp_shared.mailer import request_email
from msp_shared.web import read_model, require_user

from . import lockout, policy, store, terms, tokens
from .accounts import (
    PASSWORD_RESET, REGISTRATION, SERVICE, Ctx, PhoneNotOnFile, check_proof, consume_proof, ctx, password_violations,
    phone_to_prove, public_user, refuse, revoke_sessions, rules, session_answer, signed_in, two_step_applies, verification,
)
from .keys import AUTH_SETTINGS

INVALID_CREDENTIALS = ApiError(401, "invalid_credentials", "The email or password is not right.")
ACCOUNT_LOCKED = ApiError(
    423, "account_locked",
    "Your account is locked after too many unsuccessful attempts. Reset your password to unlock it. "
    "You may also notify PBHS Support of your account's email address so they can assist you with unlocking "
    "your account and resetting your password.",
)
RESET_REQUIRED = ApiError(
    423, "password_reset_required", "Your account was unlocked; choose a new password with \"Forgot password\" to sign in."
)
RESET_LINK_INVALID = ApiError(404, "reset_link_invalid", "This password reset link is invalid, used or expired. Ask for a new one.")
INVITATION_INVALID = ApiError(404, "invitation_invalid", "This invitation link is invalid, used or expired. Ask for a new one.")
FORGOT_ANSWER = {"message": "If an account uses this address, we have sent it a link to reset the password."}

EMAIL = Field(min_length=3, max_length=320)
PASSWORD = Field(min_length=1, max_length=1024)  # the policy reports the real limits; this bounds the work


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=False)


class LoginIn(Model):
    email: str = EMAIL
    password: str = PASSWORD


class ForgotIn(Model):
    email: str = EMAIL


class TokenIn(Model):
    token: str = Field(min_length=1, max_length=200)


class ResetIn(Model):
    token: str = Field(min_length=1, max_length=200)
    password: str = PASSWORD
    proof: str | None = Field(None, max_length=4096)


class ChangePasswordIn(Model):
    current_password: str = PASSWORD
    new_password: str = PASSWORD


class RegistrationIn(Model):
    token: str = Field(min_length=1, max_length=200)
    first_name: str = Field(min_length=1, max_length=100)
    last_name: str = Field(min_length=1, max_length=100)
    password: str = PASSWORD
    phone: str | None = Field(None, max_length=40)
    terms_version: str = Field(max_length=40)
    accept_terms: bool


class ProofIn(Model):
    proof: str = Field(min_length=1, max_length=4096)


class TicketIn(Model):
    phone: str | None = Field(None, max_length=40)
    current_password: str | None = Field(None, max_length=1024, description="Required to use another number.")


# ---- login and lockout --------------------------------------------------------------------------

async def count_wrong_password(conn: asyncpg.Connection, c: Ctx, user_id: uuid.UUID, action: str) -> None:
    """Count a wrong password for this account (login or change password); the Nth locks it.
    Call inside a transaction that commits even though the request then fails."""
    user = await store.get_user(conn, user_id, for_update=True)
    failure = lockout.after_wrong_password(
        user["failed_logins"], locked=user["locked_at"] is not None, threshold=c.settings.lockout_threshold
    )
    await store.record_wrong_password(conn, user_id, failure.failures, c.now if failure.locks_now else None)
    await c.audit(conn, action, outcome="failed", subject=user_id, practice_id=user["practice_id"],
                  actor=c.actor_id, reason="wrong_password", consecutive_failures=failure.failures)
    if failure.locks_now:
        await c.audit(conn, "account_locked", subject=user_id, practice_id=user["practice_id"], actor=None,
                      consecutive_failures=failure.failures)
        await request_email(conn, c.sealer, template="account_locked", to=user["email"],
                            secrets={"link": c.link("forgot")}, requested_by=SERVICE)
        await outbox.add(conn, UserLocked(user_id=user_id))
        await revoke_sessions(conn, user_id, "locked")


WRONG_CURRENT_PASSWORD = ApiError(403, "wrong_current_password", "Your current password is not right.")


async def check_current_password(conn: asyncpg.Connection, c: Ctx, user: asyncpg.Record, password: str | None, *,
                                 action: str, missing: str) -> str:
    """The current password that a change of the signed-in user's account needs, verified off
    the event loop; a wrong one counts towards the lockout (committed before the refusal), a
    missing one is bad input (`missing` says what for). Returns the hash it matched: the
    caller re-checks it on the locked row."""
    if not password:
        raise ApiError(400, "invalid_input", "Some fields are missing or invalid.", {"fields": {"current_password": missing}})
    ok, _ = await c.hasher.verify(user["password_hash"], password)
    if not ok:
        async with conn.transaction():
            await count_wrong_password(conn, c, user["id"], action)
        raise WRONG_CURRENT_PASSWORD
    return user["password_hash"]


async def login(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, LoginIn)
    async with c.pool.acquire() as conn:
        user = await store.get_user_by_email(conn, body.email)
    # Unknown email or no password yet: verify against a dummy hash, so it takes as long.
    ok, needs_rehash = await c.hasher.verify(user["password_hash"] if user else None, body.password)
    new_hash = await c.hasher.hash(body.password) if ok and needs_rehash else None
    result = lockout.outcome(
        password_ok=ok,
        locked=bool(user and user["locked_at"] is not None),
        reset_required=bool(user and user["password_reset_required"]),
    )
    if result is lockout.LoginOutcome.OK and user is not None and not new_hash:
        # The common case in one statement (no transaction round trips): count the login and
        # audit it only if the row, locked, still has this password and no lock or reset landed
        # while hashing; otherwise fall through to the full path below, which refuses.
        async with c.pool.acquire() as conn:
            signed = await store.sign_in(conn, user["id"], user["password_hash"], now=c.now, ip=c.ip)
        if signed is not None:
            return signed_in(c, *signed)
    async with c.pool.acquire() as conn:
        async with conn.transaction():
            if user is None or user["password_hash"] is None:
                await c.audit(conn, "login", outcome="failed", actor=None, subject=user["id"] if user else None,
                              reason="unknown_account" if user is None else "not_registered")
            elif result is lockout.LoginOutcome.INVALID:
                await count_wrong_password(conn, c, user["id"], "login")
            else:
                # Re-read under lock: a lock, unlock or new password may have landed while hashing.
                fresh = await store.get_user(conn, user["id"], for_update=True)
                if fresh["password_hash"] != user["password_hash"]:
                    result = lockout.LoginOutcome.INVALID
                else:
                    result = lockout.outcome(password_ok=True, locked=fresh["locked_at"] is not None,
                                             reset_required=fresh["password_reset_required"])
            if user is not None and user["password_hash"] is not None and result in (
                lockout.LoginOutcome.LOCKED, lockout.LoginOutcome.RESET_REQUIRED
            ):
                await c.audit(conn, "login", outcome="refused", actor=None, subject=user["id"],
                              practice_id=user["practice_id"], reason=result.value)
            elif result is lockout.LoginOutcome.OK and user is not None:
                await store.record_login(conn, user["id"], c.now)
                if new_hash:
                    await store.rehash_password(conn, user["id"], user["password_hash"], new_hash)
                await c.audit(conn, "login", actor=user["id"], subject=user["id"], practice_id=user["practice_id"])
                user = await store.get_user(conn, user["id"])
                return await session_answer(conn, c, user)
    # Raised after the commit: the failure count and the audit row must stay.
    if result is lockout.LoginOutcome.LOCKED and user is not None and user["password_hash"] is not None:
        raise ACCOUNT_LOCKED
    if result is lockout.LoginOutcome.RESET_REQUIRED and user is not None and user["password_hash"] is not None:
        raise RESET_REQUIRED
    raise INVALID_CREDENTIALS


# ---- forgot and reset password -----------------------------------------------------------------

async def forgot_password(request: web.Request) -> web.Response:
    """Same answer whether or not the address has an account; a link only to registered ones."""
    c = ctx(request)
    body = await read_model(request, ForgotIn)
    async with c.pool.acquire() as conn, conn.transaction():
        user = await store.get_user_by_email(conn, body.email)
        if user is None or user["password_hash"] is None:
            await c.audit(conn, "password_reset_requested", outcome="no_account", actor=None,
                          subject=user["id"] if user else None)
        elif await store.count_tokens_since(conn, user["id"], "password_reset", c.now - timedelta(hours=1)) >= c.settings.reset_requests_per_hour:
            await c.audit(conn, "password_reset_requested", outcome="throttled", actor=None, subject=user["id"],
                          practice_id=user["practice_id"])
        else:
            raw, digest = tokens.new_token()
            await store.create_token(conn, kind="password_reset", user_id=user["id"], digest=digest, now=c.now,
                                     ttl=timedelta(minutes=c.settings.reset_ttl_minutes))
            await request_email(conn, c.sealer, template="password_reset", to=user["email"],
                                secrets={"link": c.link(f"reset?token={raw}")}, requested_by=SERVICE)
            await c.audit(conn, "password_reset_requested", actor=None, subject=user["id"], practice_id=user["practice_id"])
    return web.json_response(FORGOT_ANSWER, status=202)


async def _reset_token_user(conn: asyncpg.Connection, c: Ctx, token: str, *, for_update: bool = False) -> tuple[asyncpg.Record, asyncpg.Record]:
    row = await store.live_token(conn, "password_reset", tokens.digest(token), c.now, for_update=for_update)
    if row is None or not tokens.same(row["digest"], token):
        raise RESET_LINK_INVALID
    user = await store.get_user(conn, row["user_id"], for_update=for_update)
    if user is None:
        raise RESET_LINK_INVALID
    return row, user


async def reset_verification(request: web.Request) -> web.Response:
    """What the reset form needs: the rules, and where 2-step applies a ticket to send a code."""
    c = ctx(request)
    body = await read_model(request, TokenIn)
    async with c.pool.acquire() as conn:
        _, user = await _reset_token_user(conn, c, body.token)
        answer: dict = {"two_step": two_step_applies(user), "password_rules": rules(c.settings, user).as_dict()}
        if two_step_applies(user):
            answer["verification"] = verification(c, user["id"], user["phone"], PASSWORD_RESET)
            await c.audit(conn, "verification_ticket_issued", actor=None, subject=user["id"],
                          practice_id=user["practice_id"], purpose=PASSWORD_RESET)
    return web.json_response(answer)


async def reset_password(request: web.Request) -> web.Response:
    """Email link (+ phone proof where 2-step applies) and a new password: unlocks the account,
    ends every session, and signs the user in."""
    c = ctx(request)
    body = await read_model(request, ResetIn)
    async with c.pool.acquire() as conn:
        _, user = await _reset_token_user(conn, c, body.token)
        claims = None
        if two_step_applies(user):
            claims = check_proof(c, body.proof, user_id=user["id"], phone=user["phone"], purpose=PASSWORD_RESET)
        violations = await password_violations(c, conn, user, body.password)
        if violations:
            raise refuse(violations)
        new_hash = await c.hasher.hash(body.password)
        async with conn.transaction():
            token, user = await _reset_token_user(conn, c, body.token, for_update=True)  # a concurrent reset lost
            if claims is not None:
                await consume_proof(conn, c, claims, user["id"])
            was_locked = user["locked_at"] is not None or user["password_reset_required"]
            await store.use_token(conn, token["id"], c.now)
            await store.revoke_tokens(conn, user["id"], "password_reset", c.now)
            await store.set_password(conn, user["id"], new_hash, c.now,
                                     single_factor_ok=policy.single_factor_ok(body.password))
            if claims is not None and user["status"] == "registered_unverified":
                await store.update_user(conn, user["id"], {"status": "verified", "phone_verified_at": c.now}, c.now)
                await outbox.add(conn, UserRegistered(user_id=user["id"], practice_id=user["practice_id"],
                                                      roles=tuple(user["roles"])))
            await c.audit(conn, "password_reset", actor=user["id"], subject=user["id"], practice_id=user["practice_id"],
                          two_step=claims is not None, unlocked=was_locked)
            if was_locked:
                await c.audit(conn, "account_unlocked", actor=user["id"], subject=user["id"],
                              practice_id=user["practice_id"], by="password_reset")
            await revoke_sessions(conn, user["id"], "password_reset")
            user = await store.get_user(conn, user["id"])
            return await session_answer(conn, c, user)


async def change_password(request: web.Request) -> web.Response:
    """Signed in: current password and a new one. Ends every session; answers a fresh grant."""
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, ChangePasswordIn)
    async with c.pool.acquire() as conn:
        user = await store.get_user(conn, ident.user_id)
        if user is None:
            raise ApiError(401, "not_signed_in", "Please sign in.")
        await check_current_password(conn, c, user, body.current_password, action="password_change",
                                     missing="Enter your current password.")
        violations = await password_violations(c, conn, user, body.new_password)
        if violations:
            raise refuse(violations)
        new_hash = await c.hasher.hash(body.new_password)
        async with conn.transaction():
            user = await store.get_user(conn, user["id"], for_update=True)
            if user["locked_at"] is not None:
                raise ACCOUNT_LOCKED
            await store.set_password(conn, user["id"], new_hash, c.now,
                                     single_factor_ok=policy.single_factor_ok(body.new_password))
            await c.audit(conn, "password_changed", subject=user["id"], practice_id=user["practice_id"])
            await revoke_sessions(conn, user["id"], "password_changed")
            user = await store.get_user(conn, user["id"])
            return await session_answer(conn, c, user)


# ---- invitations and registration --------------------------------------------------------------

async def _invitation(conn: asyncpg.Connection, c: Ctx, token: str, *, for_update: bool = False) -> tuple[asyncpg.Record, asyncpg.Record]:
    row = await store.live_token(conn, "invitation", tokens.digest(token), c.now, for_update=for_update)
    if row is None or not tokens.same(row["digest"], token):
        raise INVITATION_INVALID
    user = await store.get_user(conn, row["user_id"], for_update=for_update)
    if user is None or user["status"] != "invited":
        raise INVITATION_INVALID
    return row, user


async def _phone_to_prove(conn: asyncpg.Connection, c: Ctx, user: asyncpg.Record, typed: str | None) -> str | None:
    """The registration code's number (accounts.phone_to_prove), with the errors in words:
    the inviting practice corrects a wrong number in Manage Users until the phone is proven."""
    try:
        number = phones.normalize(typed, region=c.settings.phone_default_region) if typed else None
    except phones.InvalidPhone as exc:  # says why: not a number, or a kind codes never go to
        raise ApiError(400, "invalid_input", "Some fields are missing or invalid.",
                       {"fields": {"phone": str(exc)}}) from None
    try:
        return phone_to_prove(user, number)
    except PhoneNotOnFile:
        practice = await store.get_practice(conn, user["invited_by_practice"] or user["practice_id"])
        who = practice["name"] if practice else "the practice that invited you"
        raise ApiError(422, "phone_not_on_file",
                       f"For your security, the code goes to the number {who} has on file for you "
                       f"({phones.hint(user['phone'])}). If that number is wrong, ask them to correct it, then "
                       + ("follow your invitation link again." if user["status"] == "invited" else "sign in again."),
                       {"phone_hint": phones.hint(user["phone"])}) from None


async def get_invitation(request: web.Request) -> web.Response:
    """What the registration form shows: who is invited, by which practice, and the rules."""
    c = ctx(request)
    token = request.match_info["token"]
    async with c.pool.acquire() as conn:
        row, user = await _invitation(conn, c, token)
        practice = await store.get_practice(conn, row["practice_id"] or user["invited_by_practice"] or user["practice_id"])
    return web.json_response({
        "email": user["email"],
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "practice_name": practice["name"] if practice else None,
        "two_step_required": user["two_step_required"],
        "phone_hint": phones.hint(user["phone"]),
        "terms_version": c.settings.terms_version,
        # Registration asks for a phone where 2-step is on, so the rules are those with 2-step.
        "password_rules": policy.rules(c.settings.password_policy, two_step=bool(user["two_step_required"]),
                                       history_size=c.settings.password_history_size).as_dict(),
        "expires_at": row["expires_at"].isoformat(),
    })


async def register(request: web.Request) -> web.Response:
    c = ctx(request)
    body = await read_model(request, RegistrationIn)
    async with c.pool.acquire() as conn:
        _, user = await _invitation(conn, c, body.token)
        if not body.accept_terms or body.terms_version != c.settings.terms_version:
            raise ApiError(422, "terms_not_accepted", "Please read and accept the current Terms of Use.",
                           {"terms_version": c.settings.terms_version})
        phone = await _phone_to_prove(conn, c, user, body.phone)
        two_step = bool(user["two_step_required"])
        if two_step and not phone:
            raise ApiError(422, "phone_required", "Enter the phone number we should send your verification code to.")
        violations = await password_violations(c, conn, user, body.password, two_step=two_step)
        if violations:
            raise refuse(violations)
        new_hash = await c.hasher.hash(body.password)
        async with conn.transaction():
            token, user = await _invitation(conn, c, body.token, for_update=True)
            # Again, on the locked row: the inviter may have changed the number or 2-step meanwhile.
            phone = await _phone_to_prove(conn, c, user, body.phone)
            two_step = bool(user["two_step_required"])
            if two_step and not phone:
                raise ApiError(422, "phone_required", "Enter the phone number we should send your verification code to.")
            await store.use_token(conn, token["id"], c.now)
            await store.update_user(conn, user["id"], {
                "first_name": body.first_name.strip(),
                "last_name": body.last_name.strip(),
                "phone": phone,
                "phone_from_inviter": bool(user["phone_from_inviter"] and phone == user["phone"]),
                "status": "registered_unverified" if two_step else "verified",
                "terms_version": body.terms_version,
                "terms_accepted_at": c.now,
                "registered_at": c.now,
            }, c.now)
            await store.set_password(conn, user["id"], new_hash, c.now,
                                     single_factor_ok=policy.single_factor_ok(body.password))
            await c.audit(conn, "registration", actor=user["id"], subject=user["id"], practice_id=user["practice_id"],
                          two_step=two_step, terms_version=body.terms_version)
            extra = {}
            if two_step:
                extra["verification"] = verification(c, user["id"], phone, REGISTRATION)
                await c.audit(conn, "verification_ticket_issued", actor=user["id"], subject=user["id"],
                              practice_id=user["practice_id"], purpose=REGISTRATION)
            else:
                await outbox.add(conn, UserRegistered(user_id=user["id"], practice_id=user["practice_id"],
                                                      roles=tuple(user["roles"])))
            user = await store.get_user(conn, user["id"])
            return await session_answer(conn, c, user, status=201, **extra)


async def verification_ticket(request: web.Request) -> web.Response:
    """A new registration ticket for a signed-in user who has not proved their phone yet
    (after signing in again, or to use another number)."""
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, TicketIn)
    async with c.pool.acquire() as conn:
        user = await store.get_user(conn, ident.user_id)
        # Another number takes the password too: with the session alone, whoever found it open
        # would make their own phone the account's, and every reset code would go to them.
        checked = None
        if user is not None and user["status"] == "registered_unverified":
            wanted = await _phone_to_prove(conn, c, user, body.phone)
            if wanted != user["phone"]:
                checked = await check_current_password(conn, c, user, body.current_password, action="verification_ticket",
                                                       missing="Enter your password to use another number.")
        async with conn.transaction():
            return await _issue_ticket(conn, c, ident, body, checked)


async def _issue_ticket(conn: asyncpg.Connection, c: Ctx, ident: Identity, body: TicketIn, checked: str | None) -> web.Response:
    """The ticket, on the locked row; another number only with the password checked before."""
    user = await store.get_user(conn, ident.user_id, for_update=True)
    if user is None or user["status"] != "registered_unverified":
        raise ApiError(409, "already_verified", "Your phone number is already verified.")
    phone = await _phone_to_prove(conn, c, user, body.phone)
    if phone != user["phone"]:
        if checked is None or checked != user["password_hash"] or user["locked_at"] is not None:
            raise ApiError(409, "profile_changed", "Your account changed meanwhile. Sign in again and retry.")
        await store.update_user(conn, user["id"], {"phone": phone, "phone_from_inviter": False}, c.now)
        await c.audit(conn, "profile_phone_changed", subject=user["id"], practice_id=user["practice_id"],
                      before_verification=True)
    if not phone:
        raise ApiError(422, "phone_required", "Enter the phone number we should send your verification code to.")
    await c.audit(conn, "verification_ticket_issued", subject=user["id"], practice_id=user["practice_id"],
                  purpose=REGISTRATION)
    return web.json_response({"verification": verification(c, user["id"], phone, REGISTRATION)})


async def complete_verification(request: web.Request) -> web.Response:
    """The proof from verify-service that the user holds the phone: fully registered."""
    c = ctx(request)
    ident = require_user(request)
    body = await read_model(request, ProofIn)
    async with c.pool.acquire() as conn, conn.transaction():
        user = await store.get_user(conn, ident.user_id, for_update=True)
        if user is None or user["status"] != "registered_unverified":
            raise ApiError(409, "already_verified", "Your phone number is already verified.")
        claims = check_proof(c, body.proof, user_id=user["id"], phone=user["phone"], purpose=REGISTRATION)
        await consume_proof(conn, c, claims, user["id"])
        await store.update_user(conn, user["id"], {"status": "verified", "phone_verified_at": c.now}, c.now)
        await c.audit(conn, "phone_verified", subject=user["id"], practice_id=user["practice_id"], purpose=REGISTRATION)
        await outbox.add(conn, UserRegistered(user_id=user["id"], practice_id=user["practice_id"], roles=tuple(user["roles"])))
        user = await store.get_user(conn, user["id"])
        return await session_answer(conn, c, user)


# ---- profile -----------------------------------------------------------------------------------

async def get_me(request: web.Request) -> web.Response:
    c = ctx(request)
    ident = require_user(request)
    async with c.pool.acquire() as conn:
        user = await store.get_user(conn, ident.user_id)
        if user is None:
            raise ApiError(401, "not_signed_in", "Please sign in.")
        practice = await store.get_practice(conn, user["practice_id"])
    # The rules, so the change-password form lists the ones that apply to this user.
    return web.json_response({"user": public_user(c.settings, user, practice, c.now),
                              "restriction": ident.extra.get("restriction"),
                              "password_rules": rules(c.settings, user).as_dict()})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/session", login)
    app.router.add_post("/password/forgot", forgot_password)
    app.router.add_post("/password/reset/verification", reset_verification)
    app.router.add_post("/password/reset", reset_password)
    app.router.add_post("/me/password", change_password)
    app.router.add_get("/invitations/{token}", get_invitation)
    app.router.add_post("/registrations", register)
    app.router.add_post("/registrations/verify", complete_verification)
    app.router.add_post("/me/verification", complete_verification)
    app.router.add_post("/me/verification/ticket", verification_ticket)
    app.router.add_get("/me", get_me)
    # Terms of Use (public, read by the registration form). Checked here, at start: the
    # version registration asks users to accept must have its text shipped in the package.
    terms.require(app[AUTH_SETTINGS].terms_version)
    app.router.add_get("/terms", terms.current_terms)
    app.router.add_get("/terms/{version}", terms.terms_version)
