"""What a stolen session must not be able to do, and where 2-step verification may be switched.

1. PATCH /me: turning 2-step off, a new email and new phones need the current password in the
   same request (else: 2-step off, email moved, "Forgot password" = the account). A wrong one
   counts towards the lockout exactly as on POST /me/password.
2. 2-step goes on (by the user or a User Manager) only for a registered user whose phone was
   proven by a code: password resets would otherwise send codes to an unproven number.
3. nist_rev4: an 8-character password is allowed only with 2-step, so 2-step goes off (user or
   User Manager) only when the password is known to be long enough alone (15).
4. A User Manager may not turn 2-step off for an invited account other practices wrote to."""
from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest

from msp_auth import policy, store
from msp_auth.config import AuthSettings
from msp_auth.keys import HASHER
from msp_shared.clock import ManualClock

from auth_kit import GOOD_PASSWORD, Auth, message_to, start_auth, token_from_link

UM_ROLES = ("member", "user_manager")
SHORT = "tern-opal-9"  # 11 characters: nist_rev4 allows it with 2-step only
LONG = "a long passphrase for me"  # 24 characters: enough alone
GUARDED = [
    ({"two_step_required": False}, ["two_step_required"]),
    ({"email": "thief@evil.example"}, ["email"]),
    ({"phone": "+1 202 555 0199"}, ["phone"]),
    ({"cell_phone": "+1 202 555 0198"}, ["cell_phone"]),
    ({"cell_phone": None}, ["cell_phone"]),
    ({"two_step_required": False, "email": "thief@evil.example"}, ["two_step_required", "email"]),
]


def details(row) -> dict:  # noqa: ANN001
    return json.loads(row["details"])


async def _victim(auth: Auth, email: str = "vic@example.org") -> dict:
    practice = await auth.make_practice()
    user = await auth.make_user(email, practice=practice, two_step=True, phone="+12025550123")
    async with auth.pool.acquire() as conn:
        user = await store.update_user(conn, user["id"], {"cell_phone": "+12025550124"}, auth.clock.now())
    return user


# ---- 1. the current password guards 2-step off, email and phones --------------------------------------

async def test_a_stolen_session_cannot_turn_two_step_off_or_move_the_email_or_phones(auth: Auth) -> None:
    user = await _victim(auth)
    thief = auth.user_identity(user)
    before = await auth.user(user["id"])
    for patch, fields in GUARDED:
        missing = await auth.call("PATCH", "/me", patch, who=thief)
        assert missing.status == 400 and missing.body["error"] == "invalid_input", (patch, missing.body)
        assert list(missing.body["details"]["fields"]) == ["current_password"]
        assert "current password" in missing.body["details"]["fields"]["current_password"]
    assert await auth.user(user["id"]) == before  # nothing changed, not even updated_at
    assert await auth.emails("generic_notice") == []  # no confirmation link went anywhere
    assert await auth.audit("verification_ticket_issued") == []  # no code for the thief's phone
    refused = [details(r) for r in await auth.audit("profile_change")]
    assert [d["fields"] for d in refused] == [f for _, f in GUARDED]
    assert {d["reason"] for d in refused} == {"current_password_missing"}
    assert "thief" not in json.dumps(refused)
    assert (await auth.user(user["id"]))["failed_logins"] == 0  # a missing password is no guess

    # Guessing: each wrong password is counted with the logins' and the change-password form's;
    # the 5th locks the account (and ends its sessions) as a 5th wrong login would.
    assert (await auth.login(user["email"], "Wrong-Guess-0!")).status == 401
    assert (await auth.call("POST", "/me/password", {"current_password": "Wrong-Guess-1!",
                                                     "new_password": "Cobalt-Orchard-1?"}, who=thief)).status == 403
    for n, (patch, _) in enumerate(GUARDED[:3], start=2):
        wrong = await auth.call("PATCH", "/me", {**patch, "current_password": f"Wrong-Guess-{n}!"}, who=thief)
        assert wrong.status == 403 and wrong.body["error"] == "wrong_current_password", wrong.body
        assert wrong.body["message"] == "Your current password is not right."
    locked = await auth.user(user["id"])
    assert locked["locked_at"] is not None and locked["failed_logins"] == 5
    assert (locked["two_step_required"], locked["email"], locked["pending_email"], locked["phone"], locked["cell_phone"]) == (
        True, "vic@example.org", None, "+12025550123", "+12025550124")
    failed = [details(r) for r in await auth.audit("profile_change") if r["outcome"] == "failed"]
    assert [(d["reason"], d["consecutive_failures"]) for d in failed] == [("wrong_password", n) for n in (3, 4, 5)]
    assert len(await auth.audit("account_locked")) == 1
    assert [m["to"] for m in await auth.emails("account_locked")] == ["vic@example.org"]
    assert [e["data"]["reason"] for e in await auth.events("auth.sessions.revoked")] == ["locked"]
    # Even the right password changes nothing on a locked account.
    late = await auth.call("PATCH", "/me", {"two_step_required": False, "current_password": GOOD_PASSWORD}, who=thief)
    assert late.status == 423 and late.body["error"] == "account_locked"
    assert (await auth.user(user["id"]))["two_step_required"] is True


