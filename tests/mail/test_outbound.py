"""Outbound email end to end: a service requests an email in its own transaction; the
event travels through its outbox relay and RabbitMQ to mail-service, which delivers it to a
real SMTP server (aiosmtpd) as an .eml in the dev outbox."""
from __future__ import annotations

import asyncio
import logging

import aio_pika
import pytest
from mail_helpers import body_text, eventually, read_mails
from msp_mail.outbound import store
from msp_shared.bus import Bus
from msp_shared.mailer import request_email
from msp_shared.web import POOL

RESET_LINK = "https://portal.example.test/reset?token=Zx81-secret-reset-token-value"


async def request(producer, *, to: str, template: str = "password_reset", secrets=None, params=None):
    secrets = {"link": RESET_LINK} if secrets is None else secrets
    async with producer.pool.acquire() as conn, conn.transaction():
        await conn.execute("CREATE TABLE IF NOT EXISTS resets (id serial PRIMARY KEY)")
        await conn.execute("INSERT INTO resets DEFAULT VALUES")  # the producer's own state change
        return await request_email(
            conn, producer.sealer, template=template, to=to, secrets=secrets, params=params or {},
            requested_by="producer",
        )


async def spy_queue(amqp_url: str, exchange: str, *keys: str):
    """A queue of the test's own bound to the exchange: the raw bytes that travel the bus."""
    connection = await aio_pika.connect(amqp_url)
    channel = await connection.channel()
    ex = await channel.declare_exchange(exchange, aio_pika.ExchangeType.TOPIC, durable=True)
    queue = await channel.declare_queue(exclusive=True)
    for key in keys:
        await queue.bind(ex, routing_key=key)
    return connection, queue


async def test_requested_email_arrives_at_the_smtp_server(producer, start_mail, smtp_server, dev_outbox, amqp_url, exchange_name):
    spy_conn, spy = await spy_queue(amqp_url, exchange_name, "mail.email.requested", "mail.email.sent")
    try:
        # No periodic scan during the test: only the wake-up on a new request can send it.
        async with smtp_server, start_mail(mail_scan_interval_seconds=3600) as app:
            envelope = await request(producer, to="dr.jane@example.com")
            mails = await eventually(lambda: read_mails(dev_outbox))
            assert len(mails) == 1
            mail = mails[0]
            assert mail["To"] == "dr.jane@example.com"
            assert mail["X-RcptTo"] == "dr.jane@example.com"  # the SMTP envelope recipient
            assert mail["Subject"] == "Reset your SecurePractice password"
            assert mail["X-MSP-Mail-Id"] == str(envelope.id)
            assert RESET_LINK in body_text(mail, "plain")
            assert f'href="{RESET_LINK}"' in body_text(mail, "html")

            pool = app[POOL]
            row = await eventually(lambda: _sent(pool, envelope.id))
            assert row["attempts"] == 1
            # Nothing readable about the recipient or the link is kept once it is sent.
            assert row["sealed"] is None
            stored = str(dict(row))
            assert "jane" not in stored and "secret-reset-token" not in stored

            # EmailSent goes out through mail-service's own outbox.
            sent = await eventually(lambda: pool.fetchval(
                "SELECT envelope FROM outbox WHERE type = 'mail.email.sent' AND published_at IS NOT NULL"))
            assert str(envelope.id) in sent

        # The raw event on the bus and in the producer's outbox: sealed, no address, no link.
        raw = [await spy.get(timeout=5), await spy.get(timeout=5)]
        bodies = {m.type: m.body for m in raw}
        assert set(bodies) == {"mail.email.requested", "mail.email.sent"}
        outbox_row = await producer.pool.fetchval("SELECT envelope::text FROM outbox WHERE id = $1", envelope.id)
        for blob in (bodies["mail.email.requested"], bodies["mail.email.sent"], outbox_row.encode()):
            assert b"jane" not in blob and b"example.com" not in blob
            assert b"secret-reset-token" not in blob and b"portal.example.test" not in blob
        assert b'"sealed"' in bodies["mail.email.requested"]
    finally:
        await spy_conn.close()


