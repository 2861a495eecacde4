"""Profile edits (re-verification of a new phone or email) and password-expiry warnings."""
from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

from msp_auth.keys import AUTH_SETTINGS, SEALER
from msp_auth.tasks import send_expiry_warnings
from msp_shared import phones
from msp_shared.web import CLOCK, POOL

from auth_kit import GOOD_PASSWORD, Auth, token_from_link

APP_JS = Path(__file__).resolve().parents[2] / "gateway/src/msp_gateway/static/app.js"


async def test_profile_edits_and_validation(auth: Auth) -> None:
    practice = await auth.make_practice()
    user = await auth.make_user("pia@example.org", practice=practice, two_step=True)
    who = auth.user_identity(user)
    resp = await auth.call("PATCH", "/me", {"first_name": "Pia", "last_name": "Lopez", "time_zone": "America/Chicago",
                                            "ada_number": "ADA-123", "specialties": ["Orthodontics"],
                                            "cell_phone": "+1 202 555 0144", "two_step_required": False,
                                            "current_password": GOOD_PASSWORD}, who=who)
    assert resp.status == 200, resp.body
    got = resp.body["user"]
    assert (got["first_name"], got["time_zone"], got["ada_number"], got["specialties"], got["cell_phone"],
            got["two_step_required"]) == ("Pia", "America/Chicago", "ADA-123", ["Orthodontics"], "+12025550144", False)
    assert (await auth.call("PATCH", "/me", {"time_zone": "Mars/Olympus"}, who=who)).status == 400
    assert (await auth.call("PATCH", "/me", {"phone": "12"}, who=who)).status == 400
    assert (await auth.call("PATCH", "/me", {"roles": ["support"]}, who=who)).status == 400
    assert [r["details"] for r in await auth.audit("two_step_changed")] == ['{"required": false}']


async def test_new_phone_needs_a_proof_before_it_replaces_the_old(auth: Auth) -> None:
    user = await auth.make_user("quinn@example.org", phone="+12025550123")
    other = await auth.make_user("rex@example.org")
    who = auth.user_identity(user)
    resp = await auth.call("PATCH", "/me", {"phone": "(202) 555-0188", "current_password": GOOD_PASSWORD}, who=who)
    assert resp.status == 200 and resp.body["user"]["phone"] == "+12025550123"  # not yet
    assert resp.body["verification"]["purpose"] == "phone_change"
    others = auth.proof(other["id"], "+12025550188", "phone_change")
    assert (await auth.call("POST", "/me/phone", {"proof": others}, who=who)).status == 400
    proof = auth.proof(user["id"], "+12025550188", "phone_change")
    done = await auth.call("POST", "/me/phone", {"proof": proof}, who=who)
    assert done.status == 200 and done.body["user"]["phone"] == "+12025550188"
    assert (await auth.call("POST", "/me/phone", {"proof": proof}, who=who)).status == 400  # replay
    assert len(await auth.audit("profile_phone_changed")) == 1


async def test_premium_rate_and_toll_free_numbers_are_refused_naming_the_field(auth: Auth) -> None:
    """SMS pumping / toll fraud: codes never go to such numbers, so they are not taken as
    anyone's phone; the person is told why, next to the field."""
    user = await auth.make_user("uma@example.org", phone="+12025550123")
    who = auth.user_identity(user)
    for field, number in [("phone", "+1 900 222 3333"), ("phone", "(800) 222-3333"), ("cell_phone", "+44 909 879 0000")]:
        resp = await auth.call("PATCH", "/me", {field: number, "current_password": GOOD_PASSWORD}, who=who)
        assert resp.status == 400 and resp.body["error"] == "invalid_input", resp.body
        assert resp.body["details"]["fields"] == {field: phones.NOT_FOR_CODES}
    assert await auth.audit("verification_ticket_issued") == []  # no code was offered for the number
    got = await auth.user(user["id"])
    assert (got["phone"], got["cell_phone"]) == ("+12025550123", user["cell_phone"])
    mobile = await auth.call("PATCH", "/me", {"cell_phone": "+44 7911 123456", "current_password": GOOD_PASSWORD}, who=who)
    assert mobile.status == 200 and mobile.body["user"]["cell_phone"] == "+447911123456"


async def test_new_email_is_confirmed_by_a_link_sent_to_it(auth: Auth) -> None:
    user = await auth.make_user("sam@example.org")
    taken = await auth.make_user("taken@example.org")
    who = auth.user_identity(user)
    resp = await auth.call("PATCH", "/me", {"email": "sam@newmail.example", "current_password": GOOD_PASSWORD}, who=who)
    assert resp.status == 200 and resp.body["email_confirmation_sent"] is True
    assert resp.body["user"]["email"] == "sam@example.org" and resp.body["user"]["pending_email"] == "sam@newmail.example"
    mail = [m for m in await auth.emails("generic_notice") if m["to"] == "sam@newmail.example"][0]
    token = token_from_link(mail["link"])
    stranger = auth.user_identity(taken)
    assert (await auth.call("POST", "/me/email/confirm", {"token": token}, who=stranger)).status == 404
    done = await auth.call("POST", "/me/email/confirm", {"token": token}, who=who)
    assert done.status == 200 and done.body["user"]["email"] == "sam@newmail.example"
    assert (await auth.call("POST", "/me/email/confirm", {"token": token}, who=who)).status == 404  # single use
    assert "sam@example.org" in [m["to"] for m in await auth.emails("generic_notice")]  # the old address is told
    assert (await auth.login("sam@newmail.example", "Tulip-Harbor-42!")).status == 200
    assert len(await auth.audit("profile_email_changed")) == 1


