"""The gateway's pure rules: routing, client address, session expiry, CSRF origin checks,
the sliding window. No I/O."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from msp_gateway import csrf
from msp_gateway.client_ip import client_ip, parse_networks
from msp_gateway.ratelimit import MemoryStore, account_key
from msp_gateway.routing import is_upload, service_for
from msp_gateway.session_rules import SessionPolicy, cookie_secure, ended, idle_expires_at, needs_touch

T0 = datetime(2026, 1, 1, 9, 0, tzinfo=timezone.utc)
POLICY = SessionPolicy(idle=timedelta(minutes=30), absolute=timedelta(hours=12), touch_every=timedelta(seconds=30))


def test_every_area_goes_to_its_owner():
    cases = {
        "/session": "auth", "/password/forgot": "auth", "/invitations/abc": "auth", "/registrations": "auth",
        "/me": "auth", "/practice/users/1": "auth", "/admin/users/1/unlock": "auth",
        "/verifications": "verify", "/verifications/1/check": "verify",
        "/messages": "mail", "/cases/1/files": "mail", "/admin/messages/1": "mail",
        "/billing/card": "billing", "/admin/billing/x": "billing",
    }
    for path, service in cases.items():
        assert service_for(path) == service, path
    for path in ("/", "/nowhere", "/me/../admin", "/./me", "//me"):
        assert service_for(path) is None, path


def test_upload_routes():
    assert is_upload("POST", "/messages") and is_upload("POST", "/messages/m1/replies")
    assert is_upload("PUT", "/cases/c1/files/f1")
    assert not is_upload("GET", "/messages") and not is_upload("POST", "/me") and not is_upload("POST", "/messages/m1")


def test_forwarded_for_is_believed_only_from_trusted_proxies():
    proxies = parse_networks(["10.0.0.0/8"])
    assert client_ip("203.0.113.9", "1.2.3.4", proxies) == "203.0.113.9"  # not our proxy: ignored
    assert client_ip("10.0.0.2", "1.2.3.4", proxies) == "1.2.3.4"
    # the client prepended its own lie; the right-most untrusted hop is what our proxy saw
    assert client_ip("10.0.0.2", "6.6.6.6, 1.2.3.4, 10.0.0.7", proxies) == "1.2.3.4"
    assert client_ip("10.0.0.2", "garbage", proxies) == "10.0.0.2"
    assert client_ip("127.0.0.1", "1.2.3.4", ()) == "127.0.0.1"


def test_session_expiry_rules():
    assert ended(POLICY, created_at=T0, last_seen_at=T0, now=T0 + timedelta(minutes=29, seconds=59)) is None
    assert ended(POLICY, created_at=T0, last_seen_at=T0, now=T0 + timedelta(minutes=30)) == "idle"
    later = T0 + timedelta(hours=11, minutes=50)
    assert ended(POLICY, created_at=T0, last_seen_at=later, now=later + timedelta(minutes=5)) is None
    assert ended(POLICY, created_at=T0, last_seen_at=later, now=T0 + timedelta(hours=12)) == "absolute"
    assert idle_expires_at(POLICY, created_at=T0, last_seen_at=later) == T0 + timedelta(hours=12)
    assert not needs_touch(POLICY, persisted_last_seen_at=T0, now=T0 + timedelta(seconds=29))
    assert needs_touch(POLICY, persisted_last_seen_at=T0, now=T0 + timedelta(seconds=30))


def test_secure_cookie_outside_localhost():
    assert not cookie_secure("http://127.0.0.1:8080", "auto")
    assert not cookie_secure("http://localhost:8080", "auto")
    assert cookie_secure("https://portal.example.com", "auto")
    assert cookie_secure("http://portal.example.com", "auto")
    assert cookie_secure("http://localhost", "always") and not cookie_secure("https://x", "never")


def test_cross_site_and_json_checks():
    allowed = frozenset({"https://portal.example.com"})
    assert not csrf.cross_site(None, None, allowed)  # not a browser request
    assert not csrf.cross_site("https://portal.example.com", "same-origin", allowed)
    assert csrf.cross_site("https://evil.example", None, allowed)
    assert csrf.cross_site("null", None, allowed)
    assert csrf.cross_site(None, "cross-site", allowed) and csrf.cross_site(None, "same-site", allowed)
    assert csrf.is_json("application/json; charset=utf-8") and csrf.is_json("application/problem+json")
    assert not csrf.is_json("text/plain") and not csrf.is_json("application/x-www-form-urlencoded")
    key = b"k" * 32
    assert csrf.token_ok(csrf.token_for("cookie", key), csrf.token_for("cookie", key))
    assert not csrf.token_ok(csrf.token_for("other", key), csrf.token_for("cookie", key))
    assert not csrf.token_ok(None, csrf.token_for("cookie", key))


async def test_memory_sliding_window():
    store, window = MemoryStore(), timedelta(minutes=10)
    assert [await store.hit("k", limit=2, window=window, now=T0 + timedelta(minutes=m)) for m in (0, 5)] == [0, 0]
    assert await store.hit("k", limit=2, window=window, now=T0 + timedelta(minutes=6)) == 240  # until 10:10
    assert await store.hit("k", limit=2, window=window, now=T0 + timedelta(minutes=10)) == 0  # first left
    assert account_key(" Alice@Example.com") == account_key("alice@example.com")
    assert "alice" not in account_key("alice@example.com")


def test_sensitive_routes_include_their_sub_paths():
    from msp_gateway.config import GatewaySettings
    from msp_gateway.ratelimit import rule_for, rules

    all_rules = rules(GatewaySettings())
    expected = {
        ("POST", "/session"): "login", ("POST", "/password/forgot"): "password_forgot",
        ("POST", "/password/reset/verification"): "password_reset", ("POST", "/registrations/verify"): "registration",
        ("POST", "/verifications/abc/check"): "verification", ("GET", "/invitations/tok"): "invitation",
        ("POST", "/me/password"): "password_change",
    }
    for (method, path), name in expected.items():
        assert rule_for(all_rules, method, path).name == name, path
    for method, path in (("GET", "/session"), ("GET", "/me"), ("POST", "/sessions"), ("POST", "/messages")):
        assert rule_for(all_rules, method, path) is None, path


def test_the_session_cookie_is_read_as_aiohttp_reads_cookies():
    """The plain-header fast path gives what request.cookies gives, for any header."""
    from aiohttp.test_utils import make_mocked_request

    from msp_gateway.http import session_cookie

    headers = [
        "msp_session=abc-DEF_123", "a=1; msp_session=tok; b=2", "msp_session=first; msp_session=second",
        "msp_session=", "other=1", "msp_session=a;msp_session=b", 'msp_session="quoted"', "msp_session=a b",
        "msp_session = spaced", " msp_session=lead", "msp_session=x; ", "x_msp_session=no", "msp_sessionx=no",
        "msp_session=é", "msp_session=a,b", 'x="a;msp_session=hidden"; msp_session=real', "msp_session=a=b",
    ]
    for header in headers:
        request = make_mocked_request("GET", "/api/v1/me", headers={"Cookie": header})
        assert session_cookie(request, "msp_session") == request.cookies.get("msp_session"), header
    assert session_cookie(make_mocked_request("GET", "/"), "msp_session") is None


async def test_memory_store_counts_keys_in_turn():
    store, window = MemoryStore(), timedelta(minutes=10)
    assert await store.hit_all([("ip", 2), ("acct", 1)], window=window, now=T0) == 0
    assert await store.hit_all([("ip", 2), ("acct", 1)], window=window, now=T0) == 600  # account spent, ip paid
    assert await store.hit_all([("ip", 2), ("other", 1)], window=window, now=T0) == 600  # ip spent
    assert await store.hit("other", limit=1, window=window, now=T0) == 0  # not spent by the refused request


async def test_deadlines_end_overrunning_waits_and_only_those():
    import asyncio
    import time

    import pytest

    from msp_gateway.deadlines import Deadlines

    deadlines = Deadlines(tick=0.02)
    watchdog = asyncio.create_task(deadlines.watch())
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError):
            with deadlines.after(0.05):
                await asyncio.sleep(10)
        assert 0.05 <= time.monotonic() - started < 1
        with deadlines.after(1):  # done in time: nothing happens, the task is not left cancelled
            await asyncio.sleep(0.01)
        assert asyncio.current_task().cancelling() == 0
        with deadlines.after(None):  # no limit
            await asyncio.sleep(0.05)

        async def waits_long() -> None:
            with deadlines.after(5):
                await asyncio.sleep(10)

        other = asyncio.create_task(waits_long())  # someone else's cancel stays a cancel
        await asyncio.sleep(0.05)
        other.cancel()
        with pytest.raises(asyncio.CancelledError):
            await other
        assert not deadlines._due and not deadlines._expired
    finally:
        watchdog.cancel()


async def test_the_served_gateway_tunes_the_garbage_collector_once_started():
    import gc

    from msp_gateway.app import GC_YOUNG_THRESHOLD, _tune_gc, create_app, serving_app
    from msp_gateway.config import GatewaySettings

    assert _tune_gc in serving_app(GatewaySettings()).on_startup
    assert _tune_gc not in create_app(GatewaySettings()).on_startup  # apps built in tests keep the defaults
    before = gc.get_threshold()
    try:
        await _tune_gc(None)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before[1:])
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


@pytest.mark.parametrize("sent", ["é" * 64, "\udcff" * 64, ""])
def test_crafted_csrf_tokens_are_refused_not_a_crash(sent: str) -> None:
    assert csrf.token_ok(sent, csrf.token_for("cookie", b"k" * 32)) is False
    assert csrf.token_ok(csrf.token_for("cookie", b"k" * 32), csrf.token_for("cookie", b"k" * 32)) is True