async def _sent(pool, mail_id):
    row = await store.get(pool, mail_id)
    return row if row is not None and row["status"] == "sent" else None


async def _row(pool, mail_id):
    return await store.get(pool, mail_id)


async def test_mail_survives_an_smtp_outage_and_arrives_when_it_is_back(producer, start_mail, smtp_server, dev_outbox, clock):
    async with start_mail() as app:  # the SMTP server is down
        pool = app[POOL]
        envelope = await request(producer, to="pat@example.org")
        row = await eventually(lambda: _failed_attempts(pool, envelope.id, 1))
        assert row["status"] == "pending"
        assert row["last_error"] == "SMTPConnectError"
        assert row["next_attempt_at"] > clock.now()

        clock.advance(seconds=61)  # the first retry falls due; the server is still down
        row = await eventually(lambda: _failed_attempts(pool, envelope.id, 2))
        assert row["status"] == "pending"
        assert (row["next_attempt_at"] - clock.now()).total_seconds() == pytest.approx(120)  # back-off doubled
        assert read_mails(dev_outbox) == []

        await smtp_server.start()
        try:
            clock.advance(seconds=121)
            mails = await eventually(lambda: read_mails(dev_outbox))
            await eventually(lambda: _sent(pool, envelope.id))
            assert [m["To"] for m in mails] == ["pat@example.org"]
            assert RESET_LINK in body_text(mails[0])
            assert (await store.get(pool, envelope.id))["attempts"] == 3
        finally:
            await smtp_server.stop()


async def _failed_attempts(pool, mail_id, attempts):
    row = await store.get(pool, mail_id)
    if row is not None and row["attempts"] == attempts and row["locked_until"] is None and row["last_error"]:
        return row
    return None


async def test_mail_survives_a_restart_of_mail_service_during_the_outage(producer, start_mail, smtp_server, dev_outbox, clock):
    async with start_mail() as app:
        envelope = await request(producer, to="pat@example.org")
        await eventually(lambda: _failed_attempts(app[POOL], envelope.id, 1))
    # mail-service restarts during the outage; the SMTP server is back by the next retry.
    async with smtp_server, start_mail() as app:
        clock.advance(seconds=61)
        await eventually(lambda: _sent(app[POOL], envelope.id))
        assert [m["To"] for m in read_mails(dev_outbox)] == ["pat@example.org"]


async def test_an_outage_longer_than_the_bound_gives_up(producer, start_mail, clock, caplog):
    async with start_mail(mail_retry_give_up_seconds=3600) as app:
        envelope = await request(producer, to="pat@example.org")
        await eventually(lambda: _failed_attempts(app[POOL], envelope.id, 1))
        clock.advance(hours=2)
        row = await eventually(lambda: _status(app[POOL], envelope.id, "failed"))
        assert row["last_error"] == "GaveUp:SMTPConnectError"
        assert row["sealed"] is None
    assert any(str(envelope.id) in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)


async def _status(pool, mail_id, status):
    row = await store.get(pool, mail_id)
    return row if row is not None and row["status"] == status else None


async def test_a_redelivered_request_sends_once(producer, start_mail, smtp_server, dev_outbox, amqp_url, exchange_name):
    async with smtp_server, start_mail(bus_prefetch=1) as app:
        envelope = await request(producer, to="once@example.com")
        await eventually(lambda: read_mails(dev_outbox))
        await eventually(lambda: _sent(app[POOL], envelope.id))

        # The broker hands the same event over again (e.g. after a consumer crash before its ack).
        bus = Bus(amqp_url, exchange_name, service="replayer")
        await bus.connect()
        try:
            await bus.publish(envelope)
            await bus.publish(envelope)
        finally:
            await bus.close()
        # A later request behind the duplicates in the queue: once it is sent, they were handled.
        marker = await request(producer, to="marker@example.com")
        await eventually(lambda: _sent(app[POOL], marker.id))
        recipients = sorted(m["To"] for m in read_mails(dev_outbox))
        assert recipients == ["marker@example.com", "once@example.com"]
        assert await app[POOL].fetchval(
            "SELECT count(*) FROM inbox WHERE consumer = 'mail-outbound' AND event_id = $1", envelope.id) == 1