async def test_asking_for_a_taken_address_answers_as_for_a_free_one_and_tells_its_owner(auth: Auth) -> None:
    """PATCH /me must not tell a signed-in user (a patient, say) which addresses have accounts."""
    user = await auth.make_user("sam@example.org")
    await auth.make_user("taken@example.org")
    who = auth.user_identity(user)
    free = await auth.call("PATCH", "/me", {"email": "free@example.org", "current_password": GOOD_PASSWORD}, who=who)
    taken = await auth.call("PATCH", "/me", {"email": "TAKEN@example.org", "current_password": GOOD_PASSWORD}, who=who)
    assert (free.status, taken.status) == (200, 200)
    assert free.body.keys() == taken.body.keys() and taken.body["email_confirmation_sent"] is True
    assert taken.body["user"]["pending_email"] == "TAKEN@example.org"
    [notice] = [m for m in await auth.emails("generic_notice") if m["to"] == "TAKEN@example.org"]
    assert "link" not in notice or not notice["link"]  # nothing to confirm: the owner is only told
    # the link sent for the free address was the last usable one; the taken request ended it
    free_link = [m for m in await auth.emails("generic_notice") if m["to"] == "free@example.org"][0]["link"]
    assert (await auth.call("POST", "/me/email/confirm", {"token": token_from_link(free_link)}, who=who)).status == 404
    assert (await auth.user(user["id"]))["email"] == "sam@example.org"
    [refused] = [a for a in await auth.audit("email_change_requested") if a["outcome"] == "refused"]
    assert json.loads(refused["details"])["reason"] == "email_taken"


async def test_only_the_newest_address_can_be_confirmed_and_requests_are_bounded(auth: Auth) -> None:
    """A link sent to an earlier address must not confirm a later one nobody proved; and a
    signed-in user cannot make the portal mail any number of addresses."""
    user = await auth.make_user("sam@example.org")
    who = auth.user_identity(user)
    pw = {"current_password": GOOD_PASSWORD}

    async def link_to(address: str) -> str:
        return token_from_link([m for m in await auth.emails("generic_notice") if m["to"] == address][-1]["link"])

    assert (await auth.call("PATCH", "/me", {"email": "mine@newmail.example", **pw}, who=who)).status == 200
    mine = await link_to("mine@newmail.example")
    assert (await auth.call("PATCH", "/me", {"email": "someone.else@example.org", **pw}, who=who)).status == 200
    stale = await auth.call("POST", "/me/email/confirm", {"token": mine}, who=who)
    assert stale.status == 404  # it would have made someone.else@ the account's address, unproven
    assert (await auth.user(user["id"]))["email"] == "sam@example.org"
    newest = await auth.call("POST", "/me/email/confirm", {"token": await link_to("someone.else@example.org")}, who=who)
    assert newest.status == 200 and newest.body["user"]["email"] == "someone.else@example.org"

    limit = auth.app[AUTH_SETTINGS].email_change_requests_per_hour
    for n in range(limit - 2):  # two asked already this hour
        assert (await auth.call("PATCH", "/me", {"email": f"addr{n}@example.org", **pw}, who=who)).status == 200
    sent = len(await auth.emails("generic_notice"))
    refused = await auth.call("PATCH", "/me", {"email": "one.more@example.org", **pw}, who=who)
    assert refused.status == 429 and refused.body["error"] == "too_many_requests"
    assert len(await auth.emails("generic_notice")) == sent  # nothing mailed
    auth.clock.advance(hours=1, seconds=1)
    assert (await auth.call("PATCH", "/me", {"email": "one.more@example.org", **pw}, who=who)).status == 200


async def test_expiry_warnings_14_7_1_days_before_each_sent_once(auth: Auth) -> None:
    user = await auth.make_user("tess@example.org")
    app = auth.app

    async def run_pass() -> list[str]:
        """One pass of the task; the days_left of the warnings mailed to this user by it."""
        before = len(await auth.emails("password_expiry_warning"))
        await send_expiry_warnings(app[POOL], app[AUTH_SETTINGS], app[SEALER], app[CLOCK])
        new = (await auth.emails("password_expiry_warning"))[before:]
        return [m["params"]["days_left"] for m in new if m["to"] == "tess@example.org"]

    auth.clock.advance(days=75)
    assert await run_pass() == []
    auth.clock.advance(days=1)  # 14 days left
    assert await run_pass() == ["14"]
    assert await run_pass() == []  # once
    me = await auth.call("GET", "/me", who=auth.user_identity(user))
    assert me.body["user"]["password_expiry_warning_days"] == 14
    auth.clock.advance(days=7)
    assert await run_pass() == ["7"]
    auth.clock.advance(days=6, hours=1)
    assert await run_pass() == ["1"]
    assert await run_pass() == []
    assert len(await auth.audit("password_expiry_warning")) >= 3
    # The mail's link opens the web app's change-password page (a route it has).
    link = (await auth.emails("password_expiry_warning"))[-1]["link"]
    assert link == app[AUTH_SETTINGS].public_url.rstrip("/") + "/#/change-password"
    assert '"#/change-password": viewChangePassword' in APP_JS.read_text()
    # A new password starts the clock again.
    changed = await auth.call("POST", "/me/password", {"current_password": "Tulip-Harbor-42!",
                                                       "new_password": "Amber-Lagoon-55!"}, who=auth.user_identity(user))
    assert changed.status == 200
    assert (await auth.call("GET", "/me", who=auth.user_identity(user))).body["user"]["password_expiry_warning_days"] is None
    auth.clock.advance(timedelta(days=76))
    assert await run_pass() == ["14"]
