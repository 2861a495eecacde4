"""Sessions: login, the 30-minute sliding idle expiry, the absolute lifetime, logout,
rotation, and revocation of all of a user's sessions by an event from auth-service."""
from __future__ import annotations

import asyncio
import hashlib
import json
import os
import uuid
from datetime import datetime, timedelta, timezone

import asyncpg

from msp_gateway import store
from msp_gateway.http import GATEWAY
from msp_shared.bus import Bus
from msp_shared.events import SessionsRevoked, make_envelope
from msp_shared.web import POOL

from gateway_kit import ALICE, BOB, EPOCHS, LOGIN_GATE, PASSWORD, PASSWORD_EXPIRES, PRACTICE, SEEN, eventually


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


async def test_a_password_expiring_during_a_session_restricts_it_from_then_on(browser, upstream, clock):
    """Signed in a minute before the password expires: the session is not free for its 12 hours;
    once the password has expired it may only change it, as a session granted then would."""
    upstream.app[PASSWORD_EXPIRES]["alice@example.com"] = (clock.now() + timedelta(minutes=1)).isoformat()
    resp = await browser.login()
    assert resp.status == 200 and resp.body_json["restriction"] is None
    status, echo, _ = await browser.get_json("/api/v1/me")
    assert status == 200 and echo["restriction"] is None
    clock.advance(minutes=2)
    status, echo, _ = await browser.get_json("/api/v1/me")
    assert status == 200 and echo["restriction"] == "password_expired"  # what every service is told
    status, state, _ = await browser.get_json("/api/v1/session?activity=none")
    assert status == 200 and state["restriction"] == "password_expired"  # what the web app is told


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


async def _publish_revocation(amqp_url: str, exchange_name: str, epoch: int | None, **envelope) -> None:  # noqa: ANN003
    bus = Bus(amqp_url, exchange_name, service="auth-test")
    await bus.connect()
    try:
        await bus.publish(make_envelope(SessionsRevoked(user_id=ALICE, reason="password_reset", epoch=epoch), **envelope))
    finally:
        await bus.close()


async def test_a_login_granted_before_a_revocation_that_arrives_first_makes_no_session(
    gateway, upstream, browsers, database_url, amqp_url, exchange_name
):
    """The race a stolen password wins without epochs: auth-service grants a login, the user
    resets the password a moment later, and the revocation reaches the gateway while the grant
    is still on its way. The rows deleted then do not include the session made next."""
    gate = upstream.app[LOGIN_GATE]
    gate.clear()  # auth-service has read the account (epoch 0) and granted; the answer is travelling
    attacker, alice_later = browsers(gateway.url), browsers(gateway.url)
    login = asyncio.create_task(attacker.login())
    await eventually(lambda: _login_seen(upstream), what="the login reached auth-service")

    upstream.app[EPOCHS]["alice@example.com"] = 1  # the reset revokes: epoch 1
    await _publish_revocation(amqp_url, exchange_name, epoch=1)
    await eventually(lambda: _rows(database_url, "SELECT 1 FROM gateway.session_revocations WHERE min_epoch = 1"),
                     what="the revocation consumed")
    gate.set()
    resp = await login
    assert resp.status == 401 and resp.body_json["error"] == "session_expired"
    assert "msp_session" not in resp.cookies or not resp.cookies["msp_session"].value
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions WHERE user_id = $1", ALICE) == []
    status, body, _ = await attacker.get_json("/api/v1/session")
    assert status == 401 and body["error"] == "not_signed_in"

    # The user signing in after the revocation (with the new password) is not affected, and a
    # late copy of the event does not end the new session either.
    assert (await alice_later.login()).status == 200
    await _publish_revocation(amqp_url, exchange_name, epoch=1)
    await asyncio.sleep(0.3)
    assert (await alice_later.get_json("/api/v1/me"))[0] == 200