async def test_forgot_password_still_reaches_the_owner_after_a_thiefs_attempts(auth: Auth) -> None:
    """The takeover the guard stops: 2-step off, email moved to the thief, then "Forgot password"."""
    user = await _victim(auth)
    thief = auth.user_identity(user)
    assert (await auth.call("PATCH", "/me", {"two_step_required": False}, who=thief)).status == 400
    assert (await auth.call("PATCH", "/me", {"email": "thief@evil.example", "current_password": "Guess-1234!"},
                            who=thief)).status == 403
    assert (await auth.call("POST", "/password/forgot", {"email": "thief@evil.example"})).status == 202
    assert (await auth.call("POST", "/password/forgot", {"email": "vic@example.org"})).status == 202
    assert [m["to"] for m in await auth.emails("password_reset")] == ["vic@example.org"]
    link = token_from_link((await auth.emails("password_reset"))[0]["link"])
    info = await auth.call("POST", "/password/reset/verification", {"token": link})
    assert info.body["two_step"] is True  # the reset still needs the owner's phone


async def test_the_owner_changes_them_with_the_current_password_and_the_rest_without(auth: Auth) -> None:
    user = await _victim(auth)
    who = auth.user_identity(user)
    pw = {"current_password": GOOD_PASSWORD}
    # No password for names, time zone, ADA number, specialties, or turning 2-step on.
    free = await auth.call("PATCH", "/me", {"first_name": "Vi", "last_name": "Cole", "time_zone": "America/Chicago",
                                            "ada_number": "ADA-9", "specialties": ["Endodontics"]}, who=who)
    assert free.status == 200, free.body
    # Fields sent with their current value are not changes (a form may send them all).
    same = await auth.call("PATCH", "/me", {"email": "VIC@example.org", "cell_phone": "(202) 555-0124",
                                            "two_step_required": True}, who=who)
    assert same.status == 200 and "verification" not in same.body and "email_confirmation_sent" not in same.body

    off = await auth.call("PATCH", "/me", {"two_step_required": False, **pw}, who=who)
    assert off.status == 200 and off.body["user"]["two_step_required"] is False
    on = await auth.call("PATCH", "/me", {"two_step_required": True}, who=who)
    assert on.status == 200 and on.body["user"]["two_step_required"] is True
    phone = await auth.call("PATCH", "/me", {"phone": "(202) 555-0188", **pw}, who=who)
    assert phone.status == 200 and phone.body["verification"]["purpose"] == "phone_change"
    cell = await auth.call("PATCH", "/me", {"cell_phone": None, **pw}, who=who)
    assert cell.status == 200 and cell.body["user"]["cell_phone"] is None
    email = await auth.call("PATCH", "/me", {"email": "vic@newmail.example", **pw}, who=who)
    assert email.status == 200 and email.body["email_confirmation_sent"] is True
    assert email.body["user"]["pending_email"] == "vic@newmail.example"
    got = await auth.user(user["id"])
    assert got["failed_logins"] == 0 and got["locked_at"] is None
    assert [details(r)["required"] for r in await auth.audit("two_step_changed")] == [False, True]
    assert await auth.audit("profile_change") == []  # nothing refused


