"""Support opens a practice and invites its first user; invitation links are single-use and
bounded in time; registration with 2-step (ticket out, proof in) or without."""
from __future__ import annotations

import uuid

from msp_shared import signed

from auth_kit import GOOD_PASSWORD, Auth, violation_codes

PRACTICE = {
    "name": "Bright Smiles Dental", "address": "1 Main St, Springfield", "phone": "+12025550100",
    "identifiers": {"npi": "1234567893"},
}


async def open_practice(auth: Auth, email: str = "owner@brightsmiles.example", two_step: bool = True) -> dict:
    body = PRACTICE | {"first_user": {"email": email, "first_name": "Olive", "last_name": "Owner",
                                      "phone": "(202) 555-0111", "two_step_required": two_step}}
    resp = await auth.call("POST", "/admin/practices", body, who=await auth.support())
    assert resp.status == 201, resp.body
    return resp.body


def registration(token: str, **overrides: object) -> dict:
    return {"token": token, "first_name": "Olive", "last_name": "Owner", "password": GOOD_PASSWORD,
            "terms_version": "2026-01", "accept_terms": True} | overrides


async def test_invite_register_verify_by_phone(auth: Auth) -> None:
    opened = await open_practice(auth)
    assert opened["user"]["roles"] == ["member", "user_manager"]  # the practice's first user
    assert opened["user"]["status"] == "invited" and opened["user"]["phone"] == "+12025550111"
    token = await auth.invitation_token("owner@brightsmiles.example")
    mail = (await auth.emails("invitation"))[0]
    assert mail["params"] == {"practice_name": "Bright Smiles Dental"}

    form = await auth.call("GET", f"/invitations/{token}")
    assert form.status == 200
    assert set(form.body) == {"email", "first_name", "last_name", "practice_name", "two_step_required", "phone_hint",
                              "terms_version", "password_rules", "expires_at"}
    assert form.body["email"] == "owner@brightsmiles.example" and form.body["two_step_required"] is True
    assert form.body["phone_hint"].endswith("11") and "555" not in form.body["phone_hint"]

    refused = await auth.call("POST", "/registrations", registration(token, accept_terms=False))
    assert refused.status == 422 and refused.body["error"] == "terms_not_accepted"
    old_terms = await auth.call("POST", "/registrations", registration(token, terms_version="2020-01"))
    assert old_terms.status == 422
    assert violation_codes(await auth.call("POST", "/registrations", registration(token, password="owner-pass"))) == [
        "needs_uppercase", "needs_digit", "contains_email_name"]

    done = await auth.call("POST", "/registrations", registration(token))
    assert done.status == 201, done.body
    assert done.body["grant"]["restriction"] == "verification_required"
    assert done.body["user"]["status"] == "registered_unverified"
    assert done.body["user"]["terms_version"] == "2026-01"
    ticket = done.body["verification"]["ticket"]
    claims = signed.verify_claims(ticket, purpose="verify-ticket", secret=auth.verify_secret, now=auth.clock.now().timestamp())
    user_id = done.body["grant"]["user_id"]
    assert (claims["user_id"], claims["phone"], claims["purpose"]) == (user_id, "+12025550111", "registration")
    who = auth.identity_of(done.body["grant"])

    # Until the phone is proven the session can do nothing else.
    blocked = await auth.call("GET", "/practice/users", who=who)
    assert blocked.status == 403 and blocked.body["error"] == "verification_required"
    again = await auth.call("POST", "/me/verification/ticket", {}, who=who)
    assert again.status == 200 and again.body["verification"]["purpose"] == "registration"

    wrong = await auth.call("POST", "/me/verification", {"proof": auth.proof(user_id, "+12025550111", "password_reset")}, who=who)
    assert wrong.status == 400 and wrong.body["error"] == "invalid_proof"
    proof = auth.proof(user_id, "+12025550111", "registration")
    verified = await auth.call("POST", "/me/verification", {"proof": proof}, who=who)
    assert verified.status == 200, verified.body
    assert verified.body["grant"]["restriction"] is None and verified.body["user"]["status"] == "verified"
    # with the roles, so billing-service knows a practice's first user is its User Manager
    assert [(e["data"]["user_id"], e["data"]["roles"]) for e in await auth.events("auth.user.registered")] == [
        (user_id, verified.body["user"]["roles"])]
    assert (await auth.call("POST", "/me/verification", {"proof": proof}, who=who)).status == 409

    # The link worked once.
    assert (await auth.call("GET", f"/invitations/{token}")).status == 404
    assert (await auth.call("POST", "/registrations", registration(token))).status == 404
    assert (await auth.login("owner@brightsmiles.example", GOOD_PASSWORD)).body["grant"]["restriction"] is None
    actions = [r["action"] for r in await auth.audit()]
    assert {"practice_opened", "invitation_sent", "registration", "verification_ticket_issued", "phone_verified"} <= set(actions)


async def test_with_two_step_off_no_code_is_asked(auth: Auth) -> None:
    await open_practice(auth, "solo@example.org", two_step=False)
    token = await auth.invitation_token("solo@example.org")
    done = await auth.call("POST", "/registrations", registration(token, phone=None))
    assert done.status == 201, done.body
    assert done.body["grant"]["restriction"] is None and "verification" not in done.body
    assert done.body["user"]["status"] == "verified"
    assert len(await auth.events("auth.user.registered")) == 1


async def test_unverified_user_signing_in_again_must_verify_first(auth: Auth) -> None:
    await open_practice(auth, "later@example.org")
    token = await auth.invitation_token("later@example.org")
    assert (await auth.call("POST", "/registrations", registration(token))).status == 201
    login = await auth.login("later@example.org", GOOD_PASSWORD)
    assert login.body["grant"]["restriction"] == "verification_required"


