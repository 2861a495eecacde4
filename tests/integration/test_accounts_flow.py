"""Accounts and sign-in security end to end, through the gateway (issue 3, "What must be
shown"): gateway, auth-, verify- and mail-service on real sockets, real PostgreSQL and
RabbitMQ, invitation and reset links read from the mails the dev SMTP server stored, codes
read from the dev outbox's sms.jsonl, time moved with the ManualClock the apps share.

Every user here is created the way a real one is: Support opens a practice (or invites its
staff), the invitee follows the emailed link and registers, proving the phone by a code."""
from __future__ import annotations

from datetime import datetime

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Browser, Stack, eventually, text_of, token_link

from msp_shared import signed
from msp_shared.web import POOL

PASSWORD = "Tulip-Harbor-42!"
NEW_PASSWORD = "Quartz-Meadow-77?"
OTHER_PASSWORD = "Velvet-Canyon-19#"


@pytest.fixture
def stack_settings() -> dict[str, dict]:
    # The gateway's own per-IP/per-account throttles (tested in tests/gateway) would cut these
    # long single-client flows short; the rules under test here are auth's and verify's.
    return {"gateway": {"rate_limit_login_per_ip": 1000, "rate_limit_login_per_account": 1000,
                        "rate_limit_sensitive_per_ip": 1000, "rate_limit_sensitive_per_account": 1000}}


@dataclass
class Member:
    browser: Browser
    id: str
    email: str
    phone: str | None
    password: str


async def support_browser(stack: Stack) -> Browser:
    support = stack.browser()
    status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
    assert status == 200 and body["user"]["roles"] == ["support"], body
    return support


async def open_practice(support: Browser, name: str, email: str, phone: str | None, *,
                        two_step: bool = True) -> tuple[str, str]:
    status, body, _ = await support.call("POST", "/admin/practices", json={
        "name": name, "address": "1 Main St", "phone": "+12025550100", "identifiers": {"npi": "1234567890"},
        "first_user": {"email": email, "first_name": "First", "last_name": "Manager", "phone": phone,
                       "two_step_required": two_step}})
    assert status == 201, body
    assert "user_manager" in body["user"]["roles"], body
    assert body["user"]["status"] == "invited"
    return body["practice"]["id"], body["user"]["id"]


async def invite_staff(support: Browser, practice_id: str, email: str, phone: str | None, *, two_step: bool = True) -> str:
    status, body, _ = await support.call("POST", f"/admin/practices/{practice_id}/users", json={
        "email": email, "first_name": "Staff", "last_name": email.split("@")[0], "phone": phone,
        "two_step_required": two_step})
    assert status == 201, body
    assert "user_manager" not in body["user"]["roles"]
    return body["user"]["id"]


async def invitation_token(stack: Stack, email: str, *, after: int = 0) -> str:
    mail = await stack.mail_to(email, after=after, subject="invites you to SecurePractice")
    return token_link(mail, "register")


async def send_and_check(stack: Stack, browser: Browser, ticket: str, phone: str,
                         channel: str = "sms") -> tuple[str, str, str]:
    """Ask for a code by `channel`, read it from the dev outbox, check it: (proof, verification id, code)."""
    sent_before = len(stack.sms())
    status, sent, _ = await browser.call("POST", "/verifications", json={"ticket": ticket, "channel": channel})
    assert status == 201, sent
    assert sent["channel"] == channel
    code = await stack.code_for(phone, after=sent_before, channel=channel)
    status, checked, _ = await browser.call("POST", f"/verifications/{sent['id']}/check", json={"code": code})
    assert status == 200, checked
    return checked["proof"], sent["id"], code


async def prove_phone(stack: Stack, browser: Browser, ticket: str, phone: str, channel: str = "sms") -> str:
    return (await send_and_check(stack, browser, ticket, phone, channel))[0]


async def register(stack: Stack, email: str, phone: str | None, *, password: str = PASSWORD,
                   channel: str | None = "sms", token: str | None = None) -> Member:
    """Follow the emailed invitation and register; with a channel, prove the phone too."""
    token = token or await invitation_token(stack, email)
    browser = stack.browser()
    status, invite, _ = await browser.call("GET", f"/invitations/{token}")
    assert status == 200, invite
    assert invite["email"] == email and invite["two_step_required"] is (channel is not None)
    status, reg, _ = await browser.call("POST", "/registrations", json={
        "token": token, "first_name": "Reg", "last_name": "Istered", "password": password, "phone": phone,
        "terms_version": invite["terms_version"], "accept_terms": True})
    assert status == 201, reg
    if channel is not None:
        assert invite["two_step_required"] is True
        assert reg["restriction"] == "verification_required" and reg["user"]["status"] == "registered_unverified"
        proof = await prove_phone(stack, browser, reg["verification"]["ticket"], phone, channel)
        status, done, _ = await browser.call("POST", "/registrations/verify", json={"proof": proof})
        assert status == 200, done
        reg = done
    assert reg["restriction"] is None
    assert reg["user"]["status"] == "verified"
    return Member(browser, reg["user"]["id"], email, phone, password)


