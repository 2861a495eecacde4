"""Test kit for the gateway: a small stand-in service built with msp_shared.web.service_app
(so it really verifies the gateway's identity header), the gateway from its factory, both on
real sockets, and a browser-like client with a cookie jar."""
from __future__ import annotations

import asyncio
import hashlib
import random
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web
from aiohttp.test_utils import TestServer, unused_port

from msp_shared.config import ServiceSettings
from msp_shared.web import current_identity, service_app

ALICE = uuid.UUID("11111111-1111-4111-8111-111111111111")
BOB = uuid.UUID("22222222-2222-4222-8222-222222222222")
PRACTICE = uuid.UUID("33333333-3333-4333-8333-333333333333")
PASSWORD = "Correct-Horse-9"

USERS = {
    "alice@example.com": (ALICE, ["user_manager"], None),
    "bob@example.com": (BOB, [], None),
    "expired@example.com": (uuid.UUID("44444444-4444-4444-8444-444444444444"), [], "password_expired"),
}
SEEN = web.AppKey("seen", list)
# Open (set) normally; a test clears it to hold login answers (a grant still on its way).
LOGIN_GATE = web.AppKey("login_gate", asyncio.Event)
# Each user's session epoch as auth-service would grant it (how many revocations they had).
EPOCHS = web.AppKey("epochs", dict)
# When a user's password expires, as auth-service's grant says (none unless a test sets one).
PASSWORD_EXPIRES = web.AppKey("password_expires", dict)
FILE_SIZE = 1024 * 1024 + 17


def file_bytes() -> bytes:
    return random.Random(7).randbytes(FILE_SIZE)


async def eventually(check: Callable[[], Awaitable[Any]], *, timeout: float = 15.0, what: str = "condition") -> Any:
    """Poll until `check` returns something truthy (a generous bound, not a timing assertion)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def _grant(email: str, epoch: int, password_expires_at: str | None = None) -> dict:
    user_id, roles, restriction = USERS[email]
    return {"user_id": str(user_id), "practice_id": str(PRACTICE), "roles": roles, "restriction": restriction,
            "epoch": epoch, "password_expires_at": password_expires_at}


def upstream_app(settings: ServiceSettings, clock) -> web.Application:  # noqa: ANN001
    """Speaks the login contract and records what reached it. Every route but the health
    checks sits behind service_app's identity middleware."""
    app = service_app(settings, schema=None, clock=clock)
    app[SEEN] = []
    app[LOGIN_GATE] = asyncio.Event()
    app[LOGIN_GATE].set()
    app[EPOCHS] = {}
    app[PASSWORD_EXPIRES] = {}

    def record(request: web.Request) -> None:
        request.app[SEEN].append(
            {"method": request.method, "path": request.path, "headers": dict(request.headers),
             "identity": current_identity(request)}
        )

    async def login(request: web.Request) -> web.Response:
        record(request)
        body = await request.json()
        email = str(body.get("email", "")).lower()
        epoch = request.app[EPOCHS].get(email, 0)  # read with the account, before the answer travels
        await request.app[LOGIN_GATE].wait()
        if email == "locked@example.com" and body.get("password") == PASSWORD:
            return web.json_response({"error": "account_locked", "message": "Locked.", "details": {}}, status=423)
        if email not in USERS or body.get("password") != PASSWORD:
            return web.json_response(
                {"error": "invalid_credentials", "message": "Wrong email or password.", "details": {}}, status=401
            )
        grant = _grant(email, epoch, request.app[PASSWORD_EXPIRES].get(email))
        return web.json_response({"grant": grant, "user": {"id": str(USERS[email][0]), "email": email}})

    async def registration(request: web.Request) -> web.Response:
        record(request)
        grant = _grant("bob@example.com", request.app[EPOCHS].get("bob@example.com", 0))
        return web.json_response({"grant": grant, "user": {"id": str(BOB)}}, status=201)

    async def echo(request: web.Request) -> web.Response:
        record(request)
        ident = current_identity(request)
        return web.json_response(
            {"user_id": ident.user_id, "session_id": ident.session_id, "ip": ident.ip,
             "roles": list(ident.roles), "restriction": ident.extra.get("restriction")}
        )

    async def upload(request: web.Request) -> web.Response:
        record(request)
        digest, size = hashlib.sha256(), 0
        async for chunk in request.content.iter_chunked(64 * 1024):
            digest.update(chunk)
            size += len(chunk)
        return web.json_response({"bytes": size, "sha256": digest.hexdigest()})

    async def download(request: web.Request) -> web.StreamResponse:
        record(request)
        data = file_bytes()
        headers = {"Content-Type": "application/octet-stream",
                   "Content-Disposition": 'attachment; filename="scan.bin"', "Accept-Ranges": "bytes",
                   "Set-Cookie": "tracker=1"}
        status = 200
        if request.http_range.start is not None:
            rng = request.http_range
            start, stop = rng.start, rng.stop if rng.stop is not None else len(data)
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{len(data)}"
            data, status = data[start:stop], 206
        response = web.StreamResponse(status=status, headers=headers)
        response.content_length = len(data)
        await response.prepare(request)
        for i in range(0, len(data), 50_000):
            await response.write(data[i:i + 50_000])
        await response.write_eof()
        return response

    async def big_json(request: web.Request) -> web.StreamResponse:
        record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})  # chunked
        await response.prepare(request)
        await response.write(b'{"rows": [')
        for i in range(30_000):
            await response.write(b'"%060d",' % i)
        await response.write(b'"end"], "grant_note": "no grant here"}')
        await response.write_eof()
        return response

    async def broken(request: web.Request) -> web.StreamResponse:
        record(request)
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = 1024 * 1024
        await response.prepare(request)
        await response.write(b"x" * 300_000)
        assert request.transport is not None
        request.transport.close()  # the service dies mid-answer
        return response

    app.router.add_post("/admin/export", big_json)
    app.router.add_get("/messages/m1/attachments/broken", broken)
    app.router.add_post("/session", login)
    app.router.add_post("/registrations", registration)
    app.router.add_post("/password/forgot", echo)
    app.router.add_get("/me", echo)
    app.router.add_post("/me/things", echo)
    app.router.add_delete("/me/things", echo)
    app.router.add_get("/practice/users", echo)
    app.router.add_post("/messages", upload)
    app.router.add_get("/messages/m1/attachments/a1", download)
    return app


