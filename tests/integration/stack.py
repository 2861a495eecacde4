"""The whole stack for end-to-end tests through the gateway: gateway, auth-, verify-, mail-
and billing-service built from their factories on real sockets (real PostgreSQL and
RabbitMQ), one ManualClock shared by all of them, mail delivered to the dev SMTP server and
read back from its .eml files, SMS and voice codes read from the dev outbox's sms.jsonl.

billing-service talks to the local Stripe-compatible server (msp_billing.stripe_local, also
on a real socket) through the official stripe SDK, as in tests/billing; that server signs
its webhooks and posts them to the gateway's public URL, the way Stripe reaches billing in
production (POST /api/v1/billing/webhooks/stripe, the one route without a session).

Use the `stack` fixture (tests/integration/conftest.py). A test module changes a service's
settings by overriding the `stack_settings` fixture:

    @pytest.fixture
    def stack_settings() -> dict:
        return {"auth": {"lockout_threshold": 3}}
"""
from __future__ import annotations

import asyncio
import email
import email.policy
import json
import re
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer

from msp_auth.app import create_app as create_auth
from msp_auth.config import AuthSettings
from msp_billing import stripe_local
from msp_billing.app import create_app as create_billing
from msp_billing.config import BillingSettings
from msp_gateway.app import create_app as create_gateway
from msp_gateway.config import GatewaySettings
from msp_mail.app import create_app as create_mail
from msp_mail.config import MailSettings
from msp_mail.devsmtp import DevSmtpServer
from msp_shared.clock import ManualClock
from msp_verify.app import create_app as create_verify
from msp_verify.config import VerifySettings

# The seeded Support account (auth-service creates it at start).
SUPPORT_EMAIL = "support@stack.test"
SUPPORT_PASSWORD = "Harbor-Operator-Lantern-73!"

# The local Stripe server's keys for the stack (any sk_test_/whsec_ pair shared by both ends).
STRIPE_API_KEY = "sk_test_msp_stack"
STRIPE_WEBHOOK_SECRET = "whsec_msp_stack"


@dataclass
class Stack:
    gateway: str  # base URL, e.g. http://127.0.0.1:PORT (the public URL mails link to)
    auth_app: web.Application
    verify_app: web.Application
    mail_app: web.Application
    gateway_app: web.Application
    dev_outbox: Path
    amqp_url: str
    exchange: str
    clock: ManualClock
    billing_app: web.Application
    stripe: stripe_local.StripeState  # the local Stripe server's objects (customers, subscriptions, invoices)
    browsers: list[Browser] = field(default_factory=list)

    def browser(self) -> Browser:
        """A new browser (own cookie jar); closed with the stack, even when a test fails."""
        browser = Browser(self.gateway)
        self.browsers.append(browser)
        return browser

    # Dev outbox readers bound to this stack's folder.
    def mails(self) -> list[EmailMessage]:
        return mails(self.dev_outbox)

    def mail_count(self) -> int:
        return mail_count(self.dev_outbox)

    async def mail_to(self, address: str, *, after: int = 0, subject: str | None = None,
                      timeout: float = 20.0) -> EmailMessage:
        return await wait_mail(self.dev_outbox, address, after=after, subject=subject, timeout=timeout)

    def sms(self) -> list[dict]:
        return sms_records(self.dev_outbox)

    async def code_for(self, phone: str, *, after: int = 0, channel: str | None = None,
                       timeout: float = 20.0) -> str:
        return await wait_code(self.dev_outbox, phone, after=after, channel=channel, timeout=timeout)