async def new_browser_login(stack: Stack, email: str, password: str) -> Browser:
    browser = stack.browser()
    status, body, _ = await browser.login(email, password)
    assert status == 200, body
    return browser


async def signed_out(browser: Browser) -> bool:
    status, body, _ = await browser.call("GET", "/me")
    return status == 401 and body["error"] in ("session_expired", "not_signed_in")


async def reset_by_email(stack: Stack, email: str, phone: str | None, new_password: str, *,
                         browser: Browser | None = None) -> tuple[int, Any]:
    """Forgot password → emailed link → (phone code where 2-step applies) → new password."""
    browser = browser or stack.browser()
    before = stack.mail_count()
    status, body, _ = await browser.call("POST", "/password/forgot", json={"email": email})
    assert status == 202, body
    token = token_link(await stack.mail_to(email, after=before, subject="Reset your"), "reset")
    status, form, _ = await browser.call("POST", "/password/reset/verification", json={"token": token})
    assert status == 200, form
    payload: dict[str, Any] = {"token": token, "password": new_password}
    if phone is not None:
        assert form["two_step"] is True
        payload["proof"] = await prove_phone(stack, browser, form["verification"]["ticket"], phone)
    else:
        assert form["two_step"] is False and "verification" not in form
    status, body, _ = await browser.call("POST", "/password/reset", json=payload)
    return status, body


def codes_of(body: dict) -> list[str]:
    return [v["code"] for v in body["details"]["violations"]]


# ---- invitation and registration ------------------------------------------------------------------

async def test_invite_register_with_sms_with_call_and_without_2_step(stack: Stack) -> None:
    support = await support_browser(stack)
    practice_id, manager_id = await open_practice(support, "Bright Smiles Dental", "manager@bright.example", "+12025550111")

    # The first user registers by the emailed link and a text-message code: fully registered,
    # signed in, and User Manager of the practice.
    sms_before = len(stack.sms())
    manager = await register(stack, "manager@bright.example", "+12025550111", channel="sms")
    sms = stack.sms()[sms_before:]
    assert [(r["to"], r["channel"]) for r in sms] == [("+12025550111", "sms")]
    assert "@127.0.0.1 #" in sms[0]["body"]  # origin-bound SMS format
    status, session, _ = await manager.browser.call("GET", "/session")
    assert status == 200 and session["restriction"] is None and "user_manager" in session["user"]["roles"]
    status, me, _ = await manager.browser.call("GET", "/me")
    assert status == 200 and me["user"]["status"] == "verified" and me["user"]["practice"]["id"] == practice_id
    assert me["user"]["terms_version"] is not None

    # Staff invited by Support: the same with a voice call.
    await invite_staff(support, practice_id, "caller@bright.example", "+12025550112")
    caller = await register(stack, "caller@bright.example", "+12025550112", channel="call")
    call = [r for r in stack.sms() if r["to"] == "+12025550112"]
    assert [r["channel"] for r in call] == ["call"]
    status, me, _ = await caller.browser.call("GET", "/me")
    assert status == 200 and me["user"]["status"] == "verified" and "user_manager" not in me["user"]["roles"]

    # The invitation itself says no 2-step: registration asks no code and sends nothing.
    await invite_staff(support, practice_id, "nocode@bright.example", "+12025550113", two_step=False)
    sms_before = len(stack.sms())
    await register(stack, "nocode@bright.example", None, channel=None)

    # The User Manager turns 2-step off for an invited user: no code is asked either.
    toggled_id = await invite_staff(support, practice_id, "toggled@bright.example", "+12025550114")
    status, body, _ = await manager.browser.call("PATCH", f"/practice/users/{toggled_id}",
                                                 json={"two_step_required": False})
    assert status == 200 and body["user"]["two_step_required"] is False, body
    toggled = await register(stack, "toggled@bright.example", "+12025550114", channel=None)
    assert len(stack.sms()) == sms_before  # no code went out for either
    status, me, _ = await toggled.browser.call("GET", "/me")
    assert status == 200 and me["restriction"] is None

    # Manage Users shows everyone fully registered, with their 2-step setting.
    status, listing, _ = await manager.browser.call("GET", "/practice/users")
    assert status == 200
    seen = {u["email"]: (u["status"], u["two_step_required"]) for u in listing["users"]}
    assert seen == {
        "manager@bright.example": ("verified", True), "caller@bright.example": ("verified", True),
        "nocode@bright.example": ("verified", False), "toggled@bright.example": ("verified", False),
    }
    assert manager_id in {u["id"] for u in listing["users"]}

    # An unverified registration can do nothing but finish the verification, and only with
    # its own proof. Registration applies the password rules too.
    halfway, other_half = stack.browser(), stack.browser()
    regs = []
    for browser, address, phone in ((halfway, "halfway@bright.example", "+12025550115"),
                                    (other_half, "otherhalf@bright.example", "+12025550116")):
        await invite_staff(support, practice_id, address, phone)
        token = await invitation_token(stack, address)
        form = {"token": token, "first_name": "Half", "last_name": "Way", "terms_version": "2026-01", "accept_terms": True}
        status, refused, _ = await browser.call("POST", "/registrations", json={**form, "password": "weak"})
        assert status == 422 and codes_of(refused) == ["too_short", "needs_uppercase", "needs_digit", "needs_special"]
        status, refused, _ = await browser.call("POST", "/registrations", json={**form, "password": PASSWORD,
                                                                                "accept_terms": False})
        assert status == 422 and refused["error"] == "terms_not_accepted"
        status, reg, _ = await browser.call("POST", "/registrations", json={**form, "password": PASSWORD})
        assert status == 201 and reg["restriction"] == "verification_required"
        regs.append(reg)
    status, refused, _ = await halfway.call("PATCH", "/me", json={"first_name": "Other"})
    assert status == 403 and refused["error"] == "verification_required"
    halfway_proof = await prove_phone(stack, halfway, regs[0]["verification"]["ticket"], "+12025550115")
    status, refused, _ = await other_half.call("POST", "/registrations/verify", json={"proof": halfway_proof})
    assert status == 400 and refused["error"] == "invalid_proof"
    status, done, _ = await halfway.call("POST", "/registrations/verify", json={"proof": halfway_proof})
    assert status == 200 and done["restriction"] is None and done["user"]["status"] == "verified"
    status, refused, _ = await halfway.call("POST", "/me/verification", json={"proof": halfway_proof})
    assert status == 409  # done once; the proof is not accepted again

    for b in (support, manager.browser, caller.browser, toggled.browser, halfway, other_half):
        await b.close()


