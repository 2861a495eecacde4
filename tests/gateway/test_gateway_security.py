"""CSRF, cross-site requests, security headers, rate limits and the client address."""
from __future__ import annotations

import asyncio

import aiohttp

from gateway_kit import PASSWORD, SEEN

SECURITY = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


async def test_cookie_authenticated_changes_need_the_csrf_token(browser, upstream):
    assert (await browser.login()).status == 200
    before = len(upstream.app[SEEN])
    status, error, _ = await browser.send("POST", "/api/v1/me/things", json={}, csrf=False)
    assert status == 403 and error["error"] == "csrf_failed"
    status, error, _ = await browser.send("DELETE", "/api/v1/me/things", csrf=False,
                                          headers={"X-CSRF-Token": "0" * 64})
    assert status == 403 and error["error"] == "csrf_failed"
    assert len(upstream.app[SEEN]) == before  # refused before reaching the service
    status, _, _ = await browser.send("POST", "/api/v1/me/things", json={})
    assert status == 200
    status, _, _ = await browser.get_json("/api/v1/me")  # reads need no token
    assert status == 200


async def test_csrf_token_of_another_session_does_not_work(browser, browsers, gateway):
    other = browsers(gateway.url)
    assert (await other.login(email="bob@example.com")).status == 200
    assert (await browser.login()).status == 200
    status, error, _ = await browser.send("POST", "/api/v1/me/things", json={}, csrf=False,
                                          headers={"X-CSRF-Token": other.csrf})
    assert status == 403 and error["error"] == "csrf_failed"


async def test_login_refuses_forms_and_other_sites(browser, database_url):
    async with browser.http.post(browser.url("/api/v1/session"),
                                 data={"email": "alice@example.com", "password": PASSWORD}) as resp:
        assert resp.status == 415 and (await resp.json())["error"] == "json_required"
    for headers in ({"Origin": "https://evil.example"}, {"Sec-Fetch-Site": "cross-site"}):
        async with browser.http.post(browser.url("/api/v1/session"), headers=headers,
                                     json={"email": "alice@example.com", "password": PASSWORD}) as resp:
            assert resp.status == 403 and (await resp.json())["error"] == "cross_site_request"
            assert "msp_session" not in resp.cookies
    localhost = browser.base.replace("127.0.0.1", "localhost")  # the same server by another name
    async with browser.http.post(localhost + "/api/v1/session", headers={"Origin": localhost},
                                 json={"email": "alice@example.com", "password": PASSWORD}) as resp:
        assert resp.status == 200
    same = {"Origin": browser.base, "Sec-Fetch-Site": "same-origin"}
    async with browser.http.post(browser.url("/api/v1/session"), headers=same,
                                 json={"email": "alice@example.com", "password": PASSWORD}) as resp:
        assert resp.status == 200


async def test_signed_in_reads_from_another_site_are_refused(browser, browsers, gateway):
    """Opening a message is a GET with effects (it is marked opened): a link on another site,
    followed by a signed-in recipient, must not set them off."""
    assert (await browser.login()).status == 200
    for headers in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"}, {"Origin": "https://evil.example"}):
        status, error, _ = await browser.get_json("/api/v1/me", headers=headers)
        assert status == 403 and error["error"] == "cross_site_request", headers
    for headers in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": browser.base}):
        assert (await browser.get_json("/api/v1/me", headers=headers))[0] == 200, headers  # the app, or a bookmark
    # without a session cookie a read is anyone's, from anywhere (the API's description)
    anonymous = browsers(gateway.url)
    status, doc, _ = await anonymous.get_json("/api/v1/openapi.json", headers={"Sec-Fetch-Site": "cross-site"})
    assert status == 200 and doc["openapi"].startswith("3.")


async def test_a_crafted_session_cookie_is_an_unknown_session_not_a_crash(gateway):
    """Raw bytes, as no well-behaved client would send them: undecodable UTF-8 in a quoted cookie."""
    host, port = gateway.server.host, gateway.server.port
    for value in (b'"\xff\xfe"', b"\xc3\xa9t\xc3\xa9", b'"\xed\xb3\xbf"'):
        reader, writer = await asyncio.open_connection(host, port)
        writer.write(b"GET /api/v1/me HTTP/1.1\r\nHost: x\r\nConnection: close\r\nCookie: msp_session=" + value + b"\r\n\r\n")
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401", (value, status_line)


