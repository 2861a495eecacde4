"""Profile as the help page describes it: "Profile" from the drop-down menu in the upper right
corner of the screen, then the "Messaging" tab, which says whether the account has paid
SecureMail and, for a User Manager, leads to "View Invoices"."""
from __future__ import annotations

import uuid

from e2e_kit import MakeMember, log_in_as, needs_chromium, open_profile, set_phone_on_file
from msp_auth import store as auth_store
from msp_shared.web import POOL
from playwright.async_api import Page, expect
from stack import Stack

pytestmark = needs_chromium

TWO_STEP = "Use 2-Step Verification when I set or reset my password"


async def test_profile_is_in_the_account_menu_and_messaging_is_its_tab(page: Page, member: MakeMember) -> None:
    ana = await member("ana@bright.example")
    await log_in_as(page, ana)
    nav = page.get_by_role("navigation", name="Main")
    menu_button = nav.locator("#account-name")
    await expect(menu_button).not_to_have_text("My account")  # named after the signed-in user
    await expect(nav.get_by_role("link", name="Profile", exact=True)).to_be_hidden()  # closed until opened
    await menu_button.click()
    await expect(nav.get_by_role("link", name="Profile", exact=True)).to_be_visible()
    await page.keyboard.press("Escape")
    await expect(nav.get_by_role("link", name="Profile", exact=True)).to_be_hidden()

    await open_profile(page)
    await expect(nav.get_by_role("link", name="Profile", exact=True)).to_be_hidden()  # the menu closed behind it
    await menu_button.click()  # the page already shown, chosen again: the menu still closes
    await nav.get_by_role("link", name="Profile", exact=True).click()
    await expect(nav.get_by_role("link", name="Profile", exact=True)).to_be_hidden()
    tabs = page.get_by_role("navigation", name="Profile")
    await expect(tabs.get_by_role("link", name="Account")).to_have_attribute("aria-current", "page")
    await expect(page.get_by_label("First name")).to_be_visible()
    await tabs.get_by_role("link", name="Messaging").click()
    messaging = page.get_by_role("region", name="Messaging")
    await expect(messaging).to_contain_text("does not have paid SecureMail")
    await expect(messaging.get_by_role("link", name="View Invoices")).to_have_count(0)  # User Managers only
    await expect(tabs.get_by_role("link", name="Messaging")).to_have_attribute("aria-current", "page")
    # in the (closed) account menu too, Messaging is the current page, not Profile
    await expect(nav.locator('a[href="#/profile?tab=messaging"]')).to_have_attribute("aria-current", "page")
    await expect(nav.locator('a[href="#/profile"]')).not_to_have_attribute("aria-current", "page")


async def test_a_paid_user_manager_sees_securemail_and_the_invoices(page: Page, member: MakeMember) -> None:
    lee = await member("lee@bright.example", paid=True, manager=True)
    await log_in_as(page, lee)
    await page.goto("/#/profile?tab=messaging")
    messaging = page.get_by_role("region", name="Messaging")
    await expect(messaging).to_contain_text("Your account has paid SecureMail")
    await messaging.get_by_role("link", name="View Invoices").click()
    await expect(page.get_by_role("heading", name="SecureMail payments", level=1)).to_be_visible()


async def test_email_phones_and_two_step_off_ask_for_the_current_password(
        page: Page, stack: Stack, member: MakeMember) -> None:
    """Someone who finds the computer signed in cannot turn 2-Step Verification off and move the
    email address (then "Forgot password" would be theirs): the profile asks for the current
    password with those changes, and a wrong one changes nothing."""
    ana = await member("ana@bright.example")
    await set_phone_on_file(stack, ana, "+12025550161", two_step_required=True)
    await log_in_as(page, ana)
    await open_profile(page)
    current = page.get_by_label("Current password")
    two_step = page.get_by_label(TWO_STEP)
    save = page.get_by_role("button", name="Save", exact=True)

    # Names need no password.
    await page.get_by_label("First name").fill("Anabel")
    await expect(current).to_be_hidden()
    await save.click()
    await expect(page.get_by_role("status")).to_have_text("Your profile has been saved.")

    # 2-step off and a new address: the password is asked for, with why.
    await two_step.uncheck()
    await expect(current).to_be_visible()
    await expect(current).to_have_accessible_description(
        "For your security, enter your current password to change your email address or phone numbers, "
        "or to turn 2-Step Verification off.")
    await page.get_by_label("Email address").fill("thief@evil.example")
    await save.click()  # left empty: not sent
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text("Enter your current password to save these changes.")
    await current.fill("Not-My-Password-1!")
    await save.click()
    await expect(alert).to_have_text("Your current password is not right.")
    await expect(current).to_have_value("")
    async with stack.auth_app[POOL].acquire() as conn:
        row = await auth_store.get_user(conn, uuid.UUID(ana.id))
    assert (row["two_step_required"], row["email"], row["pending_email"], row["failed_logins"]) == (
        True, "ana@bright.example", None, 1)

    # The owner, with the right password: saved; the form shows the address in use meanwhile.
    await page.get_by_label("Email address").fill("ana@newmail.example")
    await current.fill(ana.password)
    await save.click()
    await expect(page.get_by_role("status")).to_have_text(
        "Your profile has been saved. Open the link we sent to your new email address to start using it.")
    await expect(current).to_be_hidden()
    await expect(page.get_by_label("Email address")).to_have_value("ana@bright.example")
    await expect(page.get_by_text("Waiting for confirmation of ana@newmail.example.")).to_be_visible()
    await page.reload()
    await expect(page.get_by_label(TWO_STEP)).not_to_be_checked()


async def test_two_step_on_asks_to_confirm_an_unproven_phone_first(page: Page, stack: Stack, member: MakeMember) -> None:
    """A number nobody proved would get the password-reset codes: the profile says so and offers
    the code that proves it, then 2-step goes on."""
    ana = await member("ana@bright.example")
    now = stack.clock.now()
    async with stack.auth_app[POOL].acquire() as conn:  # registered with 2-step off: the number never proved
        await auth_store.update_user(conn, uuid.UUID(ana.id), {"phone": "+12025550162", "phone_from_inviter": False}, now)
    await log_in_as(page, ana)
    await open_profile(page)
    two_step = page.get_by_label(TWO_STEP)
    await two_step.check()
    await page.get_by_role("button", name="Save", exact=True).click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Confirm your phone number first")
    await alert.get_by_role("button", name="Send me a code to confirm my phone number").click()
    await page.get_by_role("button", name="Call me with a code").click()
    await page.get_by_label("6-digit code").fill(await stack.code_for("+12025550162", channel="call"))
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("status")).to_have_text("Your phone number is confirmed. You can turn 2-Step Verification on now.")
    await expect(two_step).to_be_checked()
    await page.get_by_role("button", name="Save", exact=True).click()
    await expect(page.get_by_role("status")).to_have_text("Your profile has been saved.")
    await page.reload()
    await expect(page.get_by_label(TWO_STEP)).to_be_checked()