# ---- lockout, reset, sessions -----------------------------------------------------------------------

async def test_fifth_wrong_password_locks_and_reset_by_link_and_code_unlocks(stack: Stack) -> None:
    support = await support_browser(stack)
    await open_practice(support, "Lock Dental", "locked.user@lock.example", "+12025550121")
    user = await register(stack, "locked.user@lock.example", "+12025550121")
    other_client = await new_browser_login(stack, user.email, PASSWORD)  # a second cookie jar
    assert (await other_client.call("GET", "/me"))[0] == 200

    guesser = stack.browser()
    mails_before = stack.mail_count()
    locked_at = "SELECT locked_at FROM users WHERE id = $1"
    answers = []
    for n in range(5):
        assert await stack.auth_app[POOL].fetchval(locked_at, uuid.UUID(user.id)) is None  # not before the 5th
        status, body, _ = await guesser.login(user.email, f"Wrong-Guess-{n}!")
        answers.append((status, body))
    assert await stack.auth_app[POOL].fetchval(locked_at, uuid.UUID(user.id)) is not None
    status, unknown, _ = await guesser.login("nobody@lock.example", "Wrong-Guess-0!")
    # Every wrong password, the locking 5th included, answers like an unknown address.
    assert answers == [(401, unknown)] * 5 and status == 401
    assert unknown["error"] == "invalid_credentials"

    locked_mail = await stack.mail_to(user.email, after=mails_before, subject="account is locked")
    assert "reset your password" in text_of(locked_mail)
    # Locking ends every session of the user (auth.sessions.revoked through RabbitMQ).
    await eventually(lambda: signed_out(user.browser), what="first client signed out")
    await eventually(lambda: signed_out(other_client), what="second client signed out")

    # The right password now gets 423; a wrong one still looks like an unknown address.
    status, body, _ = await guesser.login(user.email, PASSWORD)
    assert status == 423 and body["error"] == "account_locked"
    status, body, _ = await guesser.login(user.email, "Wrong-Guess-9!")
    assert (status, body) == (401, unknown)

    # A session opened before the reset, to see the reset end it: none can be opened while
    # locked, so the user's own browser is already signed out; the reset signs it in anew.
    status, body = await reset_by_email(stack, user.email, user.phone, NEW_PASSWORD, browser=user.browser)
    assert status == 200, body
    assert body["restriction"] is None and body["user"]["status"] == "verified"
    assert (await user.browser.call("GET", "/me"))[0] == 200
    status, body, _ = await guesser.login(user.email, PASSWORD)
    assert (status, body) == (401, unknown)  # the old password is gone
    fresh = await new_browser_login(stack, user.email, NEW_PASSWORD)

    # A reset with sessions open elsewhere ends them all, except the one it signs in.
    stack.clock.advance(seconds=31)  # past the resend cooldown of verify-service
    status, body = await reset_by_email(stack, user.email, user.phone, OTHER_PASSWORD)
    assert status == 200, body
    await eventually(lambda: signed_out(fresh), what="open session ended by the reset")
    await eventually(lambda: signed_out(user.browser), what="user's browser ended by the reset")

    for b in (support, user.browser, other_client, guesser, fresh):
        await b.close()


# ---- password rules, history, expiry -------------------------------------------------------------------

