"""A user's own email address (the one they sign in with), asked of auth-service when needed.

Why a call and not a copy: auth-service owns accounts and email addresses. The gateway's
identity header carries no address, auth.user.registered carries none, and auth-service
announces no change of address, so billing could not keep a copy current. Mailing someone
their invoices is rare and the address is needed at that moment (DESIGN §1: a service calls
another's HTTP API where an answer is needed now), so billing asks then, the way mail-service
learns a sender's address: the service-only `POST {auth_url}/internal/recipients` with no
recipients (which invites nobody and changes nothing) answers with `sender`, the named user's
current account. Nothing the client sends is used, and billing stores no address.
The same answer names the user's practice, which billing writes into the description of a
User Manager's Stripe customer (practice_name) so the Billing Dept. can find it.

The call carries a service identity ("service:billing", role "service") signed like the
gateway's, so auth-service's identity check applies unchanged."""
from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from msp_shared import identity, telemetry
from msp_shared.errors import ApiError
from msp_shared.mailer import ADDRESS
from msp_shared.web import CLOCK, SETTINGS

from .keys import AUTH_HTTP

log = logging.getLogger(__name__)

PATH = "/internal/recipients"
SERVICE_IDENTITY = identity.Identity(user_id="service:billing", roles=("service",))
UNAVAILABLE = ApiError(503, "accounts_unavailable",
                       "Your email address cannot be looked up right now; nothing was sent. Try again shortly.")


async def _sender(app: web.Application, user_id: str) -> dict:
    """auth-service's view of the account `user_id` (sender_view: user_id, email, name,
    practice_id, practice_name); UNAVAILABLE if it cannot be had."""
    settings = app[SETTINGS]
    header = identity.sign(
        SERVICE_IDENTITY, secret=settings.identity_secret.get_secret_value().encode(),
        method="POST", path=PATH, now=app[CLOCK].now().timestamp(), ttl=settings.identity_ttl_seconds,
    )
    headers = dict(telemetry.inject_http({identity.HEADER: header}))
    try:
        async with app[AUTH_HTTP].post(
            settings.auth_url.rstrip("/") + PATH, json={"emails": [], "sender_id": user_id}, headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.auth_timeout_seconds),
        ) as resp:
            answer = await resp.json(content_type=None)
            status = resp.status
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("auth-service unreachable", extra={"error": type(exc).__name__})
        raise UNAVAILABLE from None
    sender = answer.get("sender") if status == 200 and isinstance(answer, dict) else None
    if not isinstance(sender, dict) or sender.get("user_id") != user_id:
        log.warning("auth-service gave no account", extra={"status": status})
        raise UNAVAILABLE
    return sender


async def sign_in_address(app: web.Application, user_id: str) -> str:
    """The current email address of the account `user_id`, as auth-service has it now."""
    address = (await _sender(app, user_id)).get("email")
    if not isinstance(address, str) or not ADDRESS.match(address):
        log.warning("auth-service gave no address")
        raise UNAVAILABLE
    return address


async def practice_name(app: web.Application, user_id: str, practice_id: str) -> str | None:
    """The name of the practice of the account `user_id`, for the Stripe Dashboard (the
    description of the User Manager's customer); None when auth-service cannot say now or
    places the user in another practice than `practice_id`. Never raises: a name is a
    convenience for the Billing Dept., not a reason to fail."""
    try:
        sender = await _sender(app, user_id)
    except ApiError:
        return None
    name = sender.get("practice_name")
    if sender.get("practice_id") != practice_id or not isinstance(name, str) or not name.strip():
        return None
    return " ".join(name.split())[:200]


async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[AUTH_HTTP] = session
        yield
