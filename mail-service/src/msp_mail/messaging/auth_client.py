"""The one synchronous call mail-service makes: auth-service turns recipients' email
addresses into user ids now (inviting addresses without an account), and tells who the
sender is (name and practice, shown to recipients and named in the notification email).

    POST {auth_url}/internal/recipients {"emails", "inviting_practice_id", "sender_id", "phones"}
    → {"recipients": [{"email", "user_id", "invited"}], "sender": {...}}

The call carries a service identity ("service:mail", role "service") signed like the
gateway's, so auth-service's identity check applies unchanged."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import aiohttp

from msp_shared import identity, telemetry
from msp_shared.clock import Clock
from msp_shared.errors import ApiError

PATH = "/internal/recipients"
SERVICE_IDENTITY = identity.Identity(user_id="service:mail", roles=("service",))
UNAVAILABLE = ApiError(503, "accounts_unavailable", "Recipients cannot be looked up right now; nothing was sent. Try again shortly.")


@dataclass(frozen=True)
class Resolved:
    recipients: list[dict[str, Any]]  # {"email", "user_id", "invited"}
    sender: dict[str, Any]  # {"user_id", "email", "name", "practice_id", "practice_name"}


async def resolve(session: aiohttp.ClientSession, settings: Any, clock: Clock, *, emails: list[str],
                  sender_id: str, practice_id: str | None, phones: dict[str, dict[str, str]] | None = None) -> Resolved:
    header = identity.sign(
        SERVICE_IDENTITY,
        secret=settings.identity_secret.get_secret_value().encode(),
        method="POST", path=PATH, now=clock.now().timestamp(), ttl=settings.identity_ttl_seconds,
    )
    headers = {identity.HEADER: header}
    inject = getattr(telemetry, "inject_http", None)
    if inject is not None:
        inject(headers)
    body = {"emails": emails, "inviting_practice_id": practice_id, "sender_id": sender_id, "phones": phones or {}}
    try:
        async with session.post(
            settings.auth_url.rstrip("/") + PATH, json=body, headers=headers,
            timeout=aiohttp.ClientTimeout(total=settings.auth_timeout_seconds),
        ) as resp:
            answer = await resp.json(content_type=None)
            if resp.status == 400:
                raise ApiError(400, "invalid_input", "Some recipients' addresses or numbers are not valid.",
                               answer.get("details") or {})
            if resp.status != 200:
                raise UNAVAILABLE
    except (aiohttp.ClientError, TimeoutError, ValueError):
        raise UNAVAILABLE from None
    return Resolved(recipients=answer["recipients"], sender=answer["sender"])
