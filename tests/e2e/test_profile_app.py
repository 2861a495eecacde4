"""Profile as the help page describes it: "Profile" from the drop-down menu in the upper right
corner of the screen, then the "Messaging" tab, which says whether the account has paid
SecureMail and, for a User Manager, leads to "View Invoices"."""
from __future__ import annotations

from e2e_kit import MakeMember, log_in_as, needs_chromium, open_profile
from playwright.async_api import Page, expect

pytestmark = needs_chromium


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
