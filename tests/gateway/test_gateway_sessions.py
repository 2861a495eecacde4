"""Sessions: login, the 30-minute sliding idle expiry, the absolute lifetime, logout,
rotation, and revocation of all of a user's sessions by an event from auth-service."""
from __future__ import annotations

import asyncio
import hashlib
import json
from datetime import datetime, timedelta, timezone

import asyncpg

from msp_gateway import store
from msp_gateway.http import GATEWAY
from msp_shared.bus import Bus
from msp_shared.events import SessionsRevoked, make_envelope

from gateway_kit import ALICE, BOB, PASSWORD, PRACTICE, SEEN, eventually


async def _rows(database_url: str, sql: str, *args):
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch(sql, *args)
    finally:
        await conn.close()


async def _ended(database_url: str) -> list[tuple[str, str, str | None]]:
    """The session ends the gateway announced (its outbox): (reason, user id, ip)."""
    rows = await _rows(database_url, "SELECT envelope FROM gateway.outbox WHERE type = 'gateway.session.ended'"
                                     " ORDER BY created_at, id")
    data = [json.loads(r["envelope"])["data"] for r in rows]
    return [(d["reason"], d["user_id"], d["ip"]) for d in data]


async def test_login_creates_a_server_side_session_with_an_opaque_cookie(browser, database_url, upstream):
    resp = await browser.login()
    assert resp.status == 200
    body = resp.body_json
    assert "grant" not in body
    assert body["user"]["id"] == str(ALICE)
    assert body["restriction"] is None and len(body["csrf_token"]) >= 32

    cookie = resp.cookies["msp_session"]
    assert cookie["httponly"] and cookie["samesite"] == "Lax" and cookie["path"] == "/"
    assert not cookie["secure"]  # public URL is http://127.0.0.1: no Secure flag locally
    value = cookie.value
    assert len(value) >= 40

    rows = await _rows(database_url, "SELECT token_hash, user_id, practice_id, roles FROM gateway.sessions")
    assert len(rows) == 1
    assert rows[0]["token_hash"] == hashlib.sha256(value.encode()).digest()  # only the hash is stored
    assert rows[0]["user_id"] == ALICE and rows[0]["practice_id"] == PRACTICE
    assert rows[0]["roles"] == ["user_manager"]

    status, me, _ = await browser.get_json("/api/v1/session")
    assert status == 200
    assert me["user"] == {"id": str(ALICE), "practice_id": str(PRACTICE), "roles": ["user_manager"]}
    assert me["csrf_token"] == body["csrf_token"]

    status, echo, _ = await browser.get_json("/api/v1/me")
    assert status == 200 and echo["user_id"] == str(ALICE) and echo["roles"] == ["user_manager"]
    # the login itself reached auth-service anonymously, with the client's address
    login_seen = upstream.app[SEEN][0]
    assert login_seen["path"] == "/session" and login_seen["identity"].user_id is None
    assert login_seen["identity"].ip == "127.0.0.1"


async def test_failed_logins_pass_the_service_answer_through_without_a_session(browser, database_url):
    resp = await browser.login(password="wrong")
    assert resp.status == 401 and resp.body_json["error"] == "invalid_credentials"
    assert "msp_session" not in resp.cookies
    resp = await browser.login(email="locked@example.com")
    assert resp.status == 423 and resp.body_json["error"] == "account_locked"
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []
    status, body, _ = await browser.get_json("/api/v1/session")
    assert status == 401 and body["error"] == "not_signed_in"


async def test_session_ends_after_30_idle_minutes_and_activity_keeps_it_alive(browser, clock, database_url):
    assert (await browser.login()).status == 200
    for _ in range(4):  # 4 x 29 minutes of regular activity: well past 30 minutes in total
        clock.advance(minutes=29)
        status, _, _ = await browser.get_json("/api/v1/me")
        assert status == 200
    clock.advance(minutes=30)
    status, body, resp = await browser.get_json("/api/v1/me")
    assert status == 401 and body["error"] == "session_expired"
    assert resp.cookies["msp_session"].value == ""  # the browser is told to drop the cookie
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []


async def test_idle_expiry_is_exact_to_the_minute(browser, clock):
    assert (await browser.login()).status == 200
    clock.advance(minutes=29, seconds=59)
    assert (await browser.get_json("/api/v1/session"))[0] == 200
    clock.advance(minutes=30)
    status, body, _ = await browser.get_json("/api/v1/session")
    assert status == 401 and body["error"] == "session_expired"


