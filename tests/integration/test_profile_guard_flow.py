"""A stolen session through the gateway (review finding: account takeover): PATCH /me cannot
turn 2-step verification off, move the email or the phones without the current password; the
thief's guesses lock the account and end every session like wrong logins; the owner, with the
password, still can. Users are made the real way (Support's invitation, registration, SMS code)."""
from __future__ import annotations

import pytest
from stack import Stack, eventually

from test_accounts_flow import PASSWORD, open_practice, register, reset_by_email, signed_out, support_browser

NEW_PASSWORD = "Quartz-Meadow-77?"


@pytest.fixture
def stack_settings() -> dict[str, dict]:
    return {"gateway": {"rate_limit_login_per_ip": 1000, "rate_limit_login_per_account": 1000,
                        "rate_limit_sensitive_per_ip": 1000, "rate_limit_sensitive_per_account": 1000}}


async def test_a_stolen_session_cannot_take_the_account_over(stack: Stack) -> None:
    support = await support_browser(stack)
    await open_practice(support, "Bright Smiles Dental", "owner@bright.example", "+12025550131")
    owner = await register(stack, "owner@bright.example", "+12025550131", channel="sms")
    thief = owner.browser  # the owner's signed-in browser, left unattended

    # No password: refused, naming the field; nothing changes.
    for patch in ({"two_step_required": False}, {"email": "thief@evil.example"}, {"phone": "+12025550199"},
                  {"cell_phone": "+12025550198"}):
        status, body, _ = await thief.call("PATCH", "/me", json=patch)
        assert status == 400 and list(body["details"]["fields"]) == ["current_password"], (patch, body)
    # Guessing: 403 each time, counted with wrong logins; the 5th locks and ends the session.
    for n in range(5):
        status, body, _ = await thief.call("PATCH", "/me", json={"two_step_required": False, "email": "thief@evil.example",
                                                                 "current_password": f"Guess-{n}-Guess!"})
        assert status == 403 and body["error"] == "wrong_current_password", body
    await eventually(lambda: signed_out(thief), what="the locked account's session to end")
    status, body, _ = await stack.browser().login(owner.email, PASSWORD)
    assert status == 423 and body["error"] == "account_locked", body
    # "Forgot password" reaches the owner only, and needs the owner's phone: the owner is back.
    status, body = await reset_by_email(stack, owner.email, owner.phone, NEW_PASSWORD)
    assert status == 200 and body["user"]["two_step_required"] is True and body["user"]["email"] == owner.email, body
    assert body["user"]["pending_email"] is None

    # The owner, with the password, may turn 2-step off and ask for a new address.
    browser = stack.browser()
    status, body, _ = await browser.login(owner.email, NEW_PASSWORD)
    assert status == 200, body
    status, body, _ = await browser.call("PATCH", "/me", json={"two_step_required": False, "email": "owner@new.example",
                                                               "current_password": NEW_PASSWORD})
    assert status == 200 and body["user"]["two_step_required"] is False and body["email_confirmation_sent"], body
