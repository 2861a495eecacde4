"""Test kit for secure messages and Collaborator: auth-service and mail-service built from
their factories on real sockets (real PostgreSQL and RabbitMQ), mail-service calling
auth-service's /internal/recipients over HTTP, and an API client that signs gateway
identity headers, so mail-service's own authorisation is what is tested."""
from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import asyncpg
from aiohttp import MultipartWriter, hdrs, payload, web
from aiohttp.test_utils import TestClient, TestServer

from msp_auth import store as auth_store
from msp_auth.app import create_app as create_auth
from msp_auth.config import AuthSettings
from msp_mail.app import create_app as create_mail
from msp_mail.config import MailSettings
from msp_mail.messaging import store as mail_store
from msp_mail.messaging.keys import SWEEPER
from msp_shared import identity
from msp_shared.clock import ManualClock
from msp_shared.events import EmailRequested
from msp_shared.identity import Identity
from msp_shared.seal import Sealer
from msp_shared.web import POOL

CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "hash_workers": 1}
CLIENT_IP = "198.51.100.23"

PDF = b"%PDF-1.7\n" + b"scan " * 200
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4
DOCX = b"PK\x03\x04" + b"word/document.xml" * 50
DICOM = b"\x00" * 128 + b"DICM" + b"\x02" * 500
TXT = "Pre-op notes: patient Ana Lopez, tooth 14.\n".encode() * 20


@dataclass
class Resp:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass
class User:
    id: str
    email: str
    practice_id: str | None
    roles: tuple[str, ...] = ("member",)

    def identity(self, ip: str = CLIENT_IP) -> Identity:
        return Identity(user_id=self.id, practice_id=self.practice_id, roles=self.roles, session_id="s-" + self.id[:8], ip=ip)


def file_part(writer: MultipartWriter, filename: str, data: bytes | Any, content_type: str = "application/octet-stream") -> None:
    if isinstance(data, (bytes, bytearray)):
        part = writer.append(bytes(data), {hdrs.CONTENT_TYPE: content_type})
    else:
        part = writer.append_payload(payload.AsyncIterablePayload(data, content_type=content_type))
    part.set_content_disposition("form-data", name="file", filename=filename)


def compose(fields: dict, files: list[tuple[str, Any]] = ()) -> MultipartWriter:
    writer = MultipartWriter("form-data")
    part = writer.append(json.dumps(fields), {hdrs.CONTENT_TYPE: "application/json"})
    part.set_content_disposition("form-data", name="message")
    for name, data in files:
        file_part(writer, name, data)
    return writer