@dataclass
class Served:
    app: web.Application
    server: TestServer

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")


async def serve(app: web.Application, port: int | None = None) -> Served:
    server = TestServer(app, host="127.0.0.1", port=port or unused_port())
    await server.start_server()
    return Served(app, server)


@dataclass
class Browser:
    """A client with its own cookie jar and the CSRF token of its last sign-in."""

    base: str
    http: aiohttp.ClientSession
    csrf: str | None = None
    user: dict = field(default_factory=dict)

    def url(self, path: str) -> str:
        return self.base + path

    async def login(self, email: str = "alice@example.com", password: str = PASSWORD) -> aiohttp.ClientResponse:
        resp = await self.http.post(self.url("/api/v1/session"), json={"email": email, "password": password})
        body = await resp.json()
        if resp.status == 200:
            self.csrf = body["csrf_token"]
            self.user = body["user"]
        resp.release()
        resp.body_json = body  # type: ignore[attr-defined]
        return resp

    def cookie(self) -> str | None:
        for c in self.http.cookie_jar:
            if c.key == "msp_session":
                return c.value
        return None

    async def get_json(self, path: str, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        async with self.http.get(self.url(path), **kw) as resp:
            return resp.status, await resp.json(), resp

    async def send(self, method: str, path: str, *, csrf: bool = True, **kw: Any) -> tuple[int, Any, aiohttp.ClientResponse]:
        headers = dict(kw.pop("headers", {}))
        if csrf and self.csrf:
            headers["X-CSRF-Token"] = self.csrf
        async with self.http.request(method, self.url(path), headers=headers, **kw) as resp:
            body = await resp.json() if resp.content_type == "application/json" else await resp.read()
            return resp.status, body, resp

    async def close(self) -> None:
        await self.http.close()


def new_browser(base: str) -> Browser:
    return Browser(base, aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)))

