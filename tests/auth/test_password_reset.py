"""Forgot/reset password (email link + phone proof where 2-step applies) and change password."""
from __future__ import annotations

import asyncio

from msp_auth.app import prune_spent_secrets
from msp_auth.keys import AUTH_SETTINGS
from msp_shared import signed

from auth_kit import GOOD_PASSWORD, Auth, token_from_link, violation_codes

NEW = "Cobalt-Orchard-88?"


async def _forgot(auth: Auth, email: str) -> str:
    resp = await auth.call("POST", "/password/forgot", {"email": email})
    assert resp.status == 202
    return token_from_link((await auth.emails("password_reset"))[-1]["link"])


async def test_forgot_answers_the_same_and_sends_nothing_for_unknown_email(auth: Auth) -> None:
    await auth.make_user("ivy@example.org")
    unknown = await auth.call("POST", "/password/forgot", {"email": "ghost@example.org"})
    assert await auth.emails() == []
    known = await auth.call("POST", "/password/forgot", {"email": "IVY@example.org"})
    assert unknown.status == known.status == 202 and unknown.raw == known.raw
    mails = await auth.emails("password_reset")
    assert [m["to"] for m in mails] == ["ivy@example.org"]
    assert mails[0]["link"].startswith(auth.app[AUTH_SETTINGS].public_url + "/#/reset?token=")
    # The token travels only sealed: it is nowhere in clear in the event, nor in the database.
    token = token_from_link(mails[0]["link"])
    outbox_text = str(await auth.pool.fetch("SELECT envelope::text FROM outbox"))
    assert token not in outbox_text and "ivy@example.org" not in outbox_text
    assert token.encode() not in b"".join(r["digest"] for r in await auth.pool.fetch("SELECT digest FROM tokens"))


async def test_reset_without_two_step_unlocks_ends_sessions_and_signs_in(auth: Auth) -> None:
    user = await auth.make_user("jay@example.org")
    for _ in range(5):
        await auth.login("jay@example.org", "Wrong-Pass-1!")
    assert (await auth.login("jay@example.org", GOOD_PASSWORD)).status == 423
    token = await _forgot(auth, "jay@example.org")
    info = await auth.call("POST", "/password/reset/verification", {"token": token})
    assert info.status == 200 and info.body["two_step"] is False and "verification" not in info.body

    weak = await auth.call("POST", "/password/reset", {"token": token, "password": "weak"})
    assert "too_short" in violation_codes(weak)
    resp = await auth.call("POST", "/password/reset", {"token": token, "password": NEW})
    assert resp.status == 200, resp.body
    assert resp.body["grant"]["user_id"] == str(user["id"]) and resp.body["grant"]["restriction"] is None
    reasons = [e["data"]["reason"] for e in await auth.events("auth.sessions.revoked")]
    assert reasons == ["locked", "password_reset"]
    assert (await auth.login("jay@example.org", NEW)).status == 200
    assert (await auth.login("jay@example.org", GOOD_PASSWORD)).status == 401
    assert [r["outcome"] for r in await auth.audit("password_reset")] == ["ok"]
    assert len(await auth.audit("account_unlocked")) == 1

    replay = await auth.call("POST", "/password/reset", {"token": token, "password": "Another-Pass-99!"})
    assert replay.status == 404 and replay.body["error"] == "reset_link_invalid"