async def test_activity_seen_by_one_replica_keeps_the_session_alive_on_another(make_gateway, browsers, clock):
    first, second = await make_gateway(), await make_gateway()
    on_first = browsers(first.url)
    assert (await on_first.login()).status == 200
    on_second = browsers(second.url)
    on_second.http.cookie_jar.update_cookies({"msp_session": on_first.cookie()}, second.server.make_url("/"))
    clock.advance(minutes=20)
    assert (await on_first.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=20)  # 40 minutes after login, 20 after the last request
    assert (await on_second.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=31)
    assert (await on_second.get_json("/api/v1/me"))[0] == 401


async def test_absolute_lifetime_ends_even_an_active_session(make_gateway, browsers, clock, database_url):
    gateway = await make_gateway(session_absolute_hours=1)
    browser = browsers(gateway.url)
    assert (await browser.login()).status == 200
    for _ in range(2):
        clock.advance(minutes=25)
        assert (await browser.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=10)  # 60 minutes after login, 10 after the last request
    status, body, _ = await browser.get_json("/api/v1/me")
    assert status == 401 and body["error"] == "session_expired"
    assert [reason for reason, _, _ in await _ended(database_url)] == ["absolute"]


async def test_logout_ends_the_session_and_the_old_cookie_is_worthless(browser, browsers, gateway, database_url):
    assert (await browser.login()).status == 200
    stolen = browser.cookie()
    status, body, _ = await browser.send("DELETE", "/api/v1/session", csrf=False)
    assert status == 403 and body["error"] == "csrf_failed"  # logout needs the token too
    status, _, resp = await browser.send("DELETE", "/api/v1/session")
    assert status == 204 and resp.cookies["msp_session"].value == ""
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []
    # the end is announced for the audit trail, with who and from where
    assert await _ended(database_url) == [("logout", str(ALICE), "127.0.0.1")]

    replay = browsers(gateway.url)
    replay.http.cookie_jar.update_cookies({"msp_session": stolen}, gateway.server.make_url("/"))
    status, body, _ = await replay.get_json("/api/v1/me")
    assert status == 401 and body["error"] == "session_expired"
    # logout again is harmless, and announces nothing more
    assert (await replay.send("DELETE", "/api/v1/session", csrf=False))[0] == 204
    assert len(await _ended(database_url)) == 1


async def test_a_stale_session_is_read_once_for_all_requests_waiting_on_it(browser, gateway, clock, monkeypatch):
    assert (await browser.login()).status == 200
    cookie, sessions = browser.cookie(), gateway.app[GATEWAY].sessions
    reads = []
    real_read = store.get_session

    async def counted(pool, key):  # noqa: ANN001, ANN202
        reads.append(key)
        return await real_read(pool, key)

    monkeypatch.setattr(store, "get_session", counted)
    sessions._cache.clear()  # as when the cached copy has gone stale
    results = await asyncio.gather(*(sessions.resolve(cookie, clock.now()) for _ in range(20)))
    assert all(session is not None for session, _ in results) and len(reads) == 1


async def test_a_read_racing_a_logout_is_neither_shared_nor_cached(browser, gateway, clock):
    assert (await browser.login()).status == 200
    cookie, sessions = browser.cookie(), gateway.app[GATEWAY].sessions
    sessions._cache.clear()
    racing = asyncio.ensure_future(sessions.resolve(cookie, clock.now()))
    await asyncio.sleep(0)  # its database read is in flight
    await sessions.end_cookie(cookie, reason="logout")
    assert await sessions.resolve(cookie, clock.now()) == (None, "unknown")
    await racing


async def test_a_new_login_rotates_the_previous_session(browser, database_url):
    assert (await browser.login()).status == 200
    first = browser.cookie()
    assert (await browser.login(email="bob@example.com")).status == 200
    assert browser.cookie() != first
    rows = await _rows(database_url, "SELECT user_id FROM gateway.sessions")
    assert [r["user_id"] for r in rows] == [BOB]
    assert await _ended(database_url) == [("replaced", str(ALICE), "127.0.0.1")]


