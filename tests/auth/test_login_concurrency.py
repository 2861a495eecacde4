"""Login under concurrency: parallel wrong passwords lock on exactly the 5th, once; parallel
right passwords all sign in, each audited."""
from __future__ import annotations

import asyncio

from auth_kit import GOOD_PASSWORD, Auth


async def test_parallel_wrong_passwords_lock_exactly_once(auth: Auth) -> None:
    user = await auth.make_user("gina@example.org")
    answers = await asyncio.gather(*(auth.login("gina@example.org", f"Wrong-{i}-Pass!") for i in range(8)))
    assert {(a.status, a.body["error"]) for a in answers} == {(401, "invalid_credentials")}
    row = await auth.user(user["id"])
    assert row["locked_at"] is not None and row["failed_logins"] == 5  # the count stops at the lock
    assert len(await auth.audit("account_locked")) == 1
    assert len(await auth.events("auth.user.locked")) == 1
    assert [r["outcome"] for r in await auth.audit("login")] == ["failed"] * 8
    right = await auth.login("gina@example.org", GOOD_PASSWORD)
    assert right.status == 423 and right.body["error"] == "account_locked"


async def test_parallel_right_passwords_all_sign_in_and_are_audited(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("hal@example.org", practice=practice)
    answers = await asyncio.gather(*(auth.login("hal@example.org", GOOD_PASSWORD) for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert {a.body["user"]["practice"]["name"] for a in answers} == {"Bright Smiles Dental"}
    assert {a.body["grant"]["practice_id"] for a in answers} == {str(practice["id"])}
    rows = await auth.audit("login")
    assert [(r["outcome"], str(r["actor_id"]), r["ip"]) for r in rows] == [("ok", str(user["id"]), "203.0.113.7")] * 6
    fresh = await auth.user(user["id"])
    assert fresh["failed_logins"] == 0 and fresh["last_login_at"] == auth.clock.now()


async def test_a_lock_landing_while_hashing_refuses_the_right_password(auth: Auth) -> None:
    user = await auth.make_user("ivy@example.org")
    for i in range(4):
        assert (await auth.login("ivy@example.org", f"Wrong-{i}-Pass!")).status == 401
    # The 5th wrong password and the right one race: whichever order the database sees, the
    # account ends locked and the right password is either signed in first or refused after.
    wrong, right = await asyncio.gather(
        auth.login("ivy@example.org", "Wrong-5-Pass!"), auth.login("ivy@example.org", GOOD_PASSWORD)
    )
    assert wrong.status == 401
    row = await auth.user(user["id"])
    if right.status == 200:  # signed in first: the count restarted, so no lock yet
        assert row["locked_at"] is None and row["failed_logins"] == 1
    else:
        assert right.status == 423 and row["locked_at"] is not None
        assert [r["outcome"] for r in await auth.audit("login")][-1] == "refused"