async def test_reset_with_two_step_needs_a_fresh_proof_for_this_user(auth: Auth) -> None:
    user = await auth.make_user("kim@example.org", two_step=True, phone="+12025550123")
    other = await auth.make_user("lee@example.org", two_step=True, phone="+12025550199")
    token = await _forgot(auth, "kim@example.org")
    info = await auth.call("POST", "/password/reset/verification", {"token": token})
    assert info.body["two_step"] is True
    ticket = info.body["verification"]["ticket"]
    claims = signed.verify_claims(ticket, purpose="verify-ticket", secret=auth.verify_secret, now=auth.clock.now().timestamp())
    assert (claims["user_id"], claims["phone"], claims["purpose"]) == (str(user["id"]), "+12025550123", "password_reset")

    async def reset(proof: str | None, password: str = NEW) -> tuple[int, str]:
        body = {"token": token, "password": password} | ({"proof": proof} if proof else {})
        resp = await auth.call("POST", "/password/reset", body)
        return resp.status, resp.body.get("error", "")

    assert await reset(None) == (422, "verification_required")
    assert await reset(auth.proof(other["id"], "+12025550199", "password_reset")) == (400, "invalid_proof")  # another user's
    assert await reset(auth.proof(user["id"], "+12025550123", "registration")) == (400, "invalid_proof")  # other purpose
    assert await reset(auth.proof(user["id"], "+12025550100", "password_reset")) == (400, "invalid_proof")  # other phone
    assert await reset(auth.proof(user["id"], "+12025550123", "password_reset", secret=b"f" * 32)) == (400, "invalid_proof")
    expired = auth.proof(user["id"], "+12025550123", "password_reset", ttl=600)
    auth.clock.advance(minutes=11)
    assert await reset(expired) == (400, "invalid_proof")

    token = await _forgot(auth, "kim@example.org")  # the link itself is short-lived too: ask again
    good = auth.proof(user["id"], "+12025550123", "password_reset")
    assert await reset(good) == (200, "")
    # The same proof cannot serve a second reset.
    token = await _forgot(auth, "kim@example.org")
    assert await reset(good, "Violet-Canyon-31?") == (400, "invalid_proof")
    assert (await auth.login("kim@example.org", NEW)).status == 200


async def test_reset_links_expire_are_single_use_and_a_new_one_kills_the_old(auth: Auth) -> None:
    await auth.make_user("max@example.org")
    first = await _forgot(auth, "max@example.org")
    second = await _forgot(auth, "max@example.org")
    assert (await auth.call("POST", "/password/reset", {"token": first, "password": NEW})).status == 404
    auth.clock.advance(minutes=31)
    expired = await auth.call("POST", "/password/reset", {"token": second, "password": NEW})
    assert expired.status == 404 and expired.body["error"] == "reset_link_invalid"
    assert (await auth.call("POST", "/password/reset", {"token": "not-a-token", "password": NEW})).status == 404