async def test_password_rules_history_of_six_and_expiry_after_90_days(stack: Stack) -> None:
    support = await support_browser(stack)
    await open_practice(support, "Rules Dental", "rules.keeper@rules.example", None, two_step=False)
    user = await register(stack, "rules.keeper@rules.example", None, channel=None)
    b = user.browser

    async def change(current: str, new: str) -> tuple[int, Any]:
        status, body, _ = await b.call("POST", "/me/password", json={"current_password": current, "new_password": new})
        return status, body

    # Each broken rule is reported on its own, in one answer.
    status, body = await change(PASSWORD, "weak")
    assert status == 422 and body["error"] == "password_rules"
    assert codes_of(body) == ["too_short", "needs_uppercase", "needs_digit", "needs_special"]
    assert all(v["message"] for v in body["details"]["violations"])
    status, body = await change(PASSWORD, "ALLCAPS-123")
    assert status == 422 and codes_of(body) == ["needs_lowercase"]
    status, body = await change(PASSWORD, "Rules.Keeper-2026")
    assert status == 422 and codes_of(body) == ["contains_email_name"]
    status, body = await change(PASSWORD, "P@ssw0rd")  # meets composition, but common
    assert status == 422 and codes_of(body) == ["common_password"]

    # History of 6: the registration password and five more are remembered.
    history = [PASSWORD] + [f"Harbor-Lantern-{n}!x" for n in range(1, 7)]
    current = PASSWORD
    for n, new in enumerate(history[1:6], start=1):
        status, body = await change(current, new)
        assert status == 200, (n, body)
        current = new
        status, body = await change(current, PASSWORD)
        assert status == 422 and codes_of(body) == ["recently_used"], (n, body)
    status, body = await change(current, history[6])  # the 7th password pushes the 1st out
    assert status == 200, body
    current = history[6]
    status, body = await change(current, history[2])  # still among the last 6
    assert status == 422 and codes_of(body) == ["recently_used"]

    # A wrong current password is refused (and counts towards the lockout).
    status, body = await change("Not-The-Current-1!", NEW_PASSWORD)
    assert status == 403 and body["error"] == "wrong_current_password"

    # Expiry: 89 days on, sign-in is unrestricted; at 90 days only the password may be changed.
    stack.clock.advance(days=89)
    status, body, _ = await b.login(user.email, current)
    assert status == 200 and body["restriction"] is None
    # Signed in a minute before the password expires: two minutes on, the session is
    # restricted too, not free until it ends.
    expires = datetime.fromisoformat(body["user"]["password_expires_at"])
    stack.clock.advance(seconds=(expires - stack.clock.now()).total_seconds() - 60)
    status, body, _ = await b.login(user.email, current)
    assert status == 200 and body["restriction"] is None
    stack.clock.advance(minutes=2)
    status, refused, _ = await b.call("GET", "/messages?folder=inbox")
    assert status == 403 and refused["error"] == "password_expired", refused
    stack.clock.advance(days=1)
    status, body, _ = await b.login(user.email, current)
    assert status == 200 and body["restriction"] == "password_expired"
    status, me, _ = await b.call("GET", "/me")
    assert status == 200 and me["restriction"] == "password_expired"
    for method, path, payload in (("PATCH", "/me", {"first_name": "X"}), ("GET", "/practice/users", None),
                                  ("GET", "/messages?folder=inbox", None)):
        status, refused, _ = await b.call(method, path, json=payload) if payload else await b.call(method, path)
        assert status == 403 and refused["error"] == "password_expired", (path, status, refused)
    # The expired password is part of the history too.
    status, body = await change(current, current)
    assert status == 422 and "recently_used" in codes_of(body)
    status, body = await change(current, NEW_PASSWORD)
    assert status == 200 and body["restriction"] is None, body
    status, listing, _ = await b.call("GET", "/practice/users")
    assert status == 200 and [u["email"] for u in listing["users"]] == [user.email]

    await support.close()
    await b.close()


async def test_an_expired_password_still_lets_the_same_browser_reset_it_or_sign_in_as_someone_else(stack: Stack) -> None:
    """A restricted session only narrows what its own user may do: the signed-out flows (forgot
    password, the emailed reset link, signing in) work in the same browser, as the help page's
    way out of an expired password needs."""
    support = await support_browser(stack)
    await open_practice(support, "Expiry Dental", "ezra@expiry.example", None, two_step=False)
    user = await register(stack, "ezra@expiry.example", None, channel=None)
    b = user.browser
    stack.clock.advance(days=90)
    status, body, _ = await b.login(user.email, PASSWORD)
    assert status == 200 and body["restriction"] == "password_expired"
    assert (await b.call("GET", "/practice/users"))[0] == 403  # the session's own user is restricted
    status, body, _ = await b.call("GET", f"/invitations/{'x' * 43}")
    assert status == 404 and body["error"] == "invitation_invalid"  # read like a signed-out visitor

    status, body = await reset_by_email(stack, user.email, None, NEW_PASSWORD, browser=b)
    assert status == 200 and body["restriction"] is None, body
    assert (await b.call("GET", "/practice/users"))[0] == 200

    stack.clock.advance(days=91)  # expired again; signing in as another account in this browser
    assert (await b.login(user.email, NEW_PASSWORD))[1]["restriction"] == "password_expired"
    status, body, _ = await b.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
    assert status == 200 and body["user"]["email"] == SUPPORT_EMAIL  # (its own password has expired too by now)
    await support.close()
    await b.close()


