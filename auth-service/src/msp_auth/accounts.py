"""Pieces the request handlers share: the per-request context, what a grant and a public
profile look like, 2-step tickets and proofs, and checking and storing a new password."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import asyncpg
from aiohttp import web

from msp_shared import outbox, signed
from msp_shared.clock import Clock
from msp_shared.errors import ApiError
from msp_shared.events import SessionsRevoked
from msp_shared.identity import Identity
from msp_shared.phones import hint
from msp_shared.seal import Sealer
from msp_shared.web import CLOCK, POOL, current_identity

from . import expiry, policy, store
from .config import AuthSettings
from .hashing import Hasher
from .keys import AUTH_SETTINGS, BLOCKLIST, HASHER, SEALER

SERVICE = "auth"

# Session restrictions the gateway carries in Identity.extra["restriction"].
PASSWORD_EXPIRED = "password_expired"
VERIFICATION_REQUIRED = "verification_required"

# 2-step purposes (the ticket's and proof's "purpose" claim).
REGISTRATION = "registration"
PASSWORD_RESET = "password_reset"
PHONE_CHANGE = "phone_change"


@dataclass
class Ctx:
    """What a handler needs from the app, plus the caller and the time of this request."""

    settings: AuthSettings
    clock: Clock
    pool: asyncpg.Pool
    hasher: Hasher
    sealer: Sealer
    blocklist: frozenset[str]
    identity: Identity
    now: datetime

    @property
    def ip(self) -> str | None:
        return self.identity.ip

    @property
    def actor_id(self) -> str | None:
        return self.identity.user_id

    def link(self, fragment: str) -> str:
        return self.settings.public_url.rstrip("/") + "/#/" + fragment.lstrip("/")

    async def audit(self, conn: asyncpg.Connection, action: str, *, outcome: str = "ok", subject: Any = None,
                    actor: Any = "caller", practice_id: Any = None, **details: Any) -> None:
        await store.audit(
            conn,
            at=self.now,
            action=action,
            outcome=outcome,
            actor_id=self.actor_id if actor == "caller" else actor,
            subject_id=subject,
            practice_id=practice_id,
            ip=self.ip,
            details=details,
        )


def ctx(request: web.Request) -> Ctx:
    app = request.app
    clock = app[CLOCK]
    return Ctx(
        settings=app[AUTH_SETTINGS],
        clock=clock,
        pool=app[POOL],
        hasher=app[HASHER],
        sealer=app[SEALER],
        blocklist=app[BLOCKLIST],
        identity=current_identity(request),
        now=clock.now(),
    )


# ---- grants and profiles ----------------------------------------------------------------------

def rules(settings: AuthSettings, user: asyncpg.Record | None = None) -> policy.Rules:
    return policy.rules(settings.password_policy, two_step=bool(user and two_step_applies(user)),
                        history_size=settings.password_history_size)


def password_expires_at(settings: AuthSettings, user: asyncpg.Record) -> datetime | None:
    if user["password_changed_at"] is None or not rules(settings, user).expires:
        return None
    return expiry.expires_at(user["password_changed_at"], settings.password_max_age_days)


def restriction_for(settings: AuthSettings, user: asyncpg.Record, now: datetime) -> str | None:
    if user["status"] == "registered_unverified" and user["two_step_required"]:
        return VERIFICATION_REQUIRED
    expires = password_expires_at(settings, user)
    if expires is not None and now >= expires:
        return PASSWORD_EXPIRED
    return None


def grant(settings: AuthSettings, user: asyncpg.Record, now: datetime) -> dict[str, Any]:
    """What the gateway makes a session of. `epoch`: the user's revocation count as read with
    the rest, under the user's row lock (every grant path holds it), so a revocation this grant
    did not see has a higher epoch and ends its session (see revoke_sessions).
    `password_expires_at`: the gateway restricts the session from then on, as if granted then."""
    expires = password_expires_at(settings, user)
    return {
        "user_id": str(user["id"]),
        "practice_id": str(user["practice_id"]) if user["practice_id"] else None,
        "roles": list(user["roles"]),
        "restriction": restriction_for(settings, user, now),
        "epoch": user["session_epoch"],
        "password_expires_at": expires.isoformat() if expires else None,
    }


def practice_view(practice: asyncpg.Record | None) -> dict[str, Any] | None:
    if practice is None:
        return None
    identifiers = practice["identifiers"]
    return {
        "id": str(practice["id"]),
        "name": practice["name"],
        "address": practice["address"],
        "phone": practice["phone"],
        "identifiers": json.loads(identifiers) if isinstance(identifiers, str) else identifiers,
    }


def public_user(settings: AuthSettings, user: asyncpg.Record, practice: asyncpg.Record | None, now: datetime) -> dict[str, Any]:
    expires = password_expires_at(settings, user)
    warning = None
    if expires is not None:
        warning = expiry.warning_flag(
            user["password_changed_at"], now,
            max_age_days=settings.password_max_age_days, thresholds=settings.password_expiry_warning_days,
        )
    return {
        "id": str(user["id"]),
        "email": user["email"],
        "pending_email": user["pending_email"],
        "first_name": user["first_name"],
        "last_name": user["last_name"],
        "phone": user["phone"],
        "cell_phone": user["cell_phone"],
        "time_zone": user["time_zone"],
        "ada_number": user["ada_number"],
        "specialties": list(user["specialties"]),
        "status": user["status"],
        "roles": list(user["roles"]),
        "two_step_required": user["two_step_required"],
        "securemail_paid": user["securemail_paid"],
        "practice": practice_view(practice),
        "password_expires_at": expires.isoformat() if expires else None,
        "password_expiry_warning_days": warning,
        "terms_version": user["terms_version"],
    }


async def session_answer(conn: asyncpg.Connection, c: Ctx, user: asyncpg.Record, *, status: int = 200,
                         **extra: Any) -> web.Response:
    """The answer of every endpoint that signs a user in: the grant for the gateway, the profile
    for the client."""
    practice = await store.get_practice(conn, user["practice_id"])
    return signed_in(c, user, practice, status=status, **extra)


def signed_in(c: Ctx, user: asyncpg.Record, practice: Any, *, status: int = 200, **extra: Any) -> web.Response:
    """session_answer when the caller already has the user's practice (login reads both at once)."""
    body = {
        "grant": grant(c.settings, user, c.now),
        "user": public_user(c.settings, user, practice, c.now),
        **extra,
    }
    return web.json_response(body, status=status)