async def test_change_password_rules_history_of_six_and_current_password(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("nia@brightsmiles.example", practice=practice)
    who = auth.user_identity(user)

    async def change(current: str, new: str):  # noqa: ANN202
        return await auth.call("POST", "/me/password", {"current_password": current, "new_password": new}, who=who)

    wrong = await change("Not-My-Pass-1!", NEW)
    assert wrong.status == 403 and wrong.body["error"] == "wrong_current_password"
    assert violation_codes(await change(GOOD_PASSWORD, "short")) == ["too_short", "needs_uppercase", "needs_digit", "needs_special"]
    assert violation_codes(await change(GOOD_PASSWORD, "Nia-Garden-2026!")) == ["contains_email_name"]
    assert violation_codes(await change(GOOD_PASSWORD, "P@ssw0rd")) == ["common_password"]

    # Six passwords in a row: the current one and the five before it are all refused.
    passwords = [GOOD_PASSWORD] + [f"Cobalt-Orchard-{n}?" for n in range(1, 7)]
    for previous, new in zip(passwords, passwords[1:]):
        resp = await change(previous, new)
        assert resp.status == 200, resp.body
    current = passwords[-1]
    for old in passwords[1:]:
        assert violation_codes(await change(current, old)) == ["recently_used"], old
    # The seventh back (the first one) has left the history.
    assert (await change(current, GOOD_PASSWORD)).status == 200
    assert [e["data"]["reason"] for e in await auth.events("auth.sessions.revoked")] == ["password_changed"] * 7
    assert len(await auth.audit("password_changed")) == 7


async def test_spent_proofs_and_old_link_digests_are_pruned_and_a_replay_still_fails(auth: Auth) -> None:
    """A used proof's id is kept exactly as long as the proof could be presented again, an
    expired link's digest for token_retention_days; the prune never opens a replay."""
    user = await auth.make_user("kim@example.org", two_step=True, phone="+12025550123")
    token = await _forgot(auth, "kim@example.org")
    proof = auth.proof(user["id"], "+12025550123", "password_reset", ttl=600)
    assert (await auth.call("POST", "/password/reset", {"token": token, "password": NEW, "proof": proof})).status == 200

    async def prune() -> int:
        return await prune_spent_secrets(auth.app)

    assert await prune() == 0  # the proof could still be presented: its id stays
    token = await _forgot(auth, "kim@example.org")
    replay = await auth.call("POST", "/password/reset", {"token": token, "password": "Violet-Canyon-31?", "proof": proof})
    assert replay.status == 400 and replay.body["error"] == "invalid_proof"

    auth.clock.advance(minutes=11)  # past the proof's expiry: it would be refused anyway
    assert await prune() == 1
    assert await auth.pool.fetchval("SELECT count(*) FROM used_proofs") == 0
    replay = await auth.call("POST", "/password/reset", {"token": token, "password": "Violet-Canyon-31?", "proof": proof})
    assert replay.status == 400 and replay.body["error"] == "invalid_proof"

    links = await auth.pool.fetchval("SELECT count(*) FROM tokens WHERE user_id = $1", user["id"])
    assert links == 2
    auth.clock.advance(days=auth.app[AUTH_SETTINGS].token_retention_days, minutes=31)  # 30 days after both expired
    assert await prune() == 2
    assert await auth.pool.fetchval("SELECT count(*) FROM tokens") == 0


async def test_each_revocation_raises_the_epoch_that_grants_carry(auth: Auth) -> None:
    """The gateway ends exactly the sessions granted before a revocation by comparing epochs: a
    grant made before one carries a lower epoch than its event; the fresh grant a password
    change answers carries the new epoch (that session stays)."""
    user = await auth.make_user("ola@example.org")
    who = auth.user_identity(user)
    before = await auth.login("ola@example.org", GOOD_PASSWORD)
    changed = await auth.call("POST", "/me/password", {"current_password": GOOD_PASSWORD, "new_password": NEW}, who=who)
    assert changed.status == 200, changed.body
    for n in range(1, 6):  # the 5th wrong password locks: another revocation
        await auth.login("ola@example.org", f"Wrong-{n}-Pass!")
    revoked = [(e["data"]["reason"], e["data"]["epoch"]) for e in await auth.events("auth.sessions.revoked")]
    assert revoked == [("password_changed", 1), ("locked", 2)]
    assert (before.body["grant"]["epoch"], changed.body["grant"]["epoch"]) == (0, 1)
    assert (await auth.user(user["id"]))["session_epoch"] == 2


async def test_a_login_racing_a_password_change_is_refused_or_granted_below_its_epoch(auth: Auth) -> None:
    """The attacker's race: signing in with the old password while the owner changes it. Either
    the login sees the new password (refused) or its grant's epoch is below the revocation's."""
    user = await auth.make_user("pat@example.org")
    who = auth.user_identity(user)
    passwords = [GOOD_PASSWORD] + [f"Cobalt-Orchard-{n}?" for n in range(1, 7)]
    for n, (old, new) in enumerate(zip(passwords, passwords[1:])):
        login, change = await asyncio.gather(
            auth.login("pat@example.org", old),
            auth.call("POST", "/me/password", {"current_password": old, "new_password": new}, who=who),
        )
        assert change.status == 200, change.body
        revoked_epoch = (await auth.events("auth.sessions.revoked"))[n]["data"]["epoch"]
        assert revoked_epoch == n + 1 == change.body["grant"]["epoch"]
        if login.status == 200:
            assert login.body["grant"]["epoch"] < revoked_epoch
        else:
            assert login.status == 401 and login.body["error"] == "invalid_credentials"
