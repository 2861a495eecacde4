"""Helpers for auth-service tests: an API client that signs gateway identity headers, and
direct access to the service's database for arranging accounts and reading the outbox."""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, urlsplit

import asyncpg
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from msp_auth import policy, store
from msp_auth.app import create_app
from msp_auth.config import AuthSettings
from msp_auth.keys import HASHER
from msp_shared import identity, signed
from msp_shared.clock import ManualClock
from msp_shared.events import EmailRequested
from msp_shared.identity import Identity
from msp_shared.seal import Sealer
from msp_shared.web import POOL

CLIENT_IP = "203.0.113.7"
CHEAP_ARGON2 = {"argon2_time_cost": 1, "argon2_memory_kib": 1024, "hash_workers": 1}
GOOD_PASSWORD = "Tulip-Harbor-42!"  # meets practice_portal rules, not a common password


@dataclass
class Response:
    status: int
    body: Any
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes = b""


@dataclass
class Auth:
    client: TestClient
    app: web.Application
    clock: ManualClock
    secret: bytes
    verify_secret: bytes
    sealer: Sealer

    @property
    def pool(self) -> asyncpg.Pool:
        return self.app[POOL]

    # ---- HTTP -----------------------------------------------------------------------------

    async def call(self, method: str, path: str, json_body: Any = None, *, who: Identity | None = None,
                   ip: str = CLIENT_IP, headers: dict[str, str] | None = None, data: bytes | None = None) -> Response:
        ident = who or Identity(user_id=None, ip=ip)
        sign_path = urlsplit(path).path
        header = identity.sign(ident, secret=self.secret, method=method, path=sign_path,
                               now=self.clock.now().timestamp(), ttl=30)
        all_headers = {identity.HEADER: header, **(headers or {})}
        kwargs: dict[str, Any] = {"headers": all_headers}
        if data is not None:
            kwargs["data"] = data
        elif json_body is not None:
            kwargs["json"] = json_body
        async with self.client.request(method, path, **kwargs) as resp:
            raw = await resp.read()
            try:
                body = json.loads(raw) if raw else None
            except ValueError:
                body = raw.decode()
            return Response(resp.status, body, dict(resp.headers), raw)

    async def login(self, email: str, password: str, ip: str = CLIENT_IP) -> Response:
        return await self.call("POST", "/session", {"email": email, "password": password}, ip=ip)

    # ---- identities -------------------------------------------------------------------------

    @staticmethod
    def identity_of(grant: dict, *, session_id: str = "s-1", ip: str = CLIENT_IP) -> Identity:
        extra = {"restriction": grant["restriction"]} if grant.get("restriction") else {}
        return Identity(user_id=grant["user_id"], practice_id=grant["practice_id"], roles=tuple(grant["roles"]),
                        session_id=session_id, ip=ip, extra=extra)

    async def session(self, email: str, password: str) -> Identity:
        resp = await self.login(email, password)
        assert resp.status == 200, resp.body
        return self.identity_of(resp.body["grant"])

    @staticmethod
    def user_identity(user: asyncpg.Record, *, restriction: str | None = None) -> Identity:
        return Identity(user_id=str(user["id"]), practice_id=str(user["practice_id"]) if user["practice_id"] else None,
                        roles=tuple(user["roles"]), session_id="s-x", ip=CLIENT_IP,
                        extra={"restriction": restriction} if restriction else {})

    # ---- arranging data ---------------------------------------------------------------------

    async def make_practice(self, name: str = "Bright Smiles Dental") -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            return await store.create_practice(conn, name=name, address="1 Main St", phone="+12025550100",
                                               identifiers={"npi": "1234567893"}, now=self.clock.now())

    async def make_user(self, email: str, password: str | None = GOOD_PASSWORD, *, practice: asyncpg.Record | None = None,
                        roles: tuple[str, ...] = ("member",), two_step: bool = False, phone: str | None = "+12025550123",
                        status: str | None = None, invited_by: asyncpg.Record | None = None,
                        phone_verified: bool = True) -> asyncpg.Record:
        """A user; with a password, registered (verified unless `status` says otherwise) and,
        with a phone and `phone_verified`, with that number proven (as a code leaves it). The
        password is remembered as long enough alone or not, as setting it does."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            user = await store.create_user(
                conn, email=email, practice_id=practice["id"] if practice else None,
                invited_by_practice=(invited_by or practice)["id"] if (invited_by or practice) else None,
                first_name="Pat", last_name="Example", phone=phone, roles=roles, two_step_required=two_step,
                time_zone="America/New_York", now=now,
            )
            if password is not None:
                await store.set_password(conn, user["id"], await self.app[HASHER].hash(password), now,
                                         single_factor_ok=policy.single_factor_ok(password))
                await store.update_user(conn, user["id"], {"status": status or "verified", "registered_at": now,
                                                            "terms_version": "2026-01"}, now)
                if phone and phone_verified and (status or "verified") == "verified":
                    await store.update_user(conn, user["id"], {"phone_verified_at": now}, now)
            return await store.get_user(conn, user["id"])

    async def support(self) -> Identity:
        """The Support account seeded at start (MSP_SEED_SUPPORT_EMAIL)."""
        async with self.pool.acquire() as conn:
            user = await store.get_user_by_email(conn, "support@securepractice.local")
        return self.user_identity(user)

    async def user_by_email(self, email: str) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            return await store.get_user_by_email(conn, email)

    async def invitation_token(self, email: str) -> str:
        """The token of the latest invitation mailed to this address."""
        mails = [m for m in await self.emails("invitation") if m["to"] == email]
        return token_from_link(mails[-1]["link"])

    async def user(self, user_id: Any) -> asyncpg.Record:
        async with self.pool.acquire() as conn:
            return await store.get_user(conn, user_id)

    def proof(self, user_id: Any, phone: str, purpose: str, *, ttl: int = 600, secret: bytes | None = None,
              jti: str | None = None) -> str:
        claims = {"user_id": str(user_id), "phone": phone, "purpose": purpose, "verification_id": str(uuid.uuid4())}
        if jti:
            claims["jti"] = jti
        return signed.sign_claims(claims, purpose="verify-proof", secret=secret or self.verify_secret,
                                  now=self.clock.now().timestamp(), ttl=ttl)

    # ---- reading what happened --------------------------------------------------------------

    async def events(self, type_: str | None = None) -> list[dict]:
        rows = await self.pool.fetch("SELECT envelope FROM outbox ORDER BY created_at, id")
        envelopes = [json.loads(r["envelope"]) for r in rows]
        return [e for e in envelopes if type_ is None or e["type"] == type_]

    async def emails(self, template: str | None = None) -> list[dict]:
        """Requested emails, secrets opened: [{"template", "to", "link", ..., "params"}]."""
        found = []
        for env in await self.events(EmailRequested.TYPE):
            data = env["data"]
            if template is not None and data["template"] != template:
                continue
            opened = self.sealer.open(data["sealed"], context=EmailRequested.TYPE)
            found.append({"template": data["template"], "params": data["params"], **opened})
        return found

    async def audit(self, action: str | None = None) -> list[asyncpg.Record]:
        return await self.pool.fetch(
            "SELECT * FROM audit_log WHERE $1::text IS NULL OR action = $1 ORDER BY id", action
        )


def token_from_link(link: str) -> str:
    fragment = urlsplit(link).fragment  # "/reset?token=..."
    return parse_qs(urlsplit(fragment).query)["token"][0]


# mail-service, as it resolves the recipients of a message it is sending (/internal/recipients).
MAIL_SERVICE = Identity(user_id="service:mail", roles=("service",))


async def message_to(auth: Auth, sender: Any, *emails: str, phones: dict | None = None) -> list[dict]:
    """What auth answers mail-service for a message from `sender` to `emails` (new recipients invited)."""
    body: dict[str, Any] = {"emails": list(emails), "sender_id": str(sender["id"])}
    if phones is not None:
        body["phones"] = phones
    resp = await auth.call("POST", "/internal/recipients", body, who=MAIL_SERVICE)
    assert resp.status == 200, resp.body
    return resp.body["recipients"]


async def invitation_links(auth: Auth, email: str) -> list[str]:
    """The tokens of every invitation mailed to `email`, oldest first."""
    return [token_from_link(m["link"]) for m in await auth.emails("invitation") if m["to"] == email]


def violation_codes(resp: Response) -> list[str]:
    assert resp.status == 422 and resp.body["error"] == "password_rules", resp.body
    return [v["code"] for v in resp.body["details"]["violations"]]



async def start_auth(settings: AuthSettings, clock: ManualClock) -> tuple[Auth, TestClient]:
    app = create_app(settings, clock=clock)
    client = TestClient(TestServer(app))
    try:
        await client.start_server()
    except BaseException:
        await client.close()  # runs the cleanup of whatever started (pool, hasher)
        raise
    return Auth(
        client=client, app=app, clock=clock,
        secret=settings.identity_secret.get_secret_value().encode(),
        verify_secret=settings.verify_secret.get_secret_value().encode(),
        sealer=Sealer(settings.seal_key.get_secret_value()),
    ), client
