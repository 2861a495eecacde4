"""The hop to the services: identity header, header hygiene, streaming both ways, body limits,
unreachable services."""
from __future__ import annotations

import asyncio
import hashlib
import io
import random
import time
import tracemalloc

import aiohttp
from aiohttp import web
from yarl import URL

from msp_shared import identity
from msp_shared.config import DEV_IDENTITY_SECRET, ServiceSettings

from gateway_kit import ALICE, FILE_SIZE, SEEN, file_bytes, serve, upstream_app


async def test_a_service_refuses_requests_without_a_valid_gateway_identity(browser, upstream, clock):
    async with aiohttp.ClientSession() as direct:
        async with direct.get(upstream.url + "/me") as resp:  # no header at all
            assert resp.status == 401 and (await resp.json())["error"] == "gateway_identity_required"
        who = identity.Identity(user_id=str(ALICE), roles=("support",))
        now = clock.now().timestamp()
        forged = identity.sign(who, secret=b"not-the-secret", method="GET", path="/me", now=now, ttl=30)
        async with direct.get(upstream.url + "/me", headers={identity.HEADER: forged}) as resp:
            assert resp.status == 401
        secret = DEV_IDENTITY_SECRET.encode()
        other_path = identity.sign(who, secret=secret, method="GET", path="/practice/users", now=now, ttl=30)
        async with direct.get(upstream.url + "/me", headers={identity.HEADER: other_path}) as resp:
            assert resp.status == 401  # a captured header does not open another endpoint
        stale = identity.sign(who, secret=secret, method="GET", path="/me", now=now - 60, ttl=30)
        async with direct.get(upstream.url + "/me", headers={identity.HEADER: stale}) as resp:
            assert resp.status == 401  # nor the same one later
        assert upstream.app[SEEN] == []  # nothing got past the middleware
    assert (await browser.login()).status == 200
    status, echo, _ = await browser.get_json("/api/v1/me")
    assert status == 200 and echo["user_id"] == str(ALICE)


async def test_client_identity_headers_cookies_and_csrf_tokens_are_not_forwarded(browser, upstream, clock):
    who = identity.Identity(user_id="99999999-9999-4999-8999-999999999999", roles=("support",))
    forged = identity.sign(who, secret=DEV_IDENTITY_SECRET.encode(), method="GET", path="/me",
                           now=clock.now().timestamp(), ttl=30)  # even a correctly signed one
    status, echo, _ = await browser.get_json("/api/v1/me", headers={identity.HEADER: forged})
    assert status == 200 and echo["user_id"] is None and echo["roles"] == []  # anonymous, not "support"

    assert (await browser.login()).status == 200
    browser.http.cookie_jar.update_cookies({"other": "1"})
    status, echo, _ = await browser.send(
        "POST", "/api/v1/me/things", json={}, headers={identity.HEADER: forged, "X-Forwarded-For": "6.6.6.6",
                                                      "Connection": "X-Secret", "X-Secret": "hop", "X-Kept": "yes"}
    )
    assert status == 200 and echo["user_id"] == str(ALICE) and echo["ip"] == "127.0.0.1"
    seen = {k.lower(): v for k, v in upstream.app[SEEN][-1]["headers"].items()}
    assert "cookie" not in seen and "x-csrf-token" not in seen and "x-forwarded-for" not in seen
    assert "x-secret" not in seen  # named in Connection: hop-by-hop
    assert seen["x-kept"] == "yes"
    assert seen["x-msp-identity"] != forged