async def test_a_grant_at_a_newer_epoch_ends_the_older_sessions_without_waiting_for_the_bus(
    make_gateway, browsers, upstream, database_url
):
    """A password change through the gateway answers a grant at the new epoch: the user's other
    sessions end at once, on every replica, even if the revocation event never arrives."""
    first, second = await make_gateway(), await make_gateway(session_cache_seconds=0.5)
    old_here, old_there, bob = browsers(first.url), browsers(second.url), browsers(first.url)
    for b, email in ((old_here, "alice@example.com"), (old_there, "alice@example.com"), (bob, "bob@example.com")):
        assert (await b.login(email=email)).status == 200
    # and one granted by an auth-service from before epochs (rolling update): ended too
    grant = {"user_id": str(ALICE), "practice_id": str(PRACTICE), "roles": [], "restriction": None}
    await first.app[GATEWAY].sessions.create(grant, datetime.now(timezone.utc), client_ip=None, user_agent=None)
    upstream.app[EPOCHS]["alice@example.com"] = 1
    changed = browsers(first.url)
    assert (await changed.login()).status == 200

    rows = await _rows(database_url, "SELECT user_id, epoch FROM gateway.sessions ORDER BY user_id")
    assert [(r["user_id"], r["epoch"]) for r in rows] == [(ALICE, 1), (BOB, 0)]
    assert (await old_here.get_json("/api/v1/me"))[0] == 401  # this replica's cached copy went too

    async def refused(browser) -> bool:  # noqa: ANN001
        return (await browser.get_json("/api/v1/me"))[0] == 401

    await eventually(lambda: refused(old_there), what="the other replica refuses it once its cached copy expires")
    assert (await changed.get_json("/api/v1/me"))[0] == 200 and (await bob.get_json("/api/v1/me"))[0] == 200


async def test_a_grant_that_ends_older_sessions_commits_synchronously(gateway, database_url):
    """Ending sessions is a security decision: its commit waits for the disk, unlike a plain new
    session's (soft state), so a database crash cannot bring the ended sessions back."""
    conn = await asyncpg.connect(database_url, server_settings={"search_path": "gateway"})  # as the service's pool
    try:
        async def insert(epoch: int) -> str:
            async with conn.transaction():
                await conn.fetchval(
                    "SELECT insert_session($1, $2, $3, NULL, '{}', NULL, now(), now(), NULL, NULL, $4, NULL)",
                    os.urandom(32), uuid.uuid4(), ALICE, epoch)
                return await conn.fetchval("SHOW synchronous_commit")
        assert await insert(1) == "on"  # the first grant at epoch 1 ends the older ones
        assert await insert(1) == "off"  # nothing more to end: a new row only
    finally:
        await conn.close()


async def test_grants_with_an_epoch_that_is_not_a_count_are_refused(gateway, database_url):
    from msp_gateway.sessions import BadGrant

    manager = gateway.app[GATEWAY].sessions
    grant = {"user_id": str(ALICE), "practice_id": str(PRACTICE), "roles": [], "restriction": None}
    now = datetime.now(timezone.utc)
    for bad in (-1, "1", 1.0, True, [1]):
        try:
            await manager.create({**grant, "epoch": bad}, now, client_ip=None, user_agent=None)
        except BadGrant:
            pass
        else:
            raise AssertionError(f"epoch {bad!r} was accepted")
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []
    await manager.create({**grant, "epoch": 3}, now, client_ip=None, user_agent=None)
    await manager.create(grant, now, client_ip=None, user_agent=None)  # an auth-service from before epochs
    rows = await _rows(database_url, "SELECT epoch FROM gateway.sessions ORDER BY epoch")
    assert [r["epoch"] for r in rows] == [3, None]


async def test_revocations_are_forgotten_once_no_grant_they_could_end_can_arrive(gateway, clock, database_url):
    from msp_gateway.sessions import REVOCATION_MEMORY

    pool = gateway.app[POOL]
    now = datetime.now(timezone.utc)
    await store.delete_user_sessions(pool, ALICE, min_epoch=2, created_before=now)
    await store.delete_user_sessions(pool, BOB, min_epoch=1, created_before=now)
    await pool.execute("UPDATE gateway.session_revocations SET recorded_at = recorded_at - $1::interval - interval '1 s'"
                       " WHERE user_id = $2", REVOCATION_MEMORY, ALICE)
    await gateway.app[GATEWAY].sessions.purge(clock.now())
    rows = await _rows(database_url, "SELECT user_id, min_epoch FROM gateway.session_revocations")
    assert [(r["user_id"], r["min_epoch"]) for r in rows] == [(BOB, 1)]