async def test_a_right_password_resets_nothing_of_the_count_a_wrong_one_added(auth: Auth) -> None:
    """As on POST /me/password: only a successful login clears the count of wrong passwords."""
    user = await _victim(auth)
    who = auth.user_identity(user)
    assert (await auth.call("PATCH", "/me", {"email": "x@example.org", "current_password": "Nope-Nope-1!"},
                            who=who)).status == 403
    assert (await auth.call("PATCH", "/me", {"email": "x@example.org", "current_password": GOOD_PASSWORD},
                            who=who)).status == 200
    assert (await auth.user(user["id"]))["failed_logins"] == 1


# ---- 2. 2-step goes on only with a proven phone ----------------------------------------------------------

async def test_two_step_on_needs_a_proven_phone_and_the_profile_proves_the_number_on_file(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("pat@example.org", practice=practice, phone="+12025550123", phone_verified=False)
    who = auth.user_identity(user)
    # Attack: a number nobody proved would get every password-reset code.
    refused = await auth.call("PATCH", "/me", {"two_step_required": True, "first_name": "Pat"}, who=who)
    assert refused.status == 409 and refused.body["error"] == "phone_not_verified", refused.body
    assert "Confirm your phone number first" in refused.body["message"] and "Phone" in refused.body["message"]
    got = await auth.user(user["id"])
    assert (got["two_step_required"], got["first_name"]) == (False, "Pat")
    [row] = await auth.audit("two_step_changed")
    assert row["outcome"] == "refused" and details(row) == {"required": True, "reason": "phone_not_verified"}

    # The way the message points to: saving the number on file (no password: not a change)
    # sends a code to it; its proof marks it proven; then 2-step goes on.
    resp = await auth.call("PATCH", "/me", {"phone": "(202) 555-0123"}, who=who)
    assert resp.status == 200 and resp.body["verification"]["purpose"] == "phone_change", resp.body
    assert resp.body["verification"]["phone_hint"].endswith("23")
    done = await auth.call("POST", "/me/phone", {"proof": auth.proof(user["id"], "+12025550123", "phone_change")}, who=who)
    assert done.status == 200 and done.body["user"]["phone"] == "+12025550123"
    assert (await auth.user(user["id"]))["phone_verified_at"] is not None
    assert len(await auth.audit("phone_verified")) == 1 and await auth.audit("profile_phone_changed") == []
    on = await auth.call("PATCH", "/me", {"two_step_required": True}, who=who)
    assert on.status == 200 and on.body["user"]["two_step_required"] is True
    # Once proven, saving the same number again sends nothing.
    again = await auth.call("PATCH", "/me", {"phone": "+12025550123"}, who=who)
    assert again.status == 200 and "verification" not in again.body


async def test_a_user_manager_cannot_require_two_step_on_an_unproven_phone(auth: Auth) -> None:
    practice = await auth.make_practice()
    um = auth.user_identity(await auth.make_user("um@a.example", practice=practice, roles=UM_ROLES))
    member = await auth.make_user("mem@a.example", practice=practice, phone="+12025550123", phone_verified=False)
    refused = await auth.call("PATCH", f"/practice/users/{member['id']}", {"two_step_required": True}, who=um)
    assert refused.status == 409 and refused.body["error"] == "phone_not_verified", refused.body
    assert "confirm it in their profile" in refused.body["message"]
    assert (await auth.user(member["id"]))["two_step_required"] is False
    [row] = await auth.audit("two_step_changed")
    assert (row["outcome"], str(row["actor_id"]), details(row)) == (
        "refused", um.user_id, {"required": True, "reason": "phone_not_verified"})

    # Invited users are unchanged: registration proves the number.
    invited = await auth.make_user("new@a.example", password=None, practice=practice, phone="+12025550155")
    await auth.pool.execute("UPDATE users SET two_step_required = false WHERE id = $1", invited["id"])
    ok = await auth.call("PATCH", f"/practice/users/{invited['id']}", {"two_step_required": True}, who=um)
    assert ok.status == 200 and ok.body["user"]["two_step_required"] is True
    # Once the member proves the number, the manager may require 2-step.
    await auth.pool.execute("UPDATE users SET phone_verified_at = now() WHERE id = $1", member["id"])
    ok = await auth.call("PATCH", f"/practice/users/{member['id']}", {"two_step_required": True}, who=um)
    assert ok.status == 200 and ok.body["user"]["two_step_required"] is True


# ---- 3. nist_rev4: a short password stays with 2-step ----------------------------------------------------

@pytest.fixture
async def nist(auth_settings: AuthSettings, clock: ManualClock) -> AsyncIterator[Auth]:
    kit, client = await start_auth(auth_settings.model_copy(update={"password_policy": "nist_rev4"}), clock)
    try:
        yield kit
    finally:
        await client.close()


async def test_nist_a_user_with_a_short_password_cannot_turn_two_step_off(nist: Auth) -> None:
    practice = await nist.make_practice()
    user = await nist.make_user("sho@example.org", SHORT, practice=practice, two_step=True)
    who = nist.user_identity(user)
    assert (await nist.user(user["id"]))["password_single_factor_ok"] is False
    refused = await nist.call("PATCH", "/me", {"two_step_required": False, "current_password": SHORT}, who=who)
    assert refused.status == 409 and refused.body["error"] == "password_needs_two_step", refused.body
    assert "at least 15 characters" in refused.body["message"]
    assert (await nist.user(user["id"]))["two_step_required"] is True
    [row] = await nist.audit("two_step_changed")
    assert row["outcome"] == "refused" and details(row) == {"required": False, "reason": "password_needs_two_step"}

    # A long enough password, and 2-step may go.
    changed = await nist.call("POST", "/me/password", {"current_password": SHORT, "new_password": LONG}, who=who)
    assert changed.status == 200, changed.body
    off = await nist.call("PATCH", "/me", {"two_step_required": False, "current_password": LONG}, who=who)
    assert off.status == 200 and off.body["user"]["two_step_required"] is False
    # Without 2-step, the short one is refused as a new password (the 15 applies again).
    back = await nist.call("POST", "/me/password", {"current_password": LONG, "new_password": SHORT}, who=who)
    assert back.status == 422 and [v["code"] for v in back.body["details"]["violations"]] == ["too_short"]


async def test_nist_the_typed_password_settles_an_unknown_length(nist: Auth) -> None:
    """Passwords set before the flag, or by a caller that did not pass it, are unknown: the
    user's own request carries the password, so its length decides and is remembered."""
    practice = await nist.make_practice()
    user = await nist.make_user("old@example.org", LONG, practice=practice, two_step=True)
    await nist.pool.execute("UPDATE users SET password_single_factor_ok = NULL WHERE id = $1", user["id"])
    who = nist.user_identity(user)
    off = await nist.call("PATCH", "/me", {"two_step_required": False, "current_password": LONG}, who=who)
    assert off.status == 200 and off.body["user"]["two_step_required"] is False
    assert (await nist.user(user["id"]))["password_single_factor_ok"] is True


async def test_nist_a_user_manager_cannot_leave_a_short_password_alone(nist: Auth) -> None:
    practice = await nist.make_practice()
    um = nist.user_identity(await nist.make_user("um@a.example", LONG, practice=practice, roles=UM_ROLES))
    short = await nist.make_user("sho@a.example", SHORT, practice=practice, two_step=True)
    unknown = await nist.make_user("unk@a.example", LONG, practice=practice, two_step=True)
    await nist.pool.execute("UPDATE users SET password_single_factor_ok = NULL WHERE id = $1", unknown["id"])
    long = await nist.make_user("lon@a.example", LONG, practice=practice, two_step=True)
    unverified = await nist.make_user("half@a.example", SHORT, practice=practice, two_step=True,
                                      status="registered_unverified")
    for target in (short, unknown, unverified):  # unknown counts as too short
        refused = await nist.call("PATCH", f"/practice/users/{target['id']}", {"two_step_required": False}, who=um)
        assert refused.status == 409 and refused.body["error"] == "password_needs_two_step", refused.body
        got = await nist.user(target["id"])
        assert got["two_step_required"] is True and got["status"] == target["status"]
    assert [details(r)["reason"] for r in await nist.audit("two_step_changed")] == ["password_needs_two_step"] * 3
    ok = await nist.call("PATCH", f"/practice/users/{long['id']}", {"two_step_required": False}, who=um)
    assert ok.status == 200 and ok.body["user"]["two_step_required"] is False
    # An invited user has no password yet: registration then asks for 15 characters.
    invited = await nist.make_user("inv@a.example", password=None, practice=practice)
    ok = await nist.call("PATCH", f"/practice/users/{invited['id']}", {"two_step_required": False}, who=um)
    assert ok.status == 200 and ok.body["user"]["two_step_required"] is False


async def test_practice_portal_lets_a_short_password_go_without_two_step(auth: Auth) -> None:
    """8 characters is that profile's length with or without 2-step: nothing to refuse."""
    practice = await auth.make_practice()
    um = auth.user_identity(await auth.make_user("um@a.example", practice=practice, roles=UM_ROLES))
    short = await auth.make_user("sho@a.example", "Tern-9?x", practice=practice, two_step=True)
    assert (await auth.user(short["id"]))["password_single_factor_ok"] is False
    ok = await auth.call("PATCH", f"/practice/users/{short['id']}", {"two_step_required": False}, who=um)
    assert ok.status == 200 and ok.body["user"]["two_step_required"] is False


async def test_a_new_password_records_its_own_answer_never_the_previous_one(auth: Auth) -> None:
    user = await auth.make_user("rec@example.org", LONG)
    assert (await auth.user(user["id"]))["password_single_factor_ok"] is True
    async with auth.pool.acquire() as conn:
        new_hash = await auth.app[HASHER].hash(SHORT)
        await store.set_password(conn, user["id"], new_hash, auth.clock.now())  # a caller that did not say
        assert (await store.get_user(conn, user["id"]))["password_single_factor_ok"] is None
        await store.set_password(conn, user["id"], new_hash, auth.clock.now(), single_factor_ok=False)
        assert (await store.get_user(conn, user["id"]))["password_single_factor_ok"] is False
        # Filling in an unknown answer only applies to the password it was computed for.
        await conn.execute("UPDATE users SET password_single_factor_ok = NULL WHERE id = $1", user["id"])
        await store.record_single_factor_ok(conn, user["id"], "some other hash", True)
        assert (await store.get_user(conn, user["id"]))["password_single_factor_ok"] is None
        await store.record_single_factor_ok(conn, user["id"], new_hash, False)
        assert (await store.get_user(conn, user["id"]))["password_single_factor_ok"] is False
    assert policy.single_factor_ok(SHORT) is False and policy.single_factor_ok(LONG) is True


# ---- 4. another practice's patient keeps 2-step ----------------------------------------------------------

async def test_a_manager_cannot_turn_two_step_off_for_an_invitee_other_practices_wrote_to(auth: Auth) -> None:
    a, b = await auth.make_practice("Practice A"), await auth.make_practice("Practice B")
    sender_a = await auth.make_user("dr@a.example", practice=a)
    sender_b = await auth.make_user("dr@b.example", practice=b)
    um_a = auth.user_identity(await auth.make_user("um@a.example", practice=a, roles=UM_ROLES))
    [mine] = await message_to(auth, sender_a, "only-a@example.org")
    [shared] = await message_to(auth, sender_a, "patient@example.org")
    await message_to(auth, sender_b, "patient@example.org")
    assert (await auth.user(shared["user_id"]))["two_step_required"] is True

    refused = await auth.call("PATCH", f"/practice/users/{shared['user_id']}", {"two_step_required": False}, who=um_a)
    assert refused.status == 409 and refused.body["error"] == "addressed_by_other_practices", refused.body
    assert "2-Step Verification cannot be turned off" in refused.body["message"]
    assert (await auth.user(shared["user_id"]))["two_step_required"] is True
    [row] = await auth.audit("two_step_changed")
    assert (row["outcome"], str(row["actor_id"]), str(row["subject_id"]), details(row)) == (
        "refused", um_a.user_id, shared["user_id"], {"required": False, "reason": "addressed_by_other_practices"})

    # Turning it on stays allowed; and A's own invitee nobody else wrote to is A's call.
    await auth.pool.execute("UPDATE users SET two_step_required = false WHERE id = $1", shared["user_id"])
    on = await auth.call("PATCH", f"/practice/users/{shared['user_id']}", {"two_step_required": True}, who=um_a)
    assert on.status == 200 and on.body["user"]["two_step_required"] is True
    off = await auth.call("PATCH", f"/practice/users/{mine['user_id']}", {"two_step_required": False}, who=um_a)
    assert off.status == 200 and off.body["user"]["two_step_required"] is False