async def eventually(check: Callable[[], Any], *, timeout: float = 20.0, what: str = "condition") -> Any:
    """Poll `check` (sync or async) until it returns something truthy; bounded."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


@asynccontextmanager
async def build_stack(base_env: dict, clock: ManualClock, dev_outbox: Path, tmp_path: Path,
                      overrides: dict[str, dict] | None = None) -> AsyncIterator[Stack]:
    """Start the five services, the local Stripe server and the dev SMTP server; `overrides`
    maps "auth", "verify", "mail", "billing", "gateway" to extra settings for that service."""
    overrides = overrides or {}
    servers: list[TestServer] = []

    async def serve(app: web.Application, sock: socket.socket | None = None) -> str:
        # Port 0 (the kernel picks) or a socket bound in advance: never a port number that
        # another process could take between choosing it and binding it.
        server = TestServer(app, host="127.0.0.1", port=0,
                            **({"socket_factory": lambda *_: sock} if sock is not None else {}))
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    # The gateway's address must be known before the apps are built (links in emails, the
    # allowed origin), so its socket is bound first and handed over when it starts.
    gateway_sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    gateway_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    gateway_sock.bind(("127.0.0.1", 0))
    gateway_port = gateway_sock.getsockname()[1]
    public_url = f"http://127.0.0.1:{gateway_port}"
    async with DevSmtpServer(dev_outbox, port=0) as smtp:
        smtp_port = smtp.port
        try:
            # Cheap argon2 parameters: tests hash many passwords.
            auth_app = create_auth(AuthSettings(**{
                **base_env, "argon2_time_cost": 1, "argon2_memory_kib": 1024, "hash_workers": 1,
                "public_url": public_url, "seed_support_email": SUPPORT_EMAIL,
                "seed_support_password": SUPPORT_PASSWORD, "shutdown_grace_seconds": 2,
                **overrides.get("auth", {})}), clock=clock)
            auth_url = await serve(auth_app)
            verify_app = create_verify(VerifySettings(**{
                **base_env, "sms_origin_host": "127.0.0.1", **overrides.get("verify", {})}), clock=clock)
            verify_url = await serve(verify_app)
            mail_app = create_mail(MailSettings(**{
                **base_env, "auth_url": auth_url, "smtp_port": smtp_port, "public_url": public_url,
                "mail_scan_interval_seconds": 0.1, "attachment_dir": str(tmp_path / "attachments"),
                "shutdown_grace_seconds": 2, "message_sweep_interval_seconds": 3600,
                **overrides.get("mail", {})}), clock=clock)
            mail_url = await serve(mail_app)
            # Stripe's clock is the real one: the SDK checks webhook signatures against it.
            stripe_app = stripe_local.create_app(
                api_key=STRIPE_API_KEY, webhook_secret=STRIPE_WEBHOOK_SECRET,
                webhook_url=f"{public_url}/api/v1/billing/webhooks/stripe")
            stripe_state = stripe_app[stripe_local.STATE]
            stripe_url = await serve(stripe_app)
            billing_app = create_billing(BillingSettings(**{
                **base_env, "auth_url": auth_url, "stripe_api_key": STRIPE_API_KEY, "stripe_api_base": stripe_url,
                "stripe_webhook_secret": STRIPE_WEBHOOK_SECRET, "stripe_max_network_retries": 0,
                "shutdown_grace_seconds": 2, **overrides.get("billing", {})}), clock=clock)
            billing_url = await serve(billing_app)
            gateway_app = create_gateway(GatewaySettings(**{
                **base_env, "auth_url": auth_url, "verify_url": verify_url, "mail_url": mail_url,
                "billing_url": billing_url, "public_url": public_url, "shutdown_grace_seconds": 2,
                "session_purge_seconds": 3600, **overrides.get("gateway", {})}), clock=clock)
            await serve(gateway_app, gateway_sock)
            stack = Stack(public_url, auth_app, verify_app, mail_app, gateway_app, dev_outbox,
                          base_env["amqp_url"], base_env["bus_exchange"], clock,
                          billing_app=billing_app, stripe=stripe_state)
            try:
                yield stack
            finally:
                stripe_state.webhook_url = None  # no deliveries to a gateway that is stopping
                for browser in stack.browsers:
                    await browser.close()
        finally:
            for server in reversed(servers):
                await server.close()
            gateway_sock.close()  # if the gateway never started; closing twice is harmless


class Browser:
    """One browser: its own cookie jar; state-changing requests carry X-CSRF-Token (taken
    from any answer that has a csrf_token, or fetched from GET /api/v1/session)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        self.csrf: str | None = None

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, dict]:
        """`path` is relative to /api/v1; returns (status, JSON body or raw bytes, headers)."""
        headers = dict(kw.pop("headers", {}))
        if method not in ("GET", "HEAD") and "X-CSRF-Token" not in headers:
            if self.csrf is None and self.signed_in_cookie():
                await self.refresh_csrf()
            if self.csrf:
                headers["X-CSRF-Token"] = self.csrf
        async with self.http.request(method, self.base + "/api/v1" + path, headers=headers, **kw) as resp:
            raw = await resp.read()
            body = json.loads(raw) if resp.content_type == "application/json" and raw else raw
            if isinstance(body, dict) and body.get("csrf_token"):
                self.csrf = body["csrf_token"]
            return resp.status, body, dict(resp.headers)

    def signed_in_cookie(self) -> bool:
        return any(True for _ in self.http.cookie_jar)

    async def refresh_csrf(self) -> str | None:
        """Ask the gateway for the current session's token (GET /api/v1/session)."""
        async with self.http.get(self.base + "/api/v1/session") as resp:
            body = await resp.json() if resp.content_type == "application/json" else {}
            self.csrf = body.get("csrf_token") if resp.status == 200 else None
        return self.csrf

    async def login(self, email_address: str, password: str) -> tuple[int, Any, dict]:
        return await self.call("POST", "/session", json={"email": email_address, "password": password})

    async def close(self) -> None:
        await self.http.close()

    async def __aenter__(self) -> Browser:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