async def test_unknown_template_fails_permanently_and_is_logged_by_id(producer, start_mail, smtp_server, dev_outbox, caplog):
    async with smtp_server, start_mail() as app:
        bad = await request(producer, to="who@example.com", template="no_such_template")
        good = await request(producer, to="next@example.com")
        row = await eventually(lambda: _status(app[POOL], bad.id, "failed"))
        assert row["last_error"] == "UnknownTemplate" and row["attempts"] == 1
        await eventually(lambda: _sent(app[POOL], good.id))
        assert [m["To"] for m in read_mails(dev_outbox)] == ["next@example.com"]
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(str(bad.id) in e and "UnknownTemplate" in e for e in errors)
    assert not any("who@example.com" in e for e in errors)


async def test_message_waiting_mail_never_carries_subject_or_body(producer, start_mail, smtp_server, dev_outbox):
    async with smtp_server, start_mail() as app:
        envelope = await request(
            producer, to="patient@example.com", template="message_waiting",
            secrets={"link": "https://portal.example.test/messages/42",
                     "subject": "Biopsy result", "body": "The lesion is malignant"},
            params={"practice_name": "Smile Dental", "attachment_name": "biopsy.pdf"},
        )
        await eventually(lambda: _sent(app[POOL], envelope.id))
    [mail] = read_mails(dev_outbox)
    raw = mail.as_string()
    assert "Smile Dental" in mail["Subject"]
    assert "https://portal.example.test/messages/42" in body_text(mail)
    for leaked in ("Biopsy", "malignant", "biopsy.pdf"):
        assert leaked not in raw


class ScriptedSmtp:
    """A real aiosmtpd server answering RCPT by script: 550 for bounce@..., a single
    451 for later@..., 250 otherwise."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.deferred = 0
        self.received: list[list[str]] = []
        self._server = None

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce@"):
            return "550 5.1.1 No such user"
        if address.startswith("later@") and self.deferred == 0:
            self.deferred += 1
            return "451 4.3.0 Try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.received.append(list(envelope.rcpt_tos))
        return "250 OK"

    async def __aenter__(self):
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="scripted.local", loop=loop), "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        await self._server.wait_closed()


async def test_smtp_5xx_fails_permanently_and_4xx_is_retried(producer, start_mail, smtp_port, clock):
    async with ScriptedSmtp(smtp_port) as smtp, start_mail() as app:
        pool = app[POOL]
        bounce = await request(producer, to="bounce@example.com")
        later = await request(producer, to="later@example.com")
        row = await eventually(lambda: _status(pool, bounce.id, "failed"))
        assert row["last_error"] == "SMTPRecipientsRefused:550"
        row = await eventually(lambda: _failed_attempts(pool, later.id, 1))
        assert row["status"] == "pending" and row["last_error"] == "SMTPRecipientsRefused:451"
        clock.advance(seconds=61)
        await eventually(lambda: _sent(pool, later.id))
        assert smtp.received == [["later@example.com"]]


async def test_two_replicas_send_each_mail_once(producer, start_mail, smtp_server, dev_outbox):
    async with smtp_server, start_mail() as one, start_mail():
        requested = [await request(producer, to=f"user{i}@example.com") for i in range(8)]
        for envelope in requested:
            await eventually(lambda e=envelope: _sent(one[POOL], e.id))
        recipients = sorted(m["To"] for m in read_mails(dev_outbox))
        assert recipients == sorted(f"user{i}@example.com" for i in range(8))