# ---- tokens and codes -----------------------------------------------------------------------------------

async def test_replayed_expired_and_foreign_links_and_codes_are_refused(stack: Stack) -> None:
    support = await support_browser(stack)
    practice_id, _ = await open_practice(support, "Token Dental", "tina@token.example", "+12025550131")
    first_link = await invitation_token(stack, "tina@token.example")
    # Re-inviting kills the old link.
    mails_before = stack.mail_count()
    tina_id = (await support.call("GET", f"/admin/users?email=tina@token.example"))[1]["users"][0]["id"]
    status, body, _ = await support.call("POST", f"/practice/users/{tina_id}/reinvite")
    assert status == 202, body
    second_link = await invitation_token(stack, "tina@token.example", after=mails_before)
    assert second_link != first_link
    anon = stack.browser()
    status, body, _ = await anon.call("GET", f"/invitations/{first_link}")
    assert status == 404 and body["error"] == "invitation_invalid"
    tina = await register(stack, "tina@token.example", "+12025550131", token=second_link)
    # A used invitation cannot be replayed.
    status, body, _ = await anon.call("POST", "/registrations", json={
        "token": second_link, "first_name": "Eve", "last_name": "Il", "password": PASSWORD,
        "terms_version": "2026-01", "accept_terms": True})
    assert status == 404 and body["error"] == "invitation_invalid"

    await invite_staff(support, practice_id, "omar@token.example", "+12025550132")
    omar = await register(stack, "omar@token.example", "+12025550132")

    # Reset links: single use; a proof is single use and bound to its user.
    mails_before = stack.mail_count()
    assert (await anon.call("POST", "/password/forgot", json={"email": tina.email}))[0] == 202
    link = token_link(await stack.mail_to(tina.email, after=mails_before, subject="Reset your"), "reset")
    status, form, _ = await anon.call("POST", "/password/reset/verification", json={"token": link})
    assert status == 200
    tina_ticket = form["verification"]["ticket"]
    proof, verification_id, code = await send_and_check(stack, anon, tina_ticket, tina.phone)
    status, body, _ = await anon.call("POST", f"/verifications/{verification_id}/check", json={"code": code})
    assert status == 422 and body["error"] == "code_already_used"  # a code works once
    status, body, _ = await anon.call("POST", "/password/reset", json={"token": link, "password": NEW_PASSWORD})
    assert status == 422 and body["error"] == "verification_required"  # the link alone is not enough
    status, body, _ = await anon.call("POST", "/password/reset",
                                      json={"token": link, "password": NEW_PASSWORD, "proof": proof})
    assert status == 200, body
    await eventually(lambda: signed_out(tina.browser), what="tina's old session ended by the reset")
    replay = stack.browser()
    status, body, _ = await replay.call("POST", "/password/reset",
                                        json={"token": link, "password": OTHER_PASSWORD, "proof": proof})
    assert status == 404 and body["error"] == "reset_link_invalid"

    # Omar's reset link with Tina's (used) proof, or a proof for Tina's phone: refused.
    mails_before = stack.mail_count()
    assert (await replay.call("POST", "/password/forgot", json={"email": omar.email}))[0] == 202
    omar_link = token_link(await stack.mail_to(omar.email, after=mails_before, subject="Reset your"), "reset")
    status, body, _ = await replay.call("POST", "/password/reset",
                                        json={"token": omar_link, "password": OTHER_PASSWORD, "proof": proof})
    assert status == 400 and body["error"] == "invalid_proof"

    # Omar asks for a code; Tina (signed in, or holding her own ticket) cannot check it.
    status, form, _ = await replay.call("POST", "/password/reset/verification", json={"token": omar_link})
    omar_ticket = form["verification"]["ticket"]
    sms_before = len(stack.sms())
    status, sent, _ = await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "sms"})
    assert status == 201
    omar_code = await stack.code_for(omar.phone, after=sms_before)
    tina_now = await new_browser_login(stack, tina.email, NEW_PASSWORD)
    status, body, _ = await tina_now.call("POST", f"/verifications/{sent['id']}/check", json={"code": omar_code})
    assert status == 404
    status, body, _ = await anon.call("POST", f"/verifications/{sent['id']}/check",
                                      json={"code": omar_code, "ticket": tina_ticket})
    assert status == 404  # holding another user's ticket
    forged = signed.sign_claims({"user_id": omar.id, "phone": omar.phone, "purpose": "password_reset"},
                                purpose="verify-ticket", secret=b"not-the-verify-secret",
                                now=stack.clock.now().timestamp(), ttl=900)
    status, body, _ = await anon.call("POST", f"/verifications/{sent['id']}/check",
                                      json={"code": omar_code, "ticket": forged})
    assert status == 403 and body["error"] == "invalid_ticket"
    status, body, _ = await anon.call("POST", "/verifications", json={"ticket": forged, "channel": "sms"})
    assert status == 403 and body["error"] == "invalid_ticket"
    # Code guessing is bounded: the 5th wrong guess kills the code, the right one then fails too.
    wrong = "000000" if omar_code != "000000" else "111111"
    for left in (4, 3, 2, 1):
        status, body, _ = await replay.call("POST", f"/verifications/{sent['id']}/check", json={"code": wrong})
        assert status == 422 and body["error"] == "wrong_code" and body["details"]["attempts_left"] == left, body
    status, body, _ = await replay.call("POST", f"/verifications/{sent['id']}/check", json={"code": wrong})
    assert status == 429 and body["error"] == "too_many_attempts"
    status, body, _ = await replay.call("POST", f"/verifications/{sent['id']}/check", json={"code": omar_code})
    assert status == 429 and body["error"] == "too_many_attempts"

    # Resend: too soon is refused; after the cooldown a call replaces the text's code.
    status, body, _ = await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "sms"})
    assert status == 429 and body["error"] == "resend_too_soon"
    stack.clock.advance(seconds=31)
    status, first, _ = await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "sms"})
    assert status == 201
    first_code = await stack.code_for(omar.phone, after=sms_before + 1)
    stack.clock.advance(seconds=31)
    sms_before = len(stack.sms())
    status, second, _ = await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "call"})
    assert status == 201 and second["channel"] == "call"
    second_code = await stack.code_for(omar.phone, after=sms_before, channel="call")
    status, body, _ = await replay.call("POST", f"/verifications/{first['id']}/check", json={"code": first_code})
    assert status == 422 and body["error"] == "code_replaced"
    # An expired code is refused.
    stack.clock.advance(minutes=11)
    status, body, _ = await replay.call("POST", f"/verifications/{second['id']}/check", json={"code": second_code})
    assert status == 422 and body["error"] == "code_expired"

    # Send limits: 5 codes per phone and per user an hour, then 429 (SMS pumping defence).
    # Four went to Omar's phone so far (registration, reset text, text, call); one more may go.
    assert len([r for r in stack.sms() if r["to"] == omar.phone]) == 4
    stack.clock.advance(seconds=31)
    assert (await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "sms"}))[0] == 201
    stack.clock.advance(seconds=31)
    status, body, _ = await replay.call("POST", "/verifications", json={"ticket": omar_ticket, "channel": "call"})
    assert status == 429 and body["error"] in ("too_many_codes_for_phone", "too_many_codes_for_user"), body
    assert body["details"]["retry_after"] > 0
    assert len([r for r in stack.sms() if r["to"] == omar.phone]) == 5

    # An expired reset link (30 minutes) is refused.
    mails_before = stack.mail_count()
    assert (await replay.call("POST", "/password/forgot", json={"email": tina.email}))[0] == 202
    late = token_link(await stack.mail_to(tina.email, after=mails_before, subject="Reset your"), "reset")
    stack.clock.advance(minutes=31)
    status, body, _ = await replay.call("POST", "/password/reset/verification", json={"token": late})
    assert status == 404 and body["error"] == "reset_link_invalid"
    # So is an expired invitation (72 hours).
    mails_before = stack.mail_count()
    await support.close()
    support = await support_browser(stack)  # the moved clock ended the earlier session
    await invite_staff(support, practice_id, "late@token.example", "+12025550133")
    late_invite = await invitation_token(stack, "late@token.example", after=mails_before)
    assert (await anon.call("GET", f"/invitations/{late_invite}"))[0] == 200
    stack.clock.advance(hours=73)
    status, body, _ = await anon.call("GET", f"/invitations/{late_invite}")
    assert status == 404 and body["error"] == "invitation_invalid"

    for b in (support, anon, replay, tina.browser, omar.browser, tina_now):
        await b.close()