# ---- 2-step: tickets out, proofs in ------------------------------------------------------------

class PhoneNotOnFile(Exception):
    """A registrant typed a number other than the one their inviter entered."""


def phone_to_prove(user: asyncpg.Record, typed: str | None) -> str | None:
    """The number a registration code goes to. A number the inviter entered is the one to
    prove: the email link and that phone together identify the person, so a registrant may
    not swap in a number of their own (the inviter corrects a wrong one, as the help page
    says). Otherwise the number typed, or the one the user chose before."""
    if user["phone"] and user["phone_from_inviter"]:
        if typed and typed != user["phone"]:
            raise PhoneNotOnFile
        return user["phone"]
    return typed or user["phone"]


def two_step_without_phone(user: asyncpg.Record) -> bool:
    """Whether requiring 2-step now would leave it nothing to send codes to. A registered
    user needs a number on file first, or their next password reset would go without it;
    an invited user is asked for one when they register."""
    return user["status"] != "invited" and not user["phone"]


def two_step_applies(user: asyncpg.Record) -> bool:
    return bool(user["two_step_required"] and user["phone"])


def ticket(c: Ctx, user_id: uuid.UUID, phone: str, purpose: str) -> str:
    return signed.sign_claims(
        {"user_id": str(user_id), "phone": phone, "purpose": purpose},
        purpose="verify-ticket",
        secret=c.settings.verify_secret.get_secret_value().encode(),
        now=c.now.timestamp(),
        ttl=c.settings.verify_ticket_ttl_seconds,
    )


def verification(c: Ctx, user_id: uuid.UUID, phone: str, purpose: str) -> dict[str, Any]:
    return {"ticket": ticket(c, user_id, phone, purpose), "phone_hint": hint(phone), "purpose": purpose}


INVALID_PROOF = ApiError(400, "invalid_proof", "The phone verification is invalid or has expired; ask for a new code.")


def check_proof(c: Ctx, proof: str | None, *, user_id: uuid.UUID, phone: str | None, purpose: str) -> dict[str, Any]:
    """A proof from verify-service for this user, phone and purpose (not yet marked used).
    phone=None: any number (a phone change, where the proof names the number proven)."""
    if not proof:
        raise ApiError(422, "verification_required", "Confirm your phone number with the code we send you first.")
    try:
        claims = signed.verify_claims(
            proof, purpose="verify-proof", secret=c.settings.verify_secret.get_secret_value().encode(), now=c.now.timestamp()
        )
    except signed.InvalidToken:
        raise INVALID_PROOF from None
    if claims.get("user_id") != str(user_id) or claims.get("purpose") != purpose or not claims.get("jti"):
        raise INVALID_PROOF
    if not claims.get("phone") or (phone is not None and claims["phone"] != phone):
        raise INVALID_PROOF
    return claims


async def consume_proof(conn: asyncpg.Connection, c: Ctx, claims: dict[str, Any], user_id: uuid.UUID) -> None:
    expires_at = datetime.fromtimestamp(int(claims["exp"]), tz=timezone.utc)
    if not await store.use_proof(conn, jti=str(claims["jti"]), user_id=user_id, purpose=claims["purpose"], now=c.now,
                                 expires_at=expires_at):
        raise INVALID_PROOF


# ---- new passwords ------------------------------------------------------------------------------

async def password_violations(c: Ctx, conn: asyncpg.Connection, user: asyncpg.Record, password: str, *,
                              two_step: bool | None = None) -> list[policy.Violation]:
    """Every rule the new password breaks, the history rule included (against stored hashes)."""
    applies = two_step_applies(user) if two_step is None else two_step
    found = policy.check(
        password, profile=c.settings.password_policy, email=user["email"],
        common_passwords=c.blocklist, two_step=applies,
    )
    if policy.rules(c.settings.password_policy, two_step=applies).history and len(password) <= policy.MAX_LENGTH:
        recent = await store.recent_password_hashes(conn, user["id"], c.settings.password_history_size)
        if await c.hasher.matches_any(recent, password):
            found.append(policy.recently_used(c.settings.password_history_size))
    return found


def refuse(violations: list[policy.Violation]) -> ApiError:
    return ApiError(
        422, "password_rules", "The new password does not meet the rules.",
        {"violations": [v.as_dict() for v in violations]},
    )


async def revoke_sessions(conn: asyncpg.Connection, user_id: uuid.UUID, reason: str) -> None:
    """Every session of the user granted until now must end: raise the user's session epoch
    (locking the row, so a login reading the old state commits first with the old epoch, or
    waits and reads the new state) and announce the new one. A grant this transaction makes
    next (a fresh session after a password change) carries the new epoch and stays."""
    epoch = await store.raise_session_epoch(conn, user_id)
    await outbox.add(conn, SessionsRevoked(user_id=user_id, reason=reason, epoch=epoch))