async def test_any_grant_from_auth_signs_the_user_in(browser):
    status, body, resp = await browser.send("POST", "/api/v1/registrations", json={"token": "x", "password": PASSWORD})
    assert status == 201
    assert "grant" not in body and body["user"]["id"] == str(BOB) and body["csrf_token"]
    assert resp.cookies["msp_session"].value
    status, me, _ = await browser.get_json("/api/v1/session")
    assert status == 200 and me["user"]["id"] == str(BOB)


async def test_restriction_travels_to_services_in_the_identity(browser):
    resp = await browser.login(email="expired@example.com")
    assert resp.status == 200 and resp.body_json["restriction"] == "password_expired"
    status, echo, _ = await browser.get_json("/api/v1/me")
    assert status == 200 and echo["restriction"] == "password_expired"


async def test_revocation_event_ends_every_session_of_that_user(make_gateway, browsers, database_url, amqp_url, exchange_name):
    first, second = await make_gateway(), await make_gateway()  # two replicas, one database
    alice_1, alice_2, bob = browsers(first.url), browsers(second.url), browsers(first.url)
    assert (await alice_1.login()).status == 200
    assert (await alice_2.login()).status == 200
    assert (await bob.login(email="bob@example.com")).status == 200
    decided = datetime.now(timezone.utc)  # when auth-service revoked (the envelope's occurred_at)
    # the fresh session auth-service grants with a password change is made after that moment
    alice_new = browsers(second.url)
    assert (await alice_new.login()).status == 200
    for b in (alice_1, alice_2, bob, alice_new):  # both replicas have the sessions cached now
        assert (await b.get_json("/api/v1/me"))[0] == 200

    bus = Bus(amqp_url, exchange_name, service="auth-test")
    await bus.connect()
    try:
        event = SessionsRevoked(user_id=ALICE, reason="password_changed")
        await bus.publish(make_envelope(event, occurred_at=decided))
    finally:
        await bus.close()

    async def only_new_alice_left() -> bool:
        rows = await _rows(database_url, "SELECT 1 FROM gateway.sessions WHERE user_id = $1", ALICE)
        return len(rows) == 1

    await eventually(only_new_alice_left, what="alice's old sessions deleted")

    async def refused(browser) -> bool:  # noqa: ANN001
        return (await browser.get_json("/api/v1/me"))[0] == 401

    # each replica dropped its cached copy (the cache would otherwise trust it for seconds)
    await eventually(lambda: refused(alice_1), what="replica 1 refuses alice")
    await eventually(lambda: refused(alice_2), what="replica 2 refuses alice")
    assert (await bob.get_json("/api/v1/me"))[0] == 200
    assert (await alice_new.get_json("/api/v1/me"))[0] == 200
    rows = await _rows(database_url, "SELECT user_id FROM gateway.sessions ORDER BY user_id")
    assert [r["user_id"] for r in rows] == [ALICE, BOB]


async def test_expired_sessions_are_purged_from_the_database(gateway, browsers, clock, database_url):
    from msp_gateway.http import GATEWAY

    idle, active = browsers(gateway.url), browsers(gateway.url)
    assert (await idle.login()).status == 200
    assert (await active.login(email="bob@example.com")).status == 200
    clock.advance(minutes=20)
    assert (await active.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=12)  # idle: 32 minutes quiet; active: 12
    await gateway.app[GATEWAY].sessions.purge(clock.now())
    rows = await _rows(database_url, "SELECT user_id FROM gateway.sessions")
    assert [r["user_id"] for r in rows] == [BOB]
    # a session nobody came back to is announced as ended when it is purged, with its last activity
    assert await _ended(database_url) == [("idle", str(ALICE), None)]
    [envelope] = await _rows(database_url, "SELECT envelope FROM gateway.outbox WHERE type = 'gateway.session.ended'")
    last_seen = datetime.fromisoformat(json.loads(envelope["envelope"])["data"]["last_seen_at"])
    assert last_seen == clock.now() - timedelta(minutes=32)


async def test_a_purge_backlog_goes_in_batches_each_end_announced_once(gateway, clock, database_url, monkeypatch):
    sessions = gateway.app[GATEWAY].sessions
    monkeypatch.setattr(store, "PURGE_BATCH", 2)
    for _ in range(5):
        await sessions.create({"user_id": str(ALICE), "roles": ["member"]}, clock.now(), client_ip=None, user_agent=None)
    clock.advance(minutes=40)
    assert await sessions.purge(clock.now()) == 5
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []
    assert await _ended(database_url) == [("idle", str(ALICE), None)] * 5
    assert await sessions.purge(clock.now()) == 0