async def test_the_code_goes_to_the_number_the_inviter_entered_not_one_the_registrant_types(auth: Auth) -> None:
    """The email link and the inviter's number together identify the person: someone who got
    hold of the invitation email cannot prove a phone of their own instead."""
    opened = await open_practice(auth, "owner@brightsmiles.example")  # the inviter entered (202) 555-0111
    token = await auth.invitation_token("owner@brightsmiles.example")
    swapped = await auth.call("POST", "/registrations", registration(token, phone="+1 202 555 0199"))
    assert swapped.status == 422 and swapped.body["error"] == "phone_not_on_file"
    assert "Bright Smiles Dental" in swapped.body["message"] and swapped.body["details"]["phone_hint"].endswith("11")
    assert (await auth.user(opened["user"]["id"]))["status"] == "invited"  # nothing was used up or changed

    # The manager corrects the number; the same link then works, with the corrected number.
    manager = await auth.make_user("um@brightsmiles.example", practice={"id": uuid.UUID(opened["practice"]["id"])},
                                   roles=("member", "user_manager"))
    fixed = await auth.call("PATCH", f"/practice/users/{opened['user']['id']}", {"phone": "202-555-0122"},
                            who=auth.user_identity(manager))
    assert fixed.status == 200, fixed.body
    done = await auth.call("POST", "/registrations", registration(token, phone="(202) 555-0122"))  # same number, typed
    assert done.status == 201, done.body
    ticket = signed.verify_claims(done.body["verification"]["ticket"], purpose="verify-ticket", secret=auth.verify_secret,
                                  now=auth.clock.now().timestamp())
    assert ticket["phone"] == "+12025550122"
    # Signed in but not verified yet: still no number of their own.
    who = auth.identity_of(done.body["grant"])
    other = await auth.call("POST", "/me/verification/ticket", {"phone": "+12025550199"}, who=who)
    assert other.status == 422 and other.body["error"] == "phone_not_on_file"


async def test_without_a_number_on_file_the_registrant_gives_one_and_may_change_it(auth: Auth) -> None:
    body = PRACTICE | {"first_user": {"email": "nophone@example.org", "first_name": "Nia", "two_step_required": True}}
    assert (await auth.call("POST", "/admin/practices", body, who=await auth.support())).status == 201
    token = await auth.invitation_token("nophone@example.org")
    missing = await auth.call("POST", "/registrations", registration(token, phone=None))
    assert missing.status == 422 and missing.body["error"] == "phone_required"
    done = await auth.call("POST", "/registrations", registration(token, phone="202-555-0133"))
    assert done.status == 201, done.body
    who = auth.identity_of(done.body["grant"])
    # Another number takes the password: the session alone (left open, or stolen) must not
    # make someone else's phone the one every reset code goes to.
    bare = await auth.call("POST", "/me/verification/ticket", {"phone": "202-555-0144"}, who=who)
    assert bare.status == 400 and list(bare.body["details"]["fields"]) == ["current_password"]
    wrong = await auth.call("POST", "/me/verification/ticket", {"phone": "202-555-0144", "current_password": "Not-It-1!"},
                            who=who)
    assert wrong.status == 403 and wrong.body["error"] == "wrong_current_password"
    user = await auth.pool.fetchrow("SELECT phone, failed_logins FROM users WHERE lower(email) = 'nophone@example.org'")
    assert (user["phone"], user["failed_logins"]) == ("+12025550133", 1)  # unchanged; the guess counted
    same = await auth.call("POST", "/me/verification/ticket", {"phone": "(202) 555-0133"}, who=who)
    assert same.status == 200  # the number on file again: no password needed
    changed = await auth.call("POST", "/me/verification/ticket", {"phone": "202-555-0144", "current_password": GOOD_PASSWORD},
                              who=who)
    assert changed.status == 200, changed.body
    claims = signed.verify_claims(changed.body["verification"]["ticket"], purpose="verify-ticket",
                                  secret=auth.verify_secret, now=auth.clock.now().timestamp())
    assert claims["phone"] == "+12025550144"


async def test_invitation_expires_and_a_reinvite_kills_the_old_link(auth: Auth) -> None:
    opened = await open_practice(auth, "first@example.org")
    first = await auth.invitation_token("first@example.org")
    support = await auth.support()
    resp = await auth.call("POST", f"/practice/users/{opened['user']['id']}/reinvite", who=support)
    assert resp.status == 202, resp.body
    second = await auth.invitation_token("first@example.org")
    assert second != first
    assert (await auth.call("GET", f"/invitations/{first}")).status == 404
    assert (await auth.call("GET", f"/invitations/{second}")).status == 200
    auth.clock.advance(hours=72, seconds=1)
    gone = await auth.call("GET", f"/invitations/{second}")
    assert gone.status == 404 and gone.body["error"] == "invitation_invalid"
    assert (await auth.call("POST", "/registrations", registration(second))).status == 404


async def test_only_support_opens_practices(auth: Auth) -> None:
    practice = await auth.make_practice()
    manager = await auth.make_user("um@example.org", practice=practice, roles=("member", "user_manager"))
    body = PRACTICE | {"first_user": {"email": "x@example.org"}}
    resp = await auth.call("POST", "/admin/practices", body, who=auth.user_identity(manager))
    assert resp.status == 403
    # A forged role in the identity header does not help: roles are read from the database.
    forged = auth.user_identity(manager)
    forged = type(forged)(user_id=forged.user_id, practice_id=forged.practice_id, roles=("support",), ip=forged.ip)
    assert (await auth.call("POST", "/admin/practices", body, who=forged)).status == 403
    taken = PRACTICE | {"first_user": {"email": "UM@example.org"}}
    assert (await auth.call("POST", "/admin/practices", taken, who=await auth.support())).status == 409