async def test_security_headers_on_every_kind_of_response(browser, gateway):
    assert (await browser.login()).status == 200
    checks = [("/api/v1/me", 200), ("/api/v1/nowhere", 404), ("/", 200), ("/assets/app.js", 200), ("/healthz", 200)]
    for path, expected in checks:
        async with browser.http.get(browser.url(path)) as resp:
            assert resp.status == expected, path
            for name, value in SECURITY.items():
                assert resp.headers[name] == value, (path, name)
            csp = resp.headers["Content-Security-Policy"]
            for part in ("default-src 'self'", "frame-ancestors 'none'", "object-src 'none'", "base-uri 'self'"):
                assert part in csp
            assert "Permissions-Policy" in resp.headers
            assert "Strict-Transport-Security" not in resp.headers  # plain http on localhost
            if path.startswith("/api/"):
                assert resp.headers["Cache-Control"] == "no-store"


async def test_outside_localhost_the_cookie_is_secure_and_hsts_is_sent(make_gateway, browsers):
    gateway = await make_gateway(public_url="https://portal.example.test", allowed_origins=[])
    browser = browsers(gateway.url)
    resp = await browser.login()
    assert resp.status == 200
    assert resp.cookies["msp_session"]["secure"]
    assert "max-age=" in resp.headers["Strict-Transport-Security"]


async def test_login_rate_limits_per_account_and_per_ip(make_gateway, browsers, clock):
    gateway = await make_gateway(rate_limit_login_per_account=3, rate_limit_login_per_ip=6,
                                 rate_limit_window_seconds=600)
    browser = browsers(gateway.url)
    for _ in range(3):
        assert (await browser.login(password="wrong")).status == 401
    resp = await browser.login()  # right password, but the account's budget is spent
    assert resp.status == 429
    assert resp.body_json["error"] == "rate_limited" and set(resp.body_json) == {"error", "message", "details"}
    assert 0 < int(resp.headers["Retry-After"]) <= 600
    # refused attempts count against the address too: 4 used, 2 left for any account, then none
    assert (await browser.login(email="bob@example.com")).status == 200
    assert (await browser.login(email="Bob@Example.com ", password="wrong")).status == 401
    assert (await browser.login(email="nobody@example.com")).status == 429
    clock.advance(minutes=11)  # the window slides past the old attempts
    assert (await browser.login()).status == 200


async def test_forged_x_forwarded_for_does_not_dodge_the_limit(make_gateway, browsers):
    gateway = await make_gateway(rate_limit_sensitive_per_ip=3, rate_limit_sensitive_per_account=100)
    browser = browsers(gateway.url)
    statuses = []
    for n in range(5):
        status, _, _ = await browser.send("POST", "/api/v1/password/forgot", json={"email": f"u{n}@example.com"},
                                          headers={"X-Forwarded-For": f"10.0.0.{n}"})
        statuses.append(status)
    assert statuses == [200, 200, 200, 429, 429]


async def test_trusted_proxy_forwarded_address_is_used(make_gateway, browsers, upstream):
    gateway = await make_gateway(trusted_proxies=["127.0.0.0/8"], rate_limit_sensitive_per_ip=1,
                                 rate_limit_sensitive_per_account=100)
    browser = browsers(gateway.url)
    for n in range(3):  # each a different client behind our proxy: its own budget
        status, echo, _ = await browser.send("POST", "/api/v1/password/forgot", json={"email": "a@example.com"},
                                             headers={"X-Forwarded-For": f"203.0.113.{n}, 127.0.0.5"})
        assert status == 200 and echo["ip"] == f"203.0.113.{n}"
    status, _, _ = await browser.send("POST", "/api/v1/password/forgot", json={"email": "a@example.com"},
                                      headers={"X-Forwarded-For": "203.0.113.0"})
    assert status == 429


async def test_signed_in_sensitive_routes_are_limited_per_user(make_gateway, browsers):
    gateway = await make_gateway(rate_limit_sensitive_per_ip=100, rate_limit_sensitive_per_account=2,
                                 rate_limit_store="memory")
    alice, bob = browsers(gateway.url), browsers(gateway.url)
    assert (await alice.login()).status == 200 and (await bob.login(email="bob@example.com")).status == 200
    for _ in range(2):
        assert (await alice.send("POST", "/api/v1/password/forgot", json={}))[0] == 200
    assert (await alice.send("POST", "/api/v1/password/forgot", json={}))[0] == 429
    assert (await bob.send("POST", "/api/v1/password/forgot", json={}))[0] == 200


async def test_web_app_is_served(gateway):
    async with aiohttp.ClientSession() as http:
        for path in ("/", "/login", "/reset"):
            async with http.get(gateway.url + path) as resp:
                assert resp.status == 200 and "text/html" in resp.headers["Content-Type"]
                assert '<script src="/assets/app.js"' in await resp.text()
        async with http.get(gateway.url + "/assets/app.css") as resp:
            assert resp.status == 200
        async with http.get(gateway.url + "/assets/missing.js") as resp:
            assert resp.status == 404
