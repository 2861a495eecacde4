"""How a code reaches a phone.

- OutboxTransport (local default): one JSON line per SMS or call in $MSP_DEV_OUTBOX/sms.jsonl,
  `{"to", "channel": "sms"|"call", "body", "at"}` (DESIGN.md §5); for a call the body is
  the spoken text.
- TwilioTransport (production): the official `twilio` SDK, Programmable Messaging for SMS
  and a Voice call with inline TwiML. The SDK is blocking (requests), so it runs in a small
  thread pool off the event loop. `twilio_base_url` points the unchanged SDK at another host
  (the local Twilio-protocol server) through a custom HttpClient, the SDK's documented
  extension point.
"""
from __future__ import annotations

import asyncio
import fcntl
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from twilio.base.exceptions import TwilioRestException
from twilio.http.http_client import TwilioHttpClient
from twilio.rest import Client

from msp_shared.clock import Clock

log = logging.getLogger(__name__)

SMS_FILE = "sms.jsonl"


class TransportError(Exception):
    """The provider refused or failed. `code` is the provider's error code when known;
    `permanent` means retrying the same number will not help (invalid or unreachable)."""

    def __init__(self, message: str, *, code: int | None = None, permanent: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.permanent = permanent


class Transport(Protocol):
    async def send_sms(self, to: str, body: str) -> None: ...

    async def call(self, to: str, *, twiml: str, spoken: str) -> None: ...

    async def close(self) -> None: ...


def append_sms_line(outbox_dir: str | Path, record: dict) -> None:
    """Append one JSON line, safe with concurrent writers (threads and processes): one
    write() on an O_APPEND descriptor under an exclusive flock."""
    path = Path(outbox_dir) / SMS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, ensure_ascii=False) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            os.write(fd, line)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


class OutboxTransport:
    def __init__(self, outbox_dir: str | Path, clock: Clock) -> None:
        self._dir = Path(outbox_dir)
        self._clock = clock

    async def _append(self, to: str, channel: str, body: str) -> None:
        record = {"to": to, "channel": channel, "body": body, "at": self._clock.now().isoformat()}
        await asyncio.to_thread(append_sms_line, self._dir, record)

    async def send_sms(self, to: str, body: str) -> None:
        await self._append(to, "sms", body)

    async def call(self, to: str, *, twiml: str, spoken: str) -> None:
        await self._append(to, "call", spoken)

    async def close(self) -> None:
        return None


class RedirectingHttpClient(TwilioHttpClient):
    """The SDK's own HTTP client, sending to `base_url` instead of *.twilio.com (same paths,
    same form bodies, same basic auth)."""

    def __init__(self, base_url: str, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self._base_url = base_url.rstrip("/")

    def request(self, method, url, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN201
        parts = urlsplit(url)
        if parts.hostname and parts.hostname.endswith("twilio.com"):
            url = self._base_url + parts.path + (f"?{parts.query}" if parts.query else "")
        return super().request(method, url, *args, **kwargs)


# Twilio error codes meaning "this number cannot get it", not "try again later".
PERMANENT_CODES = frozenset({21211, 21214, 21217, 21407, 21408, 21610, 21612, 21614, 13224})


class TwilioTransport:
    def __init__(
        self,
        *,
        account_sid: str,
        auth_token: str,
        from_number: str,
        base_url: str | None = None,
        timeout: float = 10.0,
        workers: int = 4,
    ) -> None:
        http_client = (
            RedirectingHttpClient(base_url, timeout=timeout) if base_url else TwilioHttpClient(timeout=timeout)
        )
        self._http = http_client
        self.client = Client(account_sid, auth_token, http_client=http_client)
        self._from = from_number
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="twilio")

    async def _run(self, fn, /, **kwargs) -> str:  # noqa: ANN001
        loop = asyncio.get_running_loop()
        try:
            instance = await loop.run_in_executor(self._executor, lambda: fn(**kwargs))
        except TwilioRestException as exc:
            # exc.msg may echo the phone number: log the code only.
            log.warning("twilio refused", extra={"twilio_code": exc.code, "http_status": exc.status})
            raise TransportError("provider refused", code=exc.code, permanent=exc.code in PERMANENT_CODES) from exc
        except Exception as exc:  # network errors, timeouts
            log.warning("twilio unreachable", extra={"error": type(exc).__name__})
            raise TransportError("provider unreachable") from exc
        return instance.sid

    async def send_sms(self, to: str, body: str) -> None:
        sid = await self._run(self.client.messages.create, to=to, from_=self._from, body=body)
        log.info("sms handed to twilio", extra={"sid": sid})

    async def call(self, to: str, *, twiml: str, spoken: str) -> None:
        sid = await self._run(self.client.calls.create, to=to, from_=self._from, twiml=twiml)
        log.info("call handed to twilio", extra={"sid": sid})

    async def close(self) -> None:
        self._executor.shutdown(wait=True)
        if self._http.session is not None:
            self._http.session.close()


def from_settings(settings, clock: Clock) -> Transport:  # noqa: ANN001 (VerifySettings)
    if settings.sms_transport == "twilio":
        return TwilioTransport(
            account_sid=settings.twilio_account_sid,
            auth_token=settings.twilio_auth_token.get_secret_value(),
            from_number=settings.twilio_from_number,
            base_url=settings.twilio_base_url,
            timeout=settings.twilio_timeout_seconds,
            workers=settings.twilio_workers,
        )
    return OutboxTransport(settings.dev_outbox, clock)
