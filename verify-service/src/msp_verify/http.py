"""HTTP handlers: send a code (POST /verifications), check it (POST /verifications/{id}/check).

The ticket auth-service gave the client says whose phone may be sent a code, for what; the
proof returned after a right code is what auth-service trusts (both HMAC-signed, see
msp_shared.signed and the brief's 2-step contract)."""
from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Literal

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from msp_shared import events, outbox, signed
from msp_shared.errors import ApiError
from msp_shared.web import CLOCK, POOL, SETTINGS, current_identity, read_model

from . import codes, limits, messages, phones, store
from .config import VerifySettings
from .keys import TRANSPORT
from .transport import TransportError

log = logging.getLogger(__name__)

TICKET_PURPOSE = "verify-ticket"
PROOF_PURPOSE = "verify-proof"
CHANNEL_HELP = "Choose 'sms' (text message) or 'call' (voice call). " + messages.CALL_HELP


class SendRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ticket: str = Field(min_length=1, max_length=4096)
    channel: str = Field(max_length=16)


class CheckRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    code: str = Field(min_length=1, max_length=32)
    ticket: str | None = Field(None, max_length=4096)  # optional: names the checker when not signed in


class Ticket(BaseModel):
    model_config = ConfigDict(extra="ignore")
    user_id: uuid.UUID
    phone: str
    purpose: Literal["registration", "password_reset", "phone_change"]


def _secret(settings: VerifySettings) -> bytes:
    return settings.verify_secret.get_secret_value().encode()


def read_ticket(token: str, settings: VerifySettings, now: datetime) -> Ticket:
    try:
        claims = signed.verify_claims(token, purpose=TICKET_PURPOSE, secret=_secret(settings), now=now.timestamp())
    except signed.InvalidToken as exc:
        if str(exc) == "expired":
            raise ApiError(422, "ticket_expired", "This verification step has expired. Please start again.")
        raise ApiError(403, "invalid_ticket", "This verification ticket is not valid.")
    try:
        return Ticket.model_validate(claims)
    except ValidationError:
        raise ApiError(403, "invalid_ticket", "This verification ticket is not valid.")


def send_limits(settings: VerifySettings) -> limits.SendLimits:
    return limits.SendLimits(
        window=timedelta(seconds=settings.send_window_seconds),
        per_phone=settings.send_limit_per_phone,
        per_user=settings.send_limit_per_user,
        per_ip=settings.send_limit_per_ip,
        cooldown=timedelta(seconds=settings.resend_cooldown_seconds),
    )


async def send_code(request: web.Request) -> web.Response:
    ident = current_identity(request)
    body = await read_model(request, SendRequest)
    settings, clock, pool = request.app[SETTINGS], request.app[CLOCK], request.app[POOL]
    if body.channel not in ("sms", "call"):
        raise ApiError(400, "invalid_channel", CHANNEL_HELP, {"fields": {"channel": CHANNEL_HELP}})
    now = clock.now()
    ticket = read_ticket(body.ticket, settings, now)
    try:
        phone = phones.normalise(ticket.phone)
    except phones.InvalidPhone as exc:
        raise ApiError(
            400,
            "invalid_phone",
            f"This phone number cannot receive codes: {exc}. Please correct it in international "
            "format, for example +1 555 010 1234.",
        )
    ip = ident.ip
    audit = dict(
        at=now, actor_id=ident.user_id, user_id=ticket.user_id, action="code.sent", purpose=ticket.purpose,
        channel=body.channel, ip=ip, phone_hint=phones.hint(phone),
    )

    def sent_event(outcome: str, verification_id: uuid.UUID | None) -> events.VerifyCodeSent:
        """For the audit trail Support reads (auth-service's): every send asked for, refused
        and failed ones too (a burst of refusals is what SMS pumping looks like there)."""
        return events.VerifyCodeSent(
            user_id=ticket.user_id, verification_id=verification_id, purpose=ticket.purpose, channel=body.channel,
            outcome=outcome, ip=ip, actor_id=ident.user_id,
        )

    code, salt, verification_id = codes.new_code(settings.code_length), codes.new_salt(), uuid.uuid4()
    verification = store.Verification(
        id=verification_id, user_id=ticket.user_id, purpose=ticket.purpose, phone=phone, channel=body.channel,
        code_hash=codes.code_hash(code, salt=salt, verification_id=str(verification_id), pepper=_secret(settings)),
        salt=salt, ip=ip, created_at=now, expires_at=now + timedelta(seconds=settings.code_ttl_seconds),
    )
    # Limits are checked and the send recorded under locks, BEFORE anything is sent.
    async with pool.acquire() as conn, conn.transaction():
        await store.lock_senders(conn, user_id=ticket.user_id, phone=phone, ip=ip)
        history = await store.send_history(
            conn, user_id=ticket.user_id, purpose=ticket.purpose, phone=phone, ip=ip,
            since=now - timedelta(seconds=settings.send_window_seconds),
        )
        refused = limits.refusal(history, send_limits(settings), now)
        if refused:
            await store.add_audit(conn, store.AuditEntry(**audit, outcome=refused.code))
            await outbox.add(conn, sent_event(refused.code, None))  # no verification was made
        else:
            await store.supersede_pending(conn, user_id=ticket.user_id, purpose=ticket.purpose)
            await store.insert_verification(conn, verification)
    if refused:
        log.info("code send refused", extra={"user_id": str(ticket.user_id), "reason": refused.code})
        raise ApiError(429, refused.code, refused.message, {"retry_after": refused.retry_after})

    transport = request.app[TRANSPORT]
    try:
        if body.channel == "sms":
            await transport.send_sms(phone, messages.sms_body(code, settings.origin_host()))
        else:
            await transport.call(phone, twiml=messages.call_twiml(code), spoken=messages.spoken_text(code))
    except TransportError as exc:
        async with pool.acquire() as conn, conn.transaction():
            await store.mark_failed(conn, verification.id)
            await store.add_audit(
                conn, store.AuditEntry(**audit, verification_id=verification.id, outcome="send_failed")
            )
            await outbox.add(conn, sent_event("send_failed", verification.id))
        if exc.permanent:
            raise ApiError(
                422, "phone_unreachable",
                "We could not send a code to this phone number. Please check the number"
                + (" or choose a text message instead." if body.channel == "call" else "."),
                {"provider_code": exc.code},
            )
        raise ApiError(502, "send_failed", "We could not send the code just now. Please try again shortly.")

    async with pool.acquire() as conn, conn.transaction():
        await store.add_audit(conn, store.AuditEntry(**audit, verification_id=verification.id, outcome="sent"))
        await outbox.add(conn, sent_event("sent", verification.id))
    log.info("code sent", extra={"verification_id": str(verification.id), "channel": body.channel})
    answer = {
        "id": str(verification.id),
        "channel": body.channel,
        "expires_at": verification.expires_at.isoformat(),
        "resend_after": (now + timedelta(seconds=settings.resend_cooldown_seconds)).isoformat(),
    }
    if body.channel == "call":
        answer["help"] = messages.CALL_HELP
    return web.json_response(answer, status=201)


