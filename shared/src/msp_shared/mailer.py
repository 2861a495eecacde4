"""Asking mail-service to send an email, from any service.

    async with conn.transaction():
        ...state change...
        await request_email(conn, sealer, template="password_reset", to=user.email,
                            secrets={"link": reset_link}, requested_by="auth")

The request is an EmailRequested event written to the caller's outbox in the caller's
transaction: it is published only if the state change commits, and never lost while the
broker or the SMTP relay is down. The recipient address and `secrets` (links carrying
tokens) travel sealed; `params` travel in clear and must hold nothing secret or personal
beyond what the template shows (a practice name, a number of days). The templates and their
fields live in mail-service (msp_mail.outbound.templates)."""
from __future__ import annotations

import re
from collections.abc import Mapping

import asyncpg

from . import outbox
from .events import EmailRequested, Envelope
from .seal import Sealer

# Deliberately loose (the SMTP relay is the judge of deliverability), but never a line
# break or a second address: the value becomes a mail header and the envelope recipient.
ADDRESS = re.compile(r"^[^@\s<>,;\"]+@[^@\s<>,;\"]+\.[^@\s<>,;\"]+$")
_TEMPLATE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


def seal_email_secrets(sealer: Sealer, to: str, secrets: Mapping[str, str] | None = None) -> str:
    """The sealed part of an EmailRequested: {"to": address, **secrets}."""
    secrets = dict(secrets or {})
    if "to" in secrets:
        raise ValueError("pass the recipient as to=, not in secrets")
    if not all(isinstance(v, str) for v in secrets.values()):
        raise ValueError("email secrets must be strings")
    return sealer.seal({"to": to, **secrets}, context=EmailRequested.TYPE)


async def request_email(
    conn: asyncpg.Connection,
    sealer: Sealer,
    *,
    template: str,
    to: str,
    secrets: Mapping[str, str] | None = None,
    params: Mapping[str, str] | None = None,
    requested_by: str,
) -> Envelope:
    """Write a "send this email" event to the outbox, inside the caller's transaction."""
    if not ADDRESS.match(to or ""):
        raise ValueError("invalid recipient address")
    if not _TEMPLATE.match(template):
        raise ValueError("invalid template name")
    params = dict(params or {})
    overlap = set(params) & (set(secrets or {}) | {"to"})
    if overlap:
        raise ValueError(f"fields both secret and plain: {sorted(overlap)}")
    data = EmailRequested(
        template=template,
        sealed=seal_email_secrets(sealer, to, secrets),
        params=params,
        requested_by=requested_by,
    )
    return await outbox.add(conn, data)
