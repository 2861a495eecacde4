"""The change-password page as a signed-in user sees it: the help page's rules listed up
front (the last 6 passwords included), checked as the server checks them (letters of any
alphabet count), and the server's refusal of a recent password shown in words."""
from __future__ import annotations

from e2e_kit import MakeMember, log_in_as, needs_chromium
from playwright.async_api import Page, expect

pytestmark = needs_chromium

NEW_PASSWORD = "Élan-harbor-42"  # its only upper case letter is É: ASCII checks would refuse it


async def test_change_password_lists_the_rules_and_accepts_any_alphabet(page: Page, member: MakeMember) -> None:
    lee = await member("lee@bright.example")
    await log_in_as(page, lee)
    await page.goto("/#/change-password")
    rules = page.locator("#pw-rules")
    await expect(rules).to_contain_text("Not one of your last 6 passwords")
    upper = rules.get_by_text("An upper case letter")
    await expect(upper).to_have_class("missing")

    await page.get_by_label("Current password").fill(lee.password)
    await page.get_by_label("New password").fill(NEW_PASSWORD)
    await page.get_by_label("Repeat the password").fill(NEW_PASSWORD)
    for rule in ("At least 8 characters", "A lower case letter", "An upper case letter", "A number",
                 "A special character", "Both entries match"):
        await expect(rules.get_by_text(rule)).to_have_class("ok")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_text("Your password has been changed.")).to_be_visible()

    # Back to the old one: the server refuses it, and the page says why.
    await page.goto("/#/change-password")
    await page.get_by_label("Current password").fill(NEW_PASSWORD)
    await page.get_by_label("New password").fill(lee.password)
    await page.get_by_label("Repeat the password").fill(lee.password)
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_text("not among your last 6")).to_be_visible()