_CHECK_ERRORS = {
    codes.Outcome.WRONG: (422, "That code is not right. Please check it and try again."),
    codes.Outcome.TOO_MANY: (429, "Too many wrong codes. Please ask for a new code."),
    codes.Outcome.EXPIRED: (422, "This code has expired. Please ask for a new code."),
    codes.Outcome.USED: (422, "This code was already used."),
    codes.Outcome.REPLACED: (422, "A newer code was sent. Please use the latest code."),
    codes.Outcome.NOT_SENT: (422, "This code could not be delivered. Please ask for a new code."),
}


def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such verification.")


async def check_code(request: web.Request) -> web.Response:
    ident = current_identity(request)
    settings, clock, pool = request.app[SETTINGS], request.app[CLOCK], request.app[POOL]
    try:
        verification_id = uuid.UUID(request.match_info["id"])
    except ValueError:
        raise _not_found()
    body = await read_model(request, CheckRequest)
    now = clock.now()
    # Who is checking: the ticket's user if the client shows it, else the signed-in user.
    # A verification of another user is "not found". Without either (an anonymous client
    # that dropped the ticket) the unguessable id is the capability; the proof is bound to
    # the verification's own user either way.
    checker = str(read_ticket(body.ticket, settings, now).user_id) if body.ticket else ident.user_id

    proof = None
    async with pool.acquire() as conn, conn.transaction():
        row = await store.lock_verification(conn, verification_id)
        if row is None:
            raise _not_found()
        audit = dict(
            at=now, actor_id=ident.user_id, user_id=row.user_id, action="code.checked", verification_id=row.id,
            purpose=row.purpose, channel=row.channel, ip=ident.ip, phone_hint=phones.hint(row.phone),
        )

        def checked_event(outcome: str) -> events.VerifyCodeChecked:
            return events.VerifyCodeChecked(
                user_id=row.user_id, verification_id=row.id, purpose=row.purpose, outcome=outcome,
                ip=ident.ip, actor_id=ident.user_id,
            )

        if checker is not None and checker != str(row.user_id):
            await store.add_audit(conn, store.AuditEntry(**audit, outcome="not_yours"))
            await outbox.add(conn, checked_event("not_yours"))
            result = None
        else:
            matches = codes.code_matches(
                body.code, row.code_hash, salt=row.salt, verification_id=str(row.id), pepper=_secret(settings)
            )
            result = codes.check(
                codes.CodeState(row.status, row.attempts, row.expires_at),
                matches=matches, now=now, max_checks=settings.code_max_checks,
            )
            if (result.attempts, result.status) != (row.attempts, row.status):
                await store.record_check(
                    conn, row.id, attempts=result.attempts, status=result.status,
                    verified_at=now if result.outcome is codes.Outcome.OK else None,
                )
            await store.add_audit(conn, store.AuditEntry(**audit, outcome=result.outcome.value))
            await outbox.add(conn, checked_event(result.outcome.value))
            if result.outcome is codes.Outcome.OK:
                proof = signed.sign_claims(
                    {"user_id": str(row.user_id), "phone": row.phone, "purpose": row.purpose,
                     "verification_id": str(row.id)},
                    purpose=PROOF_PURPOSE, secret=_secret(settings), now=now.timestamp(),
                    ttl=settings.proof_ttl_seconds,
                )
    if result is None:
        raise _not_found()
    log.info("code checked", extra={"verification_id": str(verification_id), "outcome": result.outcome.value})
    if proof is None:
        status, message = _CHECK_ERRORS[result.outcome]
        raise ApiError(status, result.outcome.value, message, {"attempts_left": result.attempts_left})
    return web.json_response({"proof": proof})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/verifications", send_code)
    app.router.add_post("/verifications/{id}/check", check_code)