# ---- dev outbox: mail ----------------------------------------------------------------------

def _mail_files(outbox: Path) -> list[Path]:
    return sorted((outbox / "mail").glob("*.eml"))


def mails(outbox: Path) -> list[EmailMessage]:
    """Every mail the dev SMTP server stored, oldest first."""
    return [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)  # type: ignore[misc]
            for p in _mail_files(outbox)]


def mail_count(outbox: Path) -> int:
    return len(_mail_files(outbox))


def text_of(message: EmailMessage) -> str:
    return "".join(part.get_content() for part in message.walk() if part.get_content_maintype() == "text")


def links(message: EmailMessage) -> list[str]:
    """Every http(s) link in the mail's text parts, in order, without duplicates."""
    found = re.findall(r"https?://[^\s\"'<>)]+", text_of(message))
    return list(dict.fromkeys(link.rstrip(".,;") for link in found))


def link_token(link: str) -> str:
    """The `token` parameter of a link, also inside an SPA fragment (/#/register?token=...)."""
    parts = urlsplit(link)
    query = parse_qs(parts.query) or parse_qs(urlsplit(parts.fragment).query)
    return query["token"][0]


def token_link(message: EmailMessage, marker: str) -> str:
    """The token of the mail's link whose URL contains `marker` (e.g. "register", "reset")."""
    for link in links(message):
        if marker in link and "token=" in link:
            return link_token(link)
    raise AssertionError(f"no {marker!r} link with a token in the mail: {links(message)}")


def latest_mail(outbox: Path, address: str, *, after: int = 0, subject: str | None = None) -> EmailMessage | None:
    """The newest mail to `address` among those stored after the first `after` ones."""
    for message in reversed(mails(outbox)[after:]):
        if address.lower() in str(message["To"]).lower() and (subject is None or subject in str(message["Subject"])):
            return message
    return None


async def wait_mail(outbox: Path, address: str, *, after: int = 0, subject: str | None = None,
                    timeout: float = 20.0) -> EmailMessage:
    return await eventually(lambda: latest_mail(outbox, address, after=after, subject=subject),
                            timeout=timeout, what=f"a mail ({subject or 'any'})")


# ---- dev outbox: SMS and voice calls --------------------------------------------------------

def sms_records(outbox: Path) -> list[dict]:
    path = outbox / "sms.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def code_in(body: str) -> str:
    """The 6-digit code of an SMS ("... #123456") or a call ("... 1, 2, 3, 4, 5, 6.")."""
    found = re.search(r"\b(\d{6})\b", body) or re.search(r"\b(\d(?:, \d){5})\b", body)
    if not found:
        raise AssertionError("no code in the message")
    return found.group(1).replace(", ", "")


def latest_code(outbox: Path, phone: str, *, after: int = 0, channel: str | None = None) -> str | None:
    """The code of the newest SMS/call to `phone` among records after the first `after`."""
    for record in reversed(sms_records(outbox)[after:]):
        if record["to"] == phone and (channel is None or record["channel"] == channel):
            return code_in(record["body"])
    return None


async def wait_code(outbox: Path, phone: str, *, after: int = 0, channel: str | None = None,
                    timeout: float = 20.0) -> str:
    return await eventually(lambda: latest_code(outbox, phone, after=after, channel=channel),
                            timeout=timeout, what=f"a code for the phone ({channel or 'any'})")
