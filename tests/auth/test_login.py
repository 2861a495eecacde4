"""Login: one answer for unknown email and wrong password, lockout on the 5th wrong
password, 423 only for someone who knows the password, 90-day expiry."""
from __future__ import annotations

from datetime import datetime, timedelta

from msp_auth.config import AuthSettings
from msp_shared.clock import ManualClock
from msp_shared.identity import Identity

from auth_kit import GOOD_PASSWORD, Auth, start_auth


async def test_right_password_signs_in_with_a_grant(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("ann@brightsmiles.example", practice=practice, roles=("member", "user_manager"))
    resp = await auth.login("Ann@BrightSmiles.example", GOOD_PASSWORD)  # email is case-insensitive
    assert resp.status == 200, resp.body
    # the gateway restricts the session from this moment on, however long ago it was granted
    expires = datetime.fromisoformat(resp.body["grant"].pop("password_expires_at"))
    assert expires == (await auth.user(user["id"]))["password_changed_at"] + timedelta(days=90)
    assert resp.body["grant"] == {
        "user_id": str(user["id"]), "practice_id": str(practice["id"]),
        "roles": ["member", "user_manager"], "restriction": None,
        "epoch": 0,  # no revocation yet (see test_password_reset: epochs order grants and revocations)
    }
    assert resp.body["user"]["email"] == "ann@brightsmiles.example"
    assert resp.body["user"]["practice"]["name"] == "Bright Smiles Dental"
    assert "password_hash" not in resp.raw.decode() and "$argon2" not in resp.raw.decode()
    rows = await auth.audit("login")
    assert [(r["outcome"], str(r["subject_id"]), r["ip"]) for r in rows] == [("ok", str(user["id"]), "203.0.113.7")]


async def test_unknown_email_and_wrong_password_get_identical_answers(auth: Auth) -> None:
    await auth.make_user("bob@example.org")
    unknown = await auth.login("nobody@example.org", GOOD_PASSWORD)
    wrong = await auth.login("bob@example.org", "Wrong-Password-1!")
    not_registered = await auth.login("nobody@example.org", "")
    assert unknown.status == wrong.status == 401
    assert unknown.raw == wrong.raw
    assert unknown.body == {"error": "invalid_credentials", "message": "The email or password is not right.", "details": {}}
    assert unknown.headers.get("Content-Length") == wrong.headers.get("Content-Length")
    assert not_registered.status == 400  # an empty password is bad input, whoever the account


async def test_invited_user_without_password_cannot_sign_in(auth: Auth) -> None:
    await auth.make_user("invited@example.org", password=None)
    resp = await auth.login("invited@example.org", GOOD_PASSWORD)
    assert resp.status == 401 and resp.body["error"] == "invalid_credentials"


async def test_fifth_wrong_password_locks_and_only_the_right_password_learns_it(auth: Auth) -> None:
    user = await auth.make_user("carol@example.org")
    for attempt in range(1, 5):
        resp = await auth.login("carol@example.org", f"Wrong-{attempt}-Pass!")
        assert resp.status == 401, attempt
    assert (await auth.user(user["id"]))["locked_at"] is None  # 4 wrong: not yet
    fifth = await auth.login("carol@example.org", "Wrong-5-Pass!")
    assert fifth.status == 401 and fifth.body["error"] == "invalid_credentials"
    assert (await auth.user(user["id"]))["locked_at"] is not None  # the 5th locks

    # A guesser still gets the same 401; the owner with the right password learns it is locked.
    guess = await auth.login("carol@example.org", "Wrong-6-Pass!")
    unknown = await auth.login("nobody@example.org", "Wrong-6-Pass!")
    assert guess.raw == unknown.raw and guess.status == 401
    right = await auth.login("carol@example.org", GOOD_PASSWORD)
    assert right.status == 423 and right.body["error"] == "account_locked"
    assert "reset your password" in right.body["message"].lower()
    # ... or ask PBHS Support, as the help page's FAQ says.
    assert "PBHS Support" in right.body["message"] and "email address" in right.body["message"]
    assert set(right.body) == {"error", "message", "details"}

    # Effects of the lock: the user is told by email, sessions end, other services learn it.
    mails = await auth.emails("account_locked")
    assert [m["to"] for m in mails] == ["carol@example.org"]
    assert mails[0]["link"].endswith("/#/forgot")
    locked = await auth.events("auth.user.locked")
    revoked = await auth.events("auth.sessions.revoked")
    assert [e["data"]["user_id"] for e in locked] == [str(user["id"])]
    assert [(e["data"]["user_id"], e["data"]["reason"]) for e in revoked] == [(str(user["id"]), "locked")]
    assert len(await auth.audit("account_locked")) == 1
    assert [r["outcome"] for r in await auth.audit("login")] == ["failed"] * 6 + ["failed", "refused"]


async def test_a_successful_login_resets_the_failure_count(auth: Auth) -> None:
    user = await auth.make_user("dan@example.org")
    for _ in range(4):
        assert (await auth.login("dan@example.org", "Nope-Nope-1!")).status == 401
    assert (await auth.login("dan@example.org", GOOD_PASSWORD)).status == 200
    for _ in range(4):
        assert (await auth.login("dan@example.org", "Nope-Nope-1!")).status == 401
    assert (await auth.user(user["id"]))["locked_at"] is None
    assert (await auth.login("dan@example.org", GOOD_PASSWORD)).status == 200


async def test_password_expires_after_90_days_and_then_only_a_change_is_allowed(auth: Auth) -> None:
    practice = await auth.make_practice()
    await auth.make_user("erin@example.org", practice=practice)
    auth.clock.advance(days=89, hours=23)
    assert (await auth.login("erin@example.org", GOOD_PASSWORD)).body["grant"]["restriction"] is None
    auth.clock.advance(hours=1)
    resp = await auth.login("erin@example.org", GOOD_PASSWORD)
    assert resp.status == 200 and resp.body["grant"]["restriction"] == "password_expired"
    who = auth.identity_of(resp.body["grant"])

    me = await auth.call("GET", "/me", who=who)
    assert me.status == 200 and me.body["restriction"] == "password_expired"
    refused = await auth.call("POST", "/me/verification/ticket", {}, who=who)
    assert refused.status == 403 and refused.body["error"] == "password_expired"
    # the Terms of Use are public reading, for a restricted session too; nothing near them is
    terms = await auth.call("GET", "/terms", who=who)
    assert terms.status == 200 and terms.body["text"]
    assert (await auth.call("GET", f"/terms/{terms.body['version']}", who=who)).status == 200
    assert (await auth.call("GET", "/termsx", who=who)).status == 403

    changed = await auth.call("POST", "/me/password",
                              {"current_password": GOOD_PASSWORD, "new_password": "Fresh-Meadow-77?"}, who=who)
    assert changed.status == 200, changed.body
    assert changed.body["grant"]["restriction"] is None
    assert (await auth.login("erin@example.org", "Fresh-Meadow-77?")).body["grant"]["restriction"] is None


async def test_anonymous_and_forged_identities_are_refused(auth: Auth) -> None:
    await auth.make_user("fay@example.org")
    assert (await auth.call("GET", "/me")).status == 401  # anonymous identity
    resp = await auth.client.get("/me")  # no gateway header at all
    assert resp.status == 401 and (await resp.json())["error"] == "gateway_identity_required"
    forged = Identity(user_id="00000000-0000-0000-0000-000000000001")
    auth_wrong_key = Auth(auth.client, auth.app, auth.clock, b"x" * 32, auth.verify_secret, auth.sealer)
    assert (await auth_wrong_key.call("GET", "/me", who=forged)).body["error"] == "gateway_identity_required"


async def test_oversized_body_is_refused(auth: Auth) -> None:
    resp = await auth.call("POST", "/session", data=b'{"email":"a@b.c","password":"' + b"x" * 70_000 + b'"}',
                           headers={"Content-Type": "application/json"})
    assert resp.status == 413


async def test_login_with_production_argon2_parameters(base_env: dict, clock: ManualClock) -> None:
    kit, client = await start_auth(AuthSettings(**base_env, hash_workers=1, shutdown_grace_seconds=2), clock)
    try:
        user = await kit.make_user("gus@example.org")
        assert user["password_hash"].startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert (await kit.login("gus@example.org", GOOD_PASSWORD)).status == 200
        assert (await kit.login("gus@example.org", "Other-Pass-9!")).status == 401
    finally:
        await client.close()


async def test_hash_with_old_parameters_is_upgraded_at_login(auth: Auth) -> None:
    from msp_auth.hashing import Argon2Params, hash_password

    user = await auth.make_user("hal@example.org")
    old = hash_password(Argon2Params(time_cost=1, memory_kib=512), GOOD_PASSWORD)
    await auth.pool.execute("UPDATE users SET password_hash = $2 WHERE id = $1", user["id"], old)
    assert (await auth.login("hal@example.org", GOOD_PASSWORD)).status == 200
    assert "m=1024" in (await auth.user(user["id"]))["password_hash"]


def test_hash_workers_run_at_lower_priority_than_the_event_loop() -> None:
    # A burst of logins must not starve every other request: the OS prefers the event loop.
    import os

    from msp_auth.hashing import Argon2Params, Hasher

    hasher = Hasher(Argon2Params(time_cost=1, memory_kib=1024), workers=1, nice=5)
    try:
        assert hasher._pool.submit(os.nice, 0).result(timeout=30) == os.nice(0) + 5
    finally:
        hasher.close()