# ---- what a guesser learns --------------------------------------------------------------------------------

async def test_unknown_email_and_wrong_password_answer_alike(stack: Stack) -> None:
    support = await support_browser(stack)
    await open_practice(support, "Same Dental", "known@same.example", None, two_step=False)
    user = await register(stack, "known@same.example", None, channel=None)
    guesser = stack.browser()

    def shape(answer: tuple[int, Any, dict]) -> tuple[int, Any, list[str]]:
        status, body, headers = answer
        return status, body, sorted(h for h in headers if h.lower() not in ("date", "content-length"))

    wrong = shape(await guesser.login(user.email, "Wrong-Password-1!"))
    unknown = shape(await guesser.login("unknown@same.example", "Wrong-Password-1!"))
    assert wrong == unknown and wrong[0] == 401 and wrong[1]["error"] == "invalid_credentials"
    assert "Set-Cookie" not in wrong[2]

    # Forgot password: the same answer; a mail only for the known address.
    outbox_rows = "SELECT count(*) FROM outbox"
    rows_before = await stack.auth_app[POOL].fetchval(outbox_rows)
    mails_before = stack.mail_count()
    for_unknown = shape(await guesser.call("POST", "/password/forgot", json={"email": "unknown@same.example"}))
    assert await stack.auth_app[POOL].fetchval(outbox_rows) == rows_before  # nothing to send was even queued
    for_known = shape(await guesser.call("POST", "/password/forgot", json={"email": user.email}))
    assert for_unknown == for_known and for_known[0] == 202
    await stack.mail_to(user.email, after=mails_before, subject="Reset your")
    assert [str(m["To"]) for m in stack.mails()[mails_before:]] == [user.email]

    await support.close()
    await guesser.close()
    await user.browser.close()


