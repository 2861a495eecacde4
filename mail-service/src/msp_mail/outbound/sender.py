"""The sender task: delivers due outbound emails, one replica or many.

Woken at once when a request is recorded, and every `mail_scan_interval_seconds` for retries
that fell due. Each round claims a batch of due rows (a lease, so replicas never send the
same row concurrently), opens the seal, renders, sends, and records the outcome:
sent (+ EmailSent in the outbox, same transaction), retry later, or failed for good.

Delivery is at least once: a replica that dies after the relay accepted a mail but before
recording it leaves the row to be sent again when its lease runs out. The Message-ID is
derived from the request id so such a duplicate is recognisable."""
from __future__ import annotations

import asyncio
import logging
import uuid
from datetime import timedelta
from email.message import EmailMessage
from email.utils import format_datetime, parseaddr
from typing import Protocol

import asyncpg
from msp_shared import outbox
from msp_shared.clock import Clock
from msp_shared.events import EmailRequested, EmailSent
from msp_shared.seal import Sealer

from ..config import MailSettings
from . import store
from .retry import RetryPolicy
from .smtp import SmtpFailure, classify
from .templates import RenderedEmail, TemplateError, render

log = logging.getLogger(__name__)


class Transport(Protocol):
    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> None: ...


class Undeliverable(Exception):
    """This mail can never be sent (bad seal, template or address); label says why."""

    def __init__(self, label: str) -> None:
        super().__init__(label)
        self.label = label


def retry_policy(settings: MailSettings) -> RetryPolicy:
    return RetryPolicy(
        first_delay=timedelta(seconds=settings.mail_retry_first_delay_seconds),
        max_delay=timedelta(seconds=settings.mail_retry_max_delay_seconds),
        give_up_after=timedelta(seconds=settings.mail_retry_give_up_seconds),
    )


def build_message(mail_id: uuid.UUID, rendered: RenderedEmail, *, to: str, mail_from: str, date) -> EmailMessage:
    message = EmailMessage()
    try:
        message["To"] = to  # the default policy refuses line breaks (header injection)
    except (ValueError, TypeError):
        raise Undeliverable("InvalidRecipient") from None
    _, from_address = parseaddr(mail_from)
    domain = from_address.rpartition("@")[2] or "securepractice.local"
    message["From"] = mail_from
    message["Subject"] = rendered.subject
    message["Date"] = format_datetime(date)
    message["Message-ID"] = f"<{mail_id}@{domain}>"
    message["X-MSP-Mail-Id"] = str(mail_id)
    message["Auto-Submitted"] = "auto-generated"
    message.set_content(rendered.text)
    message.add_alternative(rendered.html, subtype="html")
    return message


class Sender:
    def __init__(
        self, pool: asyncpg.Pool, sealer: Sealer, settings: MailSettings, clock: Clock, transport: Transport
    ) -> None:
        self._pool = pool
        self._sealer = sealer
        self._settings = settings
        self._clock = clock
        self._transport = transport
        self._policy = retry_policy(settings)
        self._wake = asyncio.Event()
        self._stopping = False
        _, self._envelope_sender = parseaddr(settings.mail_from)

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Until stop(): send what is due, then sleep until woken or the next scan."""
        while not self._stopping:
            self._wake.clear()  # before the scan: a request recorded during it wakes us again
            try:
                full = await self.send_due() >= self._settings.mail_send_batch
            except asyncio.CancelledError:
                raise
            except Exception:  # the database may be away for a moment; the next scan retries
                log.exception("outbound email scan failed")
                full = False
            if full:
                continue
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self._settings.mail_scan_interval_seconds)
            except TimeoutError:
                pass

    async def send_due(self) -> int:
        """One round: claim due mails and try each once. Returns how many were claimed."""
        batch = await store.claim_due(
            self._pool,
            now=self._clock.now(),
            lease=timedelta(seconds=self._settings.mail_claim_lease_seconds),
            limit=self._settings.mail_send_batch,
        )
        for due in batch:
            if self._stopping:
                break  # the rest keep their lease and are taken up after it runs out
            await self._deliver(due)
        return len(batch)

    def _prepare(self, due: store.DueEmail) -> tuple[EmailMessage, str]:
        if due.sealed is None:
            raise Undeliverable("MissingSeal")
        try:
            opened = self._sealer.open(due.sealed, context=EmailRequested.TYPE)
        except Exception:
            raise Undeliverable("InvalidSeal") from None
        to = opened.pop("to", None)
        if not isinstance(to, str) or "@" not in to:
            raise Undeliverable("InvalidRecipient")
        try:
            rendered = render(due.template, {**due.params, **opened}, portal_url=self._settings.public_url)
        except TemplateError as exc:
            raise Undeliverable(type(exc).__name__) from None
        message = build_message(due.id, rendered, to=to, mail_from=self._settings.mail_from, date=self._clock.now())
        return message, to

    async def _deliver(self, due: store.DueEmail) -> None:
        ids = {"mail_id": str(due.id), "template": due.template, "attempt": due.attempts}
        try:
            message, to = self._prepare(due)
        except Undeliverable as exc:
            await store.mark_failed(self._pool, due.id, attempts=due.attempts, error=exc.label, now=self._clock.now())
            log.error("outbound email %s failed permanently: %s", due.id, exc.label, extra=ids)
            return
        try:
            await self._transport.send(message, sender=self._envelope_sender, recipient=to)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._failed(due, classify(exc), ids)
            return
        async with self._pool.acquire() as conn, conn.transaction():
            if await store.mark_sent(conn, due.id, attempts=due.attempts, now=self._clock.now()):
                await outbox.add(conn, EmailSent(request_id=due.id, template=due.template))
        log.info("outbound email %s sent", due.id, extra=ids)

    async def _failed(self, due: store.DueEmail, failure: SmtpFailure, ids: dict) -> None:
        now = self._clock.now()
        next_at = None if failure.permanent else self._policy.next_attempt(
            attempts=due.attempts, requested_at=due.requested_at, now=now
        )
        if next_at is None:
            label = failure.label if failure.permanent else f"GaveUp:{failure.label}"
            await store.mark_failed(self._pool, due.id, attempts=due.attempts, error=label, now=now)
            log.error("outbound email %s failed permanently: %s", due.id, label, extra=ids)
            return
        await store.schedule_retry(self._pool, due.id, attempts=due.attempts, next_attempt_at=next_at, error=failure.label)
        log.warning(
            "outbound email %s not sent (%s); retry at %s", due.id, failure.label, next_at.isoformat(), extra=ids
        )
