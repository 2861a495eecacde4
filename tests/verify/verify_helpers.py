"""Helpers for verify-service tests (imported by the tests and the conftest)."""
from __future__ import annotations

import json
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestServer

from msp_shared import identity, signed
from msp_shared.clock import ManualClock
from msp_verify import twilio_local
from msp_verify.config import TwilioLocalSettings, VerifySettings

DEFAULT_IP = "203.0.113.7"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def phone(n: int) -> str:
    """A valid (fictional, 555-01xx) US number."""
    return f"+1201555{n:04d}"


def read_sms(outbox: Path) -> list[dict]:
    path = outbox / "sms.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]


def code_in(line: dict) -> str:
    """The code a person would read: the SMS's '#123456' tail, or the digits a call reads."""
    if line["channel"] == "sms":
        return re.search(r"#(\d+)$", line["body"]).group(1)
    return re.search(r"code is: ([\d, ]+)\.", line["body"]).group(1).replace(", ", "")


@dataclass
class Reply:
    status: int
    body: dict


@dataclass
class Verify:
    settings: VerifySettings
    clock: ManualClock
    server: TestServer
    http: aiohttp.ClientSession
    outbox: Path

    def ticket(self, user_id: uuid.UUID | str, phone_number: str, purpose: str = "registration", *, ttl: int = 900,
               secret: str | None = None) -> str:
        key = secret or self.settings.verify_secret.get_secret_value()
        return signed.sign_claims(
            {"user_id": str(user_id), "phone": phone_number, "purpose": purpose},
            purpose="verify-ticket", secret=key.encode(), now=self.clock.now().timestamp(), ttl=ttl,
        )

    async def post(self, path: str, payload: dict, *, user_id: str | None = None, ip: str | None = DEFAULT_IP) -> Reply:
        header = identity.sign(
            identity.Identity(user_id=user_id, ip=ip),
            secret=self.settings.identity_secret.get_secret_value().encode(),
            method="POST", path=path, now=self.clock.now().timestamp(), ttl=30,
        )
        async with self.http.post(self.server.make_url(path), json=payload, headers={identity.HEADER: header}) as r:
            return Reply(r.status, await r.json())

    async def send(self, ticket: str, channel: str = "sms", **kwargs: object) -> Reply:
        return await self.post("/verifications", {"ticket": ticket, "channel": channel}, **kwargs)

    async def check(self, verification_id: str, code: str, **kwargs: object) -> Reply:
        payload = {"code": code}
        if "ticket" in kwargs:
            payload["ticket"] = kwargs.pop("ticket")
        return await self.post(f"/verifications/{verification_id}/check", payload, **kwargs)

    def sms(self) -> list[dict]:
        return read_sms(self.outbox)

    def last_code(self) -> str:
        return code_in(self.sms()[-1])

    async def db(self) -> asyncpg.Connection:
        return await asyncpg.connect(self.settings.database_url, server_settings={"search_path": "verify"})


@dataclass
class LocalTwilio:
    settings: TwilioLocalSettings
    base_url: str
    app: web.Application

    @property
    def received(self) -> list[dict]:
        return self.app[twilio_local.RECEIVED]
