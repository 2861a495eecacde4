"""2-Step Verification for setting or resetting a password, in a real browser against the whole
stack (the help page: "When setting or resetting a password, the two-step verification process
will automatically be in place however you may turn off this feature within your user profile
settings"): the profile's checkbox turned on (once a proven phone is on file, else the server
says why) and off, kept by the server; and "Forgot password" with 2-step on: the emailed link,
a text-message code first (read from the dev outbox), then the new password, signed in."""
from __future__ import annotations

from e2e_kit import MakeMember, log_in_as, needs_chromium, open_profile, set_phone_on_file
from playwright.async_api import Page, expect
from stack import Stack, links

pytestmark = needs_chromium

TWO_STEP = "Use 2-Step Verification when I set or reset my password"
NEW_PASSWORD = "Harbor-Lights-77!"


async def save_profile(page: Page) -> None:
    await page.get_by_role("button", name="Save", exact=True).click()


async def test_profile_two_step_needs_a_proven_phone_and_is_saved(page: Page, stack: Stack, member: MakeMember) -> None:
    ana = await member("ana@bright.example")  # registered without a phone, 2-step off
    await log_in_as(page, ana)
    await open_profile(page)
    two_step = page.get_by_label(TWO_STEP)
    await expect(two_step).not_to_be_checked()

    # No phone on file: the server says what to do first, and keeps 2-step off.
    await two_step.check()
    await save_profile(page)
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text("Add and confirm your phone number first: the codes are sent to it.")
    await expect(alert).to_be_focused()
    await page.reload()
    await expect(page.get_by_label(TWO_STEP)).not_to_be_checked()

    # A phone, proven with the code sent to it by text message; a new number asks for the
    # current password first (a signed-in session alone may not change it).
    current = page.get_by_label("Current password")
    await expect(current).to_be_hidden()
    await page.get_by_label("Phone", exact=True).fill("(202) 555-0160")
    await expect(current).to_be_visible()
    await current.fill(ana.password)
    await save_profile(page)
    await expect(page.get_by_role("status")).to_contain_text("Confirm your new phone number")
    await page.get_by_role("button", name="Text me a code").click()
    await page.get_by_label("6-digit code").fill(await stack.code_for("+12025550160", channel="sms"))
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("status")).to_have_text("Your new phone number is verified and saved.")

    # Now 2-step turns on, and off again; each time the reloaded page shows what was saved.
    await two_step.check()
    await save_profile(page)
    await expect(page.get_by_role("status")).to_have_text("Your profile has been saved.")
    await page.reload()
    await expect(page.get_by_label("Phone", exact=True)).to_have_value("+12025550160")
    await expect(two_step).to_be_checked()
    await expect(current).to_be_hidden()  # turning it on needed no password
    await two_step.uncheck()
    await current.fill(ana.password)  # turning it off does
    await save_profile(page)
    await expect(page.get_by_role("status")).to_have_text("Your profile has been saved.")
    await page.reload()
    await expect(page.get_by_label("First name")).to_be_visible()
    await expect(two_step).not_to_be_checked()


async def test_forgot_password_with_two_step_asks_for_the_phone_code_first(
        page: Page, stack: Stack, member: MakeMember) -> None:
    ana = await member("ana@bright.example")
    await set_phone_on_file(stack, ana, "+12025550161", two_step_required=True)
    await page.goto("/#/login")
    await page.get_by_role("link", name="Forgot your password?").click()
    await expect(page.get_by_role("heading", name="Forgot password")).to_be_visible()
    await page.get_by_label("Email address").fill(ana.email)
    await page.get_by_role("button", name="Email me a reset link").click()
    await expect(page.get_by_text("If an account uses this address, we have sent it a link")).to_be_visible()

    mail = await stack.mail_to(ana.email, subject="Reset your SecurePractice password")
    await page.goto(next(link for link in links(mail) if "reset?token=" in link))
    await expect(page.get_by_role("heading", name="Reset your password")).to_be_visible()
    # The phone first: the password fields wait until the code is accepted.
    await expect(page.locator(".two-step")).to_contain_text("We will send a 6-digit code to \u2022\u2022\u2022\u2022 61")
    await expect(page.get_by_label("New password")).to_be_hidden()
    await page.get_by_role("button", name="Text me a code").click()
    await expect(page.get_by_text("We have sent a text message with a code to \u2022\u2022\u2022\u2022 61.")).to_be_visible()
    code = await stack.code_for("+12025550161", channel="sms")
    await page.get_by_label("6-digit code").fill(code)
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_text("Your phone is verified. Now choose a new password.")).to_be_visible()

    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    await page.get_by_role("button", name="Save new password").click()
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("Your password has been changed.")
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()

    # The new password is the one that signs in now.
    await page.get_by_role("button", name="Log out").click()
    ana.password = NEW_PASSWORD
    await log_in_as(page, ana)
