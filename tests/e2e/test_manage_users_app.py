"""Manage Users as a User Manager sees it in a real browser against the whole stack (the help
page's "User Manager User Capabilities"): every user invited to the practice, registered or
not, with their registration status; the 2-Step Verification setting toggled per user and
kept by the server; "Re-invite" sending a new invitation (read from the dev outbox), at most
one per user per 15 minutes, the page saying so in the server's words."""
from __future__ import annotations

import uuid

from e2e_kit import MakeMember, invite_staff, log_in_as, needs_chromium
from msp_auth import store as auth_store
from msp_shared.web import POOL
from playwright.async_api import Locator, Page, expect
from stack import Stack, link_token, links, token_link

pytestmark = needs_chromium

INVITED = "Invited, not registered"  # app.js userStatus, for status "invited"
UNVERIFIED = "Registered, phone not verified"  # for status "registered_unverified"
SAVED = "2-Step Verification setting saved."
THROTTLED = ("An invitation was sent to this user only minutes ago. Ask them to look for it (also in their "
             "spam folder), or try again later.")
NO_PHONE = ("This user has no phone number on file for the codes. They can add one in their profile, and turn "
            "2-Step Verification on there.")


def user_row(page: Page, email: str) -> Locator:
    return page.locator("tbody tr").filter(has_text=email)


def two_step_box(page: Page, email: str) -> Locator:
    return page.get_by_label(f"2-Step Verification for {email}")


async def open_manage_users(page: Page) -> None:
    """"Manage Users" in the main menu, as the help page has it."""
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Manage Users", exact=True).click()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()


async def test_manager_toggles_two_step_and_reinvites_an_invited_user(
        page: Page, stack: Stack, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    await invite_staff(stack, lee.practice_id, "nia@bright.example", first_name="Nia", phone="+12025550170")
    first = token_link(await stack.mail_to("nia@bright.example", subject="invites you"), "register")
    stack.clock.advance(minutes=16)  # Support's invitation is older than the 15-minute bound

    await log_in_as(page, lee)
    await open_manage_users(page)
    nia = user_row(page, "nia@bright.example")
    await expect(nia).to_contain_text("Nia")
    await expect(nia).to_contain_text(INVITED)
    box = two_step_box(page, "nia@bright.example")
    await expect(box).to_be_checked()  # Support invited her with 2-step on

    # Off, and still off once the page is loaded again from the server; then on again.
    await box.uncheck()
    await expect(page.get_by_role("status")).to_have_text(SAVED)
    await page.reload()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()
    await expect(box).not_to_be_checked()
    await box.check()
    await expect(page.get_by_role("status")).to_have_text(SAVED)
    await page.reload()
    await expect(box).to_be_checked()

    # Re-invite: a new invitation, with a new link, reaches her address.
    before = stack.mail_count()
    await nia.get_by_role("button", name="Re-invite").click()
    await expect(page.get_by_role("status")).to_have_text("Invitation sent again to nia@bright.example.")
    again = await stack.mail_to("nia@bright.example", after=before, subject="Bright Smiles invites you")
    assert token_link(again, "register") != first

    # Again right away: the server's refusal, in words, and no third mail.
    await nia.get_by_role("button", name="Re-invite").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(THROTTLED)
    await expect(alert).to_be_focused()
    assert stack.mail_count() == before + 1


async def test_the_list_shows_each_users_registration_status(page: Page, stack: Stack, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")  # registered and verified
    await invite_staff(stack, lee.practice_id, "nia@bright.example", first_name="Nia")
    await invite_staff(stack, lee.practice_id, "rio@bright.example", phone="+12025550171")
    # Rio registers from the link; his phone (2-step is on) is not proven yet.
    link = next(x for x in links(await stack.mail_to("rio@bright.example")) if "#/register?token=" in x)
    async with stack.browser() as rio:
        status, body, _ = await rio.call("POST", "/registrations", json={
            "token": link_token(link), "first_name": "Rio", "last_name": "Moss", "password": "Sunny-Lake-42",
            "terms_version": "2026-01", "accept_terms": True})
        assert status == 201 and body["user"]["status"] == "registered_unverified", body

    await log_in_as(page, lee)
    await open_manage_users(page)
    await expect(user_row(page, mel.email)).to_contain_text("Registered")
    await expect(user_row(page, mel.email)).not_to_contain_text("phone not verified")
    await expect(user_row(page, "nia@bright.example")).to_contain_text(INVITED)
    rio_row = user_row(page, "rio@bright.example")
    await expect(rio_row).to_contain_text("Rio Moss")
    await expect(rio_row).to_contain_text(UNVERIFIED)
    # Only someone who has not registered yet can be re-invited.
    await expect(rio_row.get_by_role("button", name="Re-invite")).to_have_count(0)
    await expect(user_row(page, mel.email).get_by_role("button", name="Re-invite")).to_have_count(0)
    await expect(user_row(page, "nia@bright.example").get_by_role("button", name="Re-invite")).to_be_visible()


async def test_two_step_for_a_user_without_a_phone_is_refused_in_words(page: Page, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")  # registered, no phone on file
    await log_in_as(page, lee)
    await open_manage_users(page)
    box = two_step_box(page, mel.email)
    await expect(box).not_to_be_checked()
    await box.click()  # not check(): the refusal may untick it before check() could see it ticked
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(NO_PHONE)
    await expect(alert).to_be_focused()
    await expect(box).not_to_be_checked()  # the box shows what the server has at once, not after a reload
    await page.reload()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()
    await expect(box).not_to_be_checked()  # the server kept it off


async def test_two_step_on_an_unproven_phone_or_off_for_a_shared_invitee_is_refused_in_words(
        page: Page, stack: Stack, member: MakeMember) -> None:
    """On: not onto a number nobody proved (password resets would send codes there). Off: not for
    an invited account another practice also wrote to (its 2-step protects their messages too)."""
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")
    await member("dr@lakeside.example", "Lakeside Dental")  # another practice
    pat = await invite_staff(stack, lee.practice_id, "pat@bright.example", phone="+12025550172")
    now = stack.clock.now()
    async with stack.auth_app[POOL].acquire() as conn:
        # Mel registered with 2-step off: her number was never proved by a code.
        await auth_store.update_user(conn, uuid.UUID(mel.id), {"phone": "+12025550173"}, now)
        # A sender of the other practice wrote to Pat's address (as mail-service records it).
        lakeside = await conn.fetchval("SELECT id FROM practices WHERE name = 'Lakeside Dental'")
        await auth_store.record_recipient_practice(conn, uuid.UUID(pat["id"]), lakeside, now)

    await log_in_as(page, lee)
    await open_manage_users(page)
    alert = page.get_by_role("alert")
    mel_box = two_step_box(page, mel.email)
    await mel_box.click()
    await expect(alert).to_contain_text("This user has not confirmed their phone number with a code yet")
    await expect(mel_box).not_to_be_checked()
    pat_box = two_step_box(page, "pat@bright.example")
    await expect(pat_box).to_be_checked()
    await pat_box.click()
    await expect(alert).to_have_text("Other practices have also written to this user, so 2-Step Verification cannot be "
                                     "turned off here: it protects their messages too.")
    await expect(pat_box).to_be_checked()
    await page.reload()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()
    await expect(mel_box).not_to_be_checked()
    await expect(pat_box).to_be_checked()  # the server kept both as they were