# ---- who may manage whom ----------------------------------------------------------------------------------

async def test_roles_member_manager_support_and_no_password_route(stack: Stack) -> None:
    support = await support_browser(stack)
    practice_a, _ = await open_practice(support, "Alpha Dental", "uma@alpha.example", None, two_step=False)
    manager_a = await register(stack, "uma@alpha.example", None, channel=None)
    member_id = await invite_staff(support, practice_a, "mel@alpha.example", None, two_step=False)
    member = await register(stack, "mel@alpha.example", None, channel=None)
    practice_b, _ = await open_practice(support, "Beta Dental", "umb@beta.example", None, two_step=False)
    manager_b = await register(stack, "umb@beta.example", None, channel=None)

    # A member cannot act as User Manager, nor as Support.
    for method, path, payload in (
        ("GET", "/practice/users", None),
        ("PATCH", f"/practice/users/{manager_a.id}", {"two_step_required": False}),
        ("POST", f"/practice/users/{manager_a.id}/unlock", None),
        ("POST", f"/practice/users/{manager_a.id}/reinvite", None),
        ("GET", "/admin/practices", None),
        ("POST", f"/admin/users/{manager_a.id}/unlock", None),
    ):
        status, body, _ = await member.browser.call(method, path, **({"json": payload} if payload else {}))
        assert status == 403 and body["error"] == "forbidden", (method, path, status, body)

    # A User Manager cannot touch another practice's users (404, as if absent), nor use /admin.
    for method, path, payload in (
        ("PATCH", f"/practice/users/{manager_b.id}", {"two_step_required": True}),
        ("POST", f"/practice/users/{manager_b.id}/unlock", None),
        ("PATCH", f"/practice/users/{uuid.uuid4()}", {"two_step_required": True}),
    ):
        status, body, _ = await manager_a.browser.call(method, path, **({"json": payload} if payload else {}))
        assert status == 404, (method, path, status, body)
    status, body, _ = await manager_a.browser.call("POST", f"/admin/users/{manager_b.id}/unlock")
    assert status == 403
    status, listing, _ = await manager_a.browser.call("GET", "/practice/users")
    assert status == 200
    assert sorted(u["email"] for u in listing["users"]) == ["mel@alpha.example", "uma@alpha.example"]
    status, listing_b, _ = await manager_b.browser.call("GET", "/practice/users")
    assert [u["email"] for u in listing_b["users"]] == ["umb@beta.example"]

    # Lock the member; their User Manager unlocks, yet the old password stays unusable.
    guesser = stack.browser()
    for n in range(5):
        assert (await guesser.login(member.email, f"Nope-{n}-Nope!"))[0] == 401
    status, body, _ = await member.browser.login(member.email, PASSWORD)
    assert status == 423 and body["error"] == "account_locked"
    status, listing, _ = await manager_a.browser.call("GET", "/practice/users")
    assert {u["email"]: u["locked"] for u in listing["users"]}["mel@alpha.example"] is True
    status, body, _ = await manager_b.browser.call("POST", f"/practice/users/{member_id}/unlock")
    assert status == 404  # not manager B's user
    status, body, _ = await manager_a.browser.call("POST", f"/practice/users/{member_id}/unlock")
    assert status == 200 and body["unlocked"] is True, body
    status, body, _ = await member.browser.login(member.email, PASSWORD)
    assert status == 423 and body["error"] == "password_reset_required"

    # Support unlocks too (manager B, locked), but never sets or reads a password: the admin
    # API has no such route or field, so the user still resets it themselves.
    for n in range(5):
        assert (await guesser.login(manager_b.email, f"Nope-{n}-Nope!"))[0] == 401
    status, body, _ = await support.call("POST", f"/admin/users/{manager_b.id}/unlock")
    assert status == 200 and body["unlocked"] is True, body
    assert not [key for key in body["user"] if "password" in key]
    for method, path, payload in (
        ("PUT", f"/admin/users/{manager_b.id}/password", {"password": NEW_PASSWORD}),
        ("POST", f"/admin/users/{manager_b.id}/password", {"password": NEW_PASSWORD}),
        ("GET", f"/admin/users/{manager_b.id}/password", None),
        ("PATCH", f"/admin/users/{manager_b.id}", {"password": NEW_PASSWORD}),
    ):
        status, body, _ = await support.call(method, path, **({"json": payload} if payload else {}))
        assert status in (404, 405), (method, path, status, body)
    status, body, _ = await support.call("PATCH", f"/practice/users/{manager_b.id}", json={"password": NEW_PASSWORD})
    assert status in (400, 403), body
    status, found, _ = await support.call("GET", f"/admin/users?email={manager_b.email}")
    assert status == 200 and found["users"] and all("password" not in key for key in found["users"][0])
    status, doc, _ = await support.call("GET", "/openapi.json")
    assert status == 200
    admin_paths = {p: ops for p, ops in doc["paths"].items() if "/admin/" in p}
    assert any(p.endswith("/unlock") for p in admin_paths)
    assert not [p for p in admin_paths if "password" in p.lower()]
    admin_fields: dict[str, list[str]] = {}
    for path, ops in admin_paths.items():
        for method, op in ops.items():
            if not isinstance(op, dict):
                continue
            bodies = [op.get("requestBody") or {}] + list((op.get("responses") or {}).values())
            admin_fields[f"{method} {path}"] = [
                name for body in bodies
                for media in (body.get("content") or {}).values()
                for name in _property_names(media.get("schema", {}), doc)]
    assert {"first_user", "email", "name"} <= set(admin_fields["post /api/v1/admin/practices"])  # the walk sees fields
    assert not {op: names for op, names in admin_fields.items() if any("password" in n.lower() for n in names)}
    status, body, _ = await manager_b.browser.login(manager_b.email, PASSWORD)
    assert status == 423 and body["error"] == "password_reset_required"
    status, body = await reset_by_email(stack, manager_b.email, None, NEW_PASSWORD)
    assert status == 200 and body["restriction"] is None
    assert (await manager_b.browser.login(manager_b.email, NEW_PASSWORD))[0] == 200

    for b in (support, guesser, manager_a.browser, member.browser, manager_b.browser):
        await b.close()