async def _login_seen(upstream) -> bool:  # noqa: ANN001
    return any(seen["path"] == "/session" for seen in upstream.app[SEEN])


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


# ---- the web app's idle check: GET /session?activity=none looks without counting ---------------

IDLE_CHECK = "/api/v1/session?activity=none"


async def _last_seen(database_url: str) -> datetime:
    [row] = await _rows(database_url, "SELECT last_seen_at FROM gateway.sessions")
    return row["last_seen_at"]


async def test_an_idle_check_does_not_extend_the_session(browser, gateway, clock, database_url):
    assert (await browser.login()).status == 200
    signed_in = clock.now()
    cookie, sessions = browser.cookie(), gateway.app[GATEWAY].sessions
    clock.advance(minutes=29)
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 200 and body["user"]["id"] == str(ALICE) and body["csrf_token"] == browser.csrf
    assert body["idle_seconds_left"] == 60  # counted by the gateway, from now
    # Nothing moved: not the replica's memory, not the database (a normal request would touch it here).
    assert sessions._cache[hashlib.sha256(cookie.encode()).digest()].last_seen_at == signed_in
    assert await _last_seen(database_url) == signed_in
    clock.advance(seconds=59)
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 200 and body["idle_seconds_left"] == 1
    clock.advance(seconds=2)  # 30 minutes and 1 second after the last activity
    status, body, resp = await browser.get_json(IDLE_CHECK)
    assert status == 401 and body["error"] == "session_expired"
    assert resp.cookies["msp_session"].value == ""
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []
    assert await _ended(database_url) == [("idle", str(ALICE), None)]
    # ... and the cookie is worthless for anything else too.
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 401 and body["error"] == "not_signed_in"  # the browser dropped the cookie


async def test_an_idle_check_past_the_limit_ends_the_session_and_answers_session_expired(browser, browsers, gateway, clock):
    assert (await browser.login()).status == 200
    replay = browsers(gateway.url)  # a tab that still has the cookie
    replay.http.cookie_jar.update_cookies({"msp_session": browser.cookie()}, gateway.server.make_url("/"))
    clock.advance(minutes=30)  # exactly at the limit is already too late
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 401 and body["error"] == "session_expired"
    status, body, _ = await replay.get_json("/api/v1/me")
    assert status == 401 and body["error"] == "session_expired"


async def test_idle_tabs_checking_at_different_times_do_not_keep_the_session_alive(make_gateway, browsers, clock, database_url):
    """Two tabs (on two replicas, one with a stale cache) and a browser clock running ahead:
    checks every few minutes, all before the limit, keep nothing alive."""
    first, second = await make_gateway(), await make_gateway()
    tab_1 = browsers(first.url)
    assert (await tab_1.login()).status == 200
    signed_in = clock.now()
    tab_2 = browsers(second.url)
    tab_2.http.cookie_jar.update_cookies({"msp_session": tab_1.cookie()}, second.server.make_url("/"))
    for minute in range(0, 28, 4):  # tab 1 looks at minutes 2, 6, ... 26; tab 2 at 4, 8, ... 28
        clock.advance(minutes=2)
        status, body, _ = await tab_1.get_json(IDLE_CHECK)
        assert status == 200 and body["idle_seconds_left"] == (30 - minute - 2) * 60
        clock.advance(minutes=2)
        status, body, _ = await tab_2.get_json(IDLE_CHECK)
        assert status == 200 and body["idle_seconds_left"] == (30 - minute - 4) * 60
        second.app[GATEWAY].sessions._cache.clear()  # its copy went stale: read the row again
    assert clock.now() - signed_in == timedelta(minutes=28)
    assert await _last_seen(database_url) == signed_in
    clock.advance(minutes=2)
    for tab in (tab_2, tab_1):
        status, body, _ = await tab.get_json(IDLE_CHECK)
        assert status == 401 and body["error"] == "session_expired"
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []


async def test_a_normal_get_session_still_counts_as_activity(browser, clock, database_url):
    assert (await browser.login()).status == 200
    clock.advance(minutes=29)
    status, body, _ = await browser.get_json("/api/v1/session")
    assert status == 200 and body["idle_seconds_left"] == 30 * 60
    assert await _last_seen(database_url) == clock.now()  # written down (older than the touch interval)
    clock.advance(minutes=29)  # 58 minutes after sign-in, 29 after the last activity
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 200 and body["idle_seconds_left"] == 60
    clock.advance(minutes=1)
    assert (await browser.get_json(IDLE_CHECK))[0] == 401


async def test_the_idle_check_flag_elsewhere_is_ignored_and_state_changes_are_activity(browser, gateway, clock, database_url, upstream):
    """An attacker (or a careless client) cannot make other requests passive: the flag is taken
    only by GET /session; everywhere else the request counts as activity, as without it."""
    assert (await browser.login()).status == 200
    attempts = [
        ("POST", "/api/v1/me/things?activity=none", {"json": {}}),  # a state change
        ("PATCH", "/api/v1/me/things?activity=none", {"json": {}}),  # a state change the service refuses
        ("GET", "/api/v1/me?activity=none", {}),  # another route
        ("HEAD", "/api/v1/session?activity=none", {}),  # another method of the same route
        ("POST", "/api/v1/me/things?activity=none", {"json": {}, "csrf": False}),  # refused (no token), still activity
    ]
    for method, path, kw in attempts:
        clock.advance(minutes=29)
        status, _, _ = await browser.send(method, path, **kw)
        assert status in (200, 403, 405), (method, path, status)
        assert await _last_seen(database_url) == clock.now(), (method, path)
        status, body, _ = await browser.get_json(IDLE_CHECK)  # the session lives on: that was activity
        assert status == 200 and body["idle_seconds_left"] == 30 * 60, (method, path)
    # The flag reached the service as any query does (the gateway only reads it on GET /session).
    assert [s["path"] for s in upstream.app[SEEN] if s["method"] == "POST"][-1] == "/me/things"
    clock.advance(minutes=29)
    status, _, _ = await browser.send("DELETE", "/api/v1/session?activity=none")  # logout is still logout
    assert status == 204
    assert await _rows(database_url, "SELECT 1 FROM gateway.sessions") == []


async def test_an_unknown_activity_value_is_refused_and_counts_for_nothing(browser, clock, database_url):
    assert (await browser.login()).status == 200
    signed_in = clock.now()
    clock.advance(minutes=29)
    for query in ("activity=None", "activity=", "activity=none&activity=all"):
        status, body, _ = await browser.get_json("/api/v1/session?" + query)
        assert status == 400 and body["error"] == "invalid_input" and "activity" in body["details"]["fields"], query
    assert await _last_seen(database_url) == signed_in
    clock.advance(minutes=1)
    assert (await browser.get_json(IDLE_CHECK))[0] == 401


async def test_seconds_left_count_the_nearer_of_the_idle_and_absolute_limits(make_gateway, browsers, clock):
    gateway = await make_gateway(session_absolute_hours=1)
    browser = browsers(gateway.url)
    assert (await browser.login()).status == 200
    clock.advance(seconds=0.4)
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 200 and body["idle_seconds_left"] == 30 * 60  # rounded up: 1799.6 s
    clock.advance(minutes=25)
    assert (await browser.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=20)  # idle: 10 minutes left; absolute: 15 minutes left
    assert (await browser.get_json(IDLE_CHECK))[1]["idle_seconds_left"] == 10 * 60
    clock.advance(minutes=9)
    assert (await browser.get_json("/api/v1/me"))[0] == 200
    clock.advance(minutes=1)  # idle: 29 minutes left; absolute: under 5 minutes
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 200 and body["idle_seconds_left"] == 5 * 60  # created 55:00.4 ago: 299.6 s, rounded up
    assert body["expires_at"] == body["idle_expires_at"]
    clock.advance(minutes=5)
    status, body, _ = await browser.get_json(IDLE_CHECK)
    assert status == 401 and body["error"] == "session_expired"