async def generated(size: int, head: bytes = b"", piece: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """`size` bytes starting with `head`, generated piece by piece (never held whole)."""
    block = (head + b"\x5a" * piece)[:piece]
    filler = b"\x5a" * piece
    sent = 0
    while sent < size:
        chunk = (block if sent == 0 else filler)[: size - sent]
        sent += len(chunk)
        yield chunk


@dataclass
class Stack:
    auth_app: web.Application
    mail_app: web.Application
    mail_client: TestClient
    clock: ManualClock
    secret: bytes
    sealer: Sealer
    settings: MailSettings

    @property
    def auth_pool(self) -> asyncpg.Pool:
        return self.auth_app[POOL]

    @property
    def pool(self) -> asyncpg.Pool:
        return self.mail_app[POOL]

    # ---- people -------------------------------------------------------------------------------

    async def practice(self, name: str) -> str:
        async with self.auth_pool.acquire() as conn:
            row = await auth_store.create_practice(conn, name=name, address="1 Main St", phone="+12025550100",
                                                   identifiers={}, now=self.clock.now())
        return str(row["id"])

    async def user(self, email: str, practice_id: str | None, *, paid: bool = False,
                   roles: tuple[str, ...] = ("member",)) -> User:
        now = self.clock.now()
        async with self.auth_pool.acquire() as conn:
            row = await auth_store.create_user(
                conn, email=email, practice_id=uuid.UUID(practice_id) if practice_id else None,
                invited_by_practice=uuid.UUID(practice_id) if practice_id else None, first_name="Dana",
                last_name=email.split("@")[0].title(), roles=roles, two_step_required=False,
                time_zone="America/New_York", now=now,
            )
            await auth_store.update_user(conn, row["id"], {"status": "verified", "registered_at": now}, now)
        user = User(str(row["id"]), email, practice_id, roles)
        if paid:
            await self.grant(user)
        return user

    async def grant(self, user: User) -> None:
        async with self.pool.acquire() as conn:
            await mail_store.grant_securemail(conn, uuid.UUID(user.id), uuid.UUID(user.id), self.clock.now())

    # ---- HTTP ---------------------------------------------------------------------------------

    async def call(self, method: str, path: str, who: User | Identity | None, *, json_body: Any = None,
                   data: Any = None, headers: dict[str, str] | None = None) -> Resp:
        ident = who.identity() if isinstance(who, User) else (who or Identity(user_id=None, ip=CLIENT_IP))
        signed = identity.sign(ident, secret=self.secret, method=method, path=urlsplit(path).path,
                               now=self.clock.now().timestamp(), ttl=30)
        kwargs: dict[str, Any] = {"headers": {identity.HEADER: signed, **(headers or {})}}
        if data is not None:
            kwargs["data"] = data
        elif json_body is not None:
            kwargs["json"] = json_body
        async with self.mail_client.request(method, path, **kwargs) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw and resp.content_type == "application/json" else raw
            except ValueError:
                body = raw
            return Resp(resp.status, body, dict(resp.headers), raw)

    async def send(self, who: User, to: list[str], files: list[tuple[str, Any]] = (), **fields: Any) -> Resp:
        body = {"to": to, "subject": fields.pop("subject", "Referral: lower left molar"),
                "body": fields.pop("body", "Please see the attached x-rays."), **fields}
        return await self.call("POST", "/messages", who, data=compose(body, list(files)))

    async def reply(self, who: User, message_id: str, text: str = "Thanks, received.", files=()) -> Resp:  # noqa: ANN001
        return await self.call("POST", f"/messages/{message_id}/replies", who, data=compose({"body": text}, list(files)))

    async def download(self, who: User, message_id: str, attachment_id: str, headers: dict | None = None) -> Resp:
        return await self.call("GET", f"/messages/{message_id}/attachments/{attachment_id}", who, headers=headers)

    # ---- what happened --------------------------------------------------------------------------

    async def emails(self, schema_pool: asyncpg.Pool | None = None) -> list[dict]:
        """Emails requested through an outbox (mail's by default), secrets opened."""
        pool = schema_pool or self.pool
        rows = await pool.fetch("SELECT envelope FROM outbox WHERE type = $1 ORDER BY created_at, id", EmailRequested.TYPE)
        found = []
        for row in rows:
            data = json.loads(row["envelope"])["data"]
            found.append({"template": data["template"], "params": data["params"],
                          **self.sealer.open(data["sealed"], context=EmailRequested.TYPE)})
        return found

    async def sweep(self):  # noqa: ANN201
        return await self.mail_app[SWEEPER].sweep()

    async def counts(self) -> dict[str, int]:
        return {
            table: await self.pool.fetchval(f"SELECT count(*) FROM {table}")
            for table in ("messages", "message_recipients", "attachments")
        }


@dataclass
class Running:
    stack: Stack
    servers: list


async def start_stack(base_env: dict, clock: ManualClock, tmp_path, **mail_overrides: Any) -> tuple[Stack, list]:  # noqa: ANN001
    auth_app = create_auth(AuthSettings(**base_env, **CHEAP_ARGON2, shutdown_grace_seconds=2, seed_support_email=None),
                           clock=clock)
    auth_server = TestServer(auth_app)
    await auth_server.start_server()
    settings = MailSettings(**{
        **base_env,
        "auth_url": str(auth_server.make_url("")).rstrip("/"),
        "attachment_dir": str(tmp_path / "attachments"),
        "public_url": "https://portal.example.test",
        "shutdown_grace_seconds": 2,
        "smtp_port": 1,  # nothing listens: outbound mail just waits in its table here
        "mail_retry_first_delay_seconds": 3600,
        "message_sweep_interval_seconds": 3600,  # the tests sweep by hand after moving the clock
        **mail_overrides,
    })
    mail_app = create_mail(settings, clock=clock)
    mail_client = TestClient(TestServer(mail_app))
    await mail_client.start_server()
    stack = Stack(auth_app, mail_app, mail_client, clock, settings.identity_secret.get_secret_value().encode(),
                  Sealer(settings.seal_key.get_secret_value()), settings)
    return stack, [mail_client, auth_server]


async def stop_stack(servers: list) -> None:
    for server in servers:
        await server.close()


def message_id_from_link(link: str) -> str:
    """The message id of a notification's link: the web app's route #/message?id=<id>."""
    route, _, query = urlsplit(link).fragment.partition("?")
    assert route == "/message", link
    return parse_qs(query)["id"][0]


__all__ = ["CLIENT_IP", "DICOM", "DOCX", "PDF", "PNG", "TXT", "Resp", "Stack", "User", "aiohttp", "compose",
           "file_part", "generated", "message_id_from_link", "start_stack", "stop_stack"]


import pytest  # noqa: E402


@pytest.fixture
async def stack(base_env: dict, clock: ManualClock, tmp_path) -> AsyncIterator[Stack]:  # noqa: ANN001
    s, servers = await start_stack(base_env, clock, tmp_path)
    try:
        yield s
    finally:
        await stop_stack(servers)
