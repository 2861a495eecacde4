"""Outbound email: "send this email" requests from any service (mail.email.requested),
rendered from templates and delivered to the SMTP relay with retries.

Wiring for the app factory: `outbound_ctx` (the sender task) before the bus context, and
`subscribe(app, bus)` inside the bus context's subscribe callback."""
from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from aiohttp import web
from msp_shared import inbox
from msp_shared.events import EmailRequested, Envelope
from msp_shared.seal import Sealer
from msp_shared.web import CLOCK, POOL, SETTINGS

from .handlers import GROUP, record_request
from .sender import Sender
from .smtp import SmtpTransport

SENDER = web.AppKey("outbound_sender", Sender)


async def outbound_ctx(app: web.Application) -> AsyncIterator[None]:
    """Runs the sender task for the app's lifetime; on shutdown lets the mail in hand finish."""
    settings = app[SETTINGS]
    sender = Sender(
        app[POOL],
        Sealer(settings.seal_key.get_secret_value()),
        settings,
        app[CLOCK],
        SmtpTransport(settings),
    )
    app[SENDER] = sender
    task = asyncio.create_task(sender.run(), name="outbound-email-sender")
    yield
    sender.stop()
    try:
        await asyncio.wait_for(asyncio.shield(task), timeout=settings.shutdown_grace_seconds)
    except TimeoutError:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    sender = app[SENDER]
    record = inbox.idempotent(app[POOL], GROUP, record_request(app[CLOCK]))

    async def on_email_requested(envelope: Envelope) -> None:
        await record(envelope)  # committed here, so the sender will find the row
        sender.wake()

    bus.subscribe(GROUP, [EmailRequested.TYPE], on_email_requested)


__all__ = ["GROUP", "SENDER", "Sender", "outbound_ctx", "subscribe"]