async def test_streamed_upload_passes_through_intact_in_bounded_memory(browser, upstream):
    assert (await browser.login()).status == 200
    size, chunk = 50 * 1024 * 1024, 256 * 1024
    rng = random.Random(42)
    sent = hashlib.sha256()

    async def body():
        for _ in range(size // chunk):
            data = rng.randbytes(chunk)
            sent.update(data)
            yield data

    tracemalloc.start()
    try:
        status, result, _ = await browser.send(
            "POST", "/api/v1/messages", data=body(), headers={"Content-Type": "application/octet-stream"}
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert status == 200
    assert result == {"bytes": size, "sha256": sent.hexdigest()}
    # client, gateway and service all live in this process: 50 MB passed, a few MB at most held
    assert peak < 8 * 1024 * 1024, peak


async def test_upload_with_a_declared_length_keeps_it(browser, upstream):
    assert (await browser.login()).status == 200
    payload = b"x" * 300_000
    status, result, _ = await browser.send("POST", "/api/v1/messages", data=payload,
                                           headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert status == 200 and result["bytes"] == len(payload)
    seen = upstream.app[SEEN][-1]["headers"]
    assert seen.get("Content-Length") == str(len(payload)) and "Transfer-Encoding" not in seen


async def test_streamed_upload_over_the_limit_is_cut_off(make_gateway, browsers):
    gateway = await make_gateway(upload_body_limit_bytes=1024 * 1024)
    browser = browsers(gateway.url)
    assert (await browser.login()).status == 200

    async def body():
        for _ in range(64):
            yield b"y" * 65536  # 4 MiB, no Content-Length: only counting catches it

    status, error, _ = await browser.send("POST", "/api/v1/messages", data=body())
    assert status == 413 and error["error"] == "too_large"
    status, error, _ = await browser.send("POST", "/api/v1/messages", data=io.BytesIO(b"z" * (1024 * 1024 + 1)))
    assert status == 413 and error["error"] == "too_large"


async def test_oversized_json_body_is_refused(browser, upstream):
    assert (await browser.login()).status == 200
    big = {"note": "a" * (70 * 1024)}
    status, error, _ = await browser.send("POST", "/api/v1/me/things", json=big)
    assert status == 413 and error["error"] == "too_large" and set(error) == {"error", "message", "details"}

    async def chunked():
        yield b'{"note": "'
        for _ in range(20):
            yield b"a" * 8192
        yield b'"}'

    status, error, _ = await browser.send("POST", "/api/v1/me/things", data=chunked(),
                                          headers={"Content-Type": "application/json"})
    assert status == 413
    assert all(s["path"] != "/me/things" for s in upstream.app[SEEN])  # never reached the service
    status, _, _ = await browser.send("POST", "/api/v1/me/things", json={"note": "small"})
    assert status == 200


async def test_downloads_stream_back_with_range_and_disposition(browser):
    assert (await browser.login()).status == 200
    async with browser.http.get(browser.url("/api/v1/messages/m1/attachments/a1")) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == 'attachment; filename="scan.bin"'
        assert resp.headers["Content-Length"] == str(FILE_SIZE)
        assert "tracker" not in resp.cookies  # services do not set cookies through the gateway
        # a streamed answer gets the security headers too (set before it is prepared)
        assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
        assert await resp.read() == file_bytes()
    async with browser.http.get(browser.url("/api/v1/messages/m1/attachments/a1"),
                                headers={"Range": "bytes=100-199"}) as resp:
        assert resp.status == 206
        assert resp.headers["Content-Range"] == f"bytes 100-199/{FILE_SIZE}"
        assert await resp.read() == file_bytes()[100:200]


async def test_unreachable_service_gets_the_uniform_error(make_gateway, browsers):
    from aiohttp.test_utils import unused_port

    gateway = await make_gateway(mail_url=f"http://127.0.0.1:{unused_port()}")
    browser = browsers(gateway.url)
    assert (await browser.login()).status == 200
    status, error, _ = await browser.get_json("/api/v1/messages?folder=inbox")
    assert status == 503
    assert error["error"] == "service_unavailable" and set(error) == {"error", "message", "details"}


async def test_unknown_area_is_404_and_dot_segments_do_not_escape(browser, upstream):
    status, error, _ = await browser.get_json("/api/v1/nowhere")
    assert status == 404 and error == {"error": "not_found", "message": "No such API endpoint.", "details": {}}
    for raw in ("/api/v1/me/%2E%2E/admin", "/api/v1/me/../admin", "/api/v1/../../healthz"):
        async with browser.http.get(URL(browser.url(raw), encoded=True)) as resp:
            assert resp.status == 404, raw
    assert upstream.app[SEEN] == []


async def test_health_endpoints(gateway):
    async with aiohttp.ClientSession() as http:
        async with http.get(gateway.url + "/healthz") as resp:
            assert resp.status == 200
        async with http.get(gateway.url + "/readyz") as resp:
            body = await resp.json()
            assert resp.status == 200 and body["status"] == "ready", body


async def test_slow_service_answer_is_relayed_not_buffered(base_env, clock, make_gateway, browsers):
    """A response without Content-Length is relayed chunk by chunk as the service writes it."""
    got_first = []

    async def drip(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        for _ in range(200):  # wait (bounded) until the client has seen the first chunk
            if got_first:
                break
            await __import__("asyncio").sleep(0.01)
        await response.write(b"second")
        await response.write_eof()
        return response

    app = upstream_app(ServiceSettings(**base_env), clock)
    app.router.add_get("/billing/stream", drip)
    other = await serve(app)
    try:
        gateway = await make_gateway(billing_url=other.url)
        browser = browsers(gateway.url)
        started = time.monotonic()
        async with browser.http.get(browser.url("/api/v1/billing/stream")) as resp:
            first = await resp.content.readexactly(6)
            got_first.append(True)
            rest = await resp.read()
        assert first == b"first;" and rest == b"second"
        assert time.monotonic() - started < 10  # the first chunk did not wait for the last
    finally:
        await other.server.close()


async def test_large_auth_answers_without_a_grant_stream_through(browser):
    assert (await browser.login()).status == 200
    status, body, resp = await browser.send("POST", "/api/v1/admin/export", json={})
    assert status == 200 and len(body["rows"]) == 30_001 and body["grant_note"] == "no grant here"
    assert "msp_session" not in resp.cookies  # no sign-in happened


async def test_an_answer_that_breaks_off_is_not_passed_on_as_complete(browser):
    assert (await browser.login()).status == 200
    async with browser.http.get(browser.url("/api/v1/messages/m1/attachments/broken")) as resp:
        assert resp.status == 200
        try:
            await resp.read()
        except aiohttp.ClientPayloadError:
            pass
        else:
            raise AssertionError("a truncated body was delivered as complete")
    status, _, _ = await browser.get_json("/api/v1/me")  # the gateway is fine
    assert status == 200


async def test_a_service_that_does_not_answer_gets_the_uniform_error_in_time(base_env, clock, make_gateway, browsers):
    """A hung service: no answer at all, an answer whose (small) body never completes, or a
    sign-in that never comes back, each give a 502 within the read timeout; a streamed answer
    that falls silent mid-way has its connection cut (its headers are already out)."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def stall_small_body(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.content_length = 100
        await response.prepare(request)
        await response.write(b'{"partial": ')
        await release.wait()
        return response

    async def stall_stream(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})  # chunked
        await response.prepare(request)
        await response.write(b"x" * 1000)
        await release.wait()
        return response

    app = upstream_app(ServiceSettings(**base_env), clock)
    app.router.add_get("/billing/hang", hang)
    app.router.add_get("/billing/stall", stall_small_body)
    app.router.add_get("/billing/stream", stall_stream)
    app.router.add_post("/registrations/verify", hang)  # a sign-in route of auth-service
    other = await serve(app)
    try:
        gateway = await make_gateway(billing_url=other.url, auth_url=other.url, upstream_read_timeout_seconds=0.5)
        browser = browsers(gateway.url)
        for method, path in (("GET", "/api/v1/billing/hang"), ("GET", "/api/v1/billing/stall"),
                             ("POST", "/api/v1/registrations/verify")):
            started = time.monotonic()
            answer = browser.send(method, path, **({"json": {}} if method == "POST" else {}))
            status, error, resp = await asyncio.wait_for(answer, timeout=10)  # a failure, not a hung test
            assert time.monotonic() - started < 5, path  # 0.5 s and some slack, not forever
            assert status == 502 and error["error"] == "service_unavailable", (path, status, error)
            assert set(error) == {"error", "message", "details"}
            assert resp.headers["X-Frame-Options"] == "DENY" and resp.headers["Cache-Control"] == "no-store"
        started = time.monotonic()
        async with browser.http.get(browser.url("/api/v1/billing/stream")) as resp:
            assert resp.status == 200
            try:
                await asyncio.wait_for(resp.read(), timeout=10)
            except aiohttp.ClientPayloadError:
                pass
            else:
                raise AssertionError("a stalled stream was delivered as complete")
        assert time.monotonic() - started < 5
        assert (await browser.login()).status == 200  # the gateway is fine
    finally:
        release.set()
        await other.server.close()


async def test_requests_without_a_route_get_the_uniform_error_and_headers(gateway):
    """No middleware: the catch-all routes answer what the router does not, in the API's shape."""
    async with aiohttp.ClientSession() as http:
        for method, path in (("POST", "/"), ("PUT", "/login"), ("DELETE", "/healthz"), ("POST", "/assets/app.js")):
            async with http.request(method, gateway.url + path) as resp:
                assert resp.status == 405, (method, path)
                body = await resp.json()
                assert body["error"] == "method_not_allowed" and set(body) == {"error", "message", "details"}
                assert resp.headers["X-Content-Type-Options"] == "nosniff"
        for path in ("/assets/../index.html", "/assets/%2e%2e/app.js", "/assets/nothing/app.js", "/assets/"):
            async with http.get(URL(gateway.url + path, encoded=True)) as resp:
                assert resp.status == 404 or (resp.status == 200 and "text/html" in resp.headers["Content-Type"]), path
                assert resp.headers["X-Frame-Options"] == "DENY"
        async with http.get(gateway.url + "/assets/missing.js") as resp:
            assert resp.status == 404 and (await resp.json())["error"] == "not_found"
        async with http.head(gateway.url + "/assets/app.js") as resp:
            assert resp.status == 200 and resp.headers["Content-Security-Policy"]


async def test_other_api_paths_still_take_the_session_step(browser, clock):
    """/api/ outside /api/v1/: a dead cookie is reported (and cleared) before the 404."""
    assert (await browser.login()).status == 200
    clock.advance(hours=13)  # past the absolute lifetime
    status, error, resp = await browser.get_json("/api/nothing")
    assert status == 401 and error["error"] == "session_expired"
    assert resp.headers["Cache-Control"] == "no-store"
    status, error, _ = await browser.get_json("/api/nothing")  # the cookie was cleared
    assert status == 404 and error["error"] == "not_found"
    status, error, _ = await browser.send("PUT", "/api/nothing", json={})
    assert status == 405 and error["error"] == "method_not_allowed"
