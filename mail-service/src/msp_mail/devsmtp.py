"""The local SMTP server (dev and tests): a real aiosmtpd server that stores each mail it
receives as `<outbox>/mail/<time>-<n>.eml` (DESIGN.md §5, dev outbox contract).

    python -m msp_mail.devsmtp          # 127.0.0.1:2525, files under $MSP_DEV_OUTBOX/mail

In tests:

    async with DevSmtpServer(outbox_dir, port=free_port) as server:
        ...                               # server.stop() / await server.start() to simulate an outage

Each file is the message as received, preceded by `X-Peer`, `X-MailFrom` and `X-RcptTo`
headers (the SMTP envelope), written to a temporary name first and then linked into place,
so a reader never sees half a mail and two servers sharing a folder never overwrite
each other."""
from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import uuid
from datetime import datetime, timezone
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

log = logging.getLogger(__name__)


class DevSmtpSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MSP_", env_file=".env", extra="ignore", hide_input_in_errors=True)

    dev_smtp_host: str = Field("127.0.0.1", description="Interface the dev SMTP server binds to (MSP_DEV_SMTP_HOST).")
    dev_smtp_port: int = Field(2525, description="Port of the dev SMTP server (MSP_DEV_SMTP_PORT).")
    dev_outbox: str = Field(
        "var/outbox",
        description="Dev outbox folder; mails land in its mail/ subfolder (MSP_DEV_OUTBOX).",
    )
    log_level: str = Field("INFO", description="Log level (MSP_LOG_LEVEL).")


def write_eml(mail_dir: Path, content: bytes, counter: itertools.count) -> Path:
    """Store one mail atomically under a name not yet taken; returns its path."""
    mail_dir.mkdir(parents=True, exist_ok=True)
    tmp = mail_dir / f".tmp-{uuid.uuid4().hex}"
    with open(tmp, "wb") as fh:
        fh.write(content)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
        while True:
            final = mail_dir / f"{stamp}-{next(counter)}.eml"
            try:
                os.link(tmp, final)  # fails if the name exists: never overwrite another mail
                return final
            except FileExistsError:
                continue
    finally:
        tmp.unlink(missing_ok=True)


class _StoreHandler:
    def __init__(self, mail_dir: Path) -> None:
        self.mail_dir = mail_dir
        self.counter = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        peer = session.peer[0] if isinstance(session.peer, tuple) else str(session.peer)
        trace = [f"X-Peer: {peer}", f"X-MailFrom: {envelope.mail_from}"]
        trace += [f"X-RcptTo: {rcpt}" for rcpt in envelope.rcpt_tos]
        content = envelope.original_content or b""
        data = ("\r\n".join(trace) + "\r\n").encode() + content
        path = await asyncio.to_thread(write_eml, self.mail_dir, data, self.counter)
        log.info("stored mail %s", path.name)
        return "250 Message accepted for delivery"


class DevSmtpServer:
    """aiosmtpd in the current event loop, storing mails under `outbox_dir/mail`.
    Port 0 picks a free port (see `.port` after start)."""

    def __init__(self, outbox_dir: str | Path, *, host: str = "127.0.0.1", port: int = 2525) -> None:
        self.mail_dir = Path(outbox_dir) / "mail"
        self.host = host
        self.port = port
        self._handler = _StoreHandler(self.mail_dir)
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        if self._server is not None:
            return
        self.mail_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self._handler, hostname="devsmtp.local", ident="msp-devsmtp", loop=loop),
            host=self.host,
            port=self.port,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.close()
            await server.wait_closed()

    async def __aenter__(self) -> DevSmtpServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def serve(settings: DevSmtpSettings) -> None:
    server = DevSmtpServer(settings.dev_outbox, host=settings.dev_smtp_host, port=settings.dev_smtp_port)
    await server.start()
    print(f"dev SMTP server on {server.host}:{server.port}, storing mail in {server.mail_dir}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    settings = DevSmtpSettings()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s devsmtp %(levelname)s %(message)s")
    # aiosmtpd logs every SMTP command at INFO, recipient addresses included: keep those out.
    logging.getLogger("mail.log").setLevel(max(logging.WARNING, logging.getLogger().level))
    asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