def _property_names(schema: dict, doc: dict, depth: int = 0) -> list[str]:
    """Every property name in a (possibly $ref'd, nested) JSON schema."""
    if depth > 8 or not isinstance(schema, dict):
        return []
    if "$ref" in schema:
        node: Any = doc
        for part in schema["$ref"].lstrip("#/").split("/"):
            node = node.get(part, {})
        return _property_names(node, doc, depth + 1)
    names = list(schema.get("properties", {}))
    subs = list(schema.get("properties", {}).values())
    subs += schema.get("allOf", []) + schema.get("oneOf", []) + schema.get("anyOf", [])
    if isinstance(schema.get("items"), dict):
        subs.append(schema["items"])
    for sub in subs:
        names += _property_names(sub, doc, depth + 1)
    return names


# ---- idle logout --------------------------------------------------------------------------------------------

async def test_thirty_minutes_idle_signs_out_activity_keeps_the_session(stack: Stack) -> None:
    support = await support_browser(stack)
    await open_practice(support, "Idle Dental", "idle@idle.example", None, two_step=False)
    user = await register(stack, "idle@idle.example", None, channel=None)
    b = user.browser
    for _ in range(3):  # 87 minutes in all, never 30 without a request
        stack.clock.advance(minutes=29)
        status, _, _ = await b.call("GET", "/me")
        assert status == 200
    stack.clock.advance(minutes=31)
    status, body, _ = await b.call("GET", "/me")
    assert status == 401 and body["error"] == "session_expired"
    status, body, _ = await b.call("GET", "/session")
    assert status == 401
    status, body, _ = await b.call("PATCH", "/me", json={"first_name": "Idle"})
    assert status in (401, 403), body  # nothing changes without a live session
    # Signing in again works; a client that lost its token gets it back from GET /session.
    status, body, _ = await b.login(user.email, PASSWORD)
    assert status == 200 and (await b.call("GET", "/me"))[0] == 200
    b.csrf = None
    status, body, _ = await b.call("PATCH", "/me", json={"first_name": "Active"})
    assert status == 200 and b.csrf is not None, body
    status, body, _ = await b.call("PATCH", "/me", json={"first_name": "Forged"}, headers={"X-CSRF-Token": "0" * 64})
    assert status == 403 and body["error"] == "csrf_failed"
    assert (await b.call("DELETE", "/session"))[0] == 204
    # Both ends reach the audit trail Support reads (gateway outbox -> broker -> auth-service):
    # the clock's, with no actor, and the user's own sign-out.
    await support.close()
    support = await support_browser(stack)  # the first one's session has long gone idle too

    async def session_ends() -> list[tuple[str, Any, str]] | None:
        status, body, _ = await support.call("GET", f"/admin/audit?subject_id={user.id}")
        assert status == 200
        ends = [(e["action"], e["actor_id"], e["details"]["reason"]) for e in body["entries"]
                if e["action"] in ("session_expired", "logout")]
        return ends if len(ends) == 2 else None

    ends = await eventually(session_ends, what="both session ends audited")
    assert sorted(ends) == [("logout", user.id, "logout"), ("session_expired", None, "idle")]
    await support.close()
    await b.close()
