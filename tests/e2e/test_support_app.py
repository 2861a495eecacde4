"""Support's area of the web app in a real browser against the real stack: only Support sees
it (anyone else gets the API's refusal, in words), practices are found, opened and edited,
staff invited, users found by name page by page, a locked user unlocked (who then still has
to reset the password), User Manager granted and revoked, and the audit trail read as a
table and as a CSV file."""
from __future__ import annotations

from e2e_kit import MakeMember, needs_chromium
from playwright.async_api import Dialog, Locator, Page, expect
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Stack

pytestmark = needs_chromium
REFUSED = "Only SecurePractice Support can do this."
CSV_HEADER = "id,at,action,outcome,actor_id,subject_id,practice_id,ip,details"


async def log_in(page: Page, email_address: str = SUPPORT_EMAIL, password: str = SUPPORT_PASSWORD) -> None:
    await page.goto("/#/login")
    await page.get_by_label("Email address").fill(email_address)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()


async def lock_out(stack: Stack, email_address: str) -> None:
    """Five wrong passwords in a row, as a guesser's browser sends them: the account locks."""
    async with stack.browser() as guesser:
        for attempt in range(5):
            status, body, _ = await guesser.login(email_address, f"Wrong-Guess-{attempt}!")
            assert status == 401, body


def user_row(page: Page, email_address: str) -> Locator:
    return page.locator("#support-users tbody tr").filter(has_text=email_address)


async def open_practice_page(page: Page, name: str) -> None:
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Support", exact=True).click()
    await page.get_by_label("Practice name").fill(name.split()[0].lower())
    await page.get_by_role("button", name="Search practices").click()
    await page.get_by_role("link", name=name, exact=True).click()
    await expect(page.get_by_role("heading", level=1)).to_have_text(name)


async def test_only_support_sees_the_support_area(page: Page, member: MakeMember) -> None:
    mel = await member("mel@bright.example", "Bright Smiles")
    nav = page.get_by_role("navigation", name="Main")
    await log_in(page)
    await nav.get_by_role("link", name="Support", exact=True).click()
    await expect(page).to_have_url("/#/support")
    await expect(page.get_by_role("heading", name="Practices", level=1)).to_be_visible()
    await expect(nav.get_by_role("link", name="Support", exact=True)).to_have_attribute("aria-current", "page")
    await expect(page.get_by_role("link", name="Bright Smiles")).to_be_visible()
    await nav.get_by_role("button", name="Log out").click()

    await log_in(page, mel.email, mel.password)
    await expect(nav.get_by_role("link", name="Inbox")).to_be_visible()
    await expect(nav.get_by_role("link", name="Support", exact=True)).to_have_count(0)
    # Typed into the address bar: the API refuses, and the page says so (no Support tools).
    nobody = "00000000-0000-0000-0000-000000000000"
    for route in ("#/support", "#/support/users", "#/support/audit", f"#/support/practice?id={nobody}"):
        await page.goto("/" + route)
        alert = page.get_by_role("alert")
        await expect(alert).to_have_text(REFUSED)
        await expect(page.get_by_role("navigation", name="Support")).to_have_count(0)
        await expect(page.get_by_role("table")).to_have_count(0)


async def test_support_edits_a_practice_and_invites_staff(page: Page, member: MakeMember) -> None:
    mel = await member("mel@bright.example", "Bright Smiles")
    await log_in(page)
    await open_practice_page(page, "Bright Smiles")
    address = page.get_by_label("Address", exact=True)
    await expect(address).to_have_value("1 Main St")
    await expect(user_row(page, mel.email)).to_contain_text("Registered")

    # The API's validation is shown in words (a name of spaces is empty once trimmed).
    await page.get_by_label("Practice name").fill("   ")
    await page.get_by_role("button", name="Save practice details").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Some fields are missing or invalid.")
    await expect(alert).to_be_focused()

    await page.get_by_label("Practice name").fill("Bright Smiles")
    await address.fill("22 Harbor Road\nSuite 5")
    await page.get_by_label("NPI").fill("1234567893")
    await page.get_by_role("button", name="Save practice details").click()
    await expect(page.get_by_role("status")).to_have_text("The practice's details have been saved.")
    await page.reload()
    await expect(page.get_by_role("heading", level=1)).to_have_text("Bright Smiles")
    await expect(page.get_by_label("Address", exact=True)).to_have_value("22 Harbor Road\nSuite 5")
    await expect(page.get_by_label("NPI")).to_have_value("1234567893")

    invite = page.get_by_role("form", name="Invite a user to this practice")
    await invite.get_by_label("Email address").fill(mel.email)  # already has an account
    await invite.get_by_role("button", name="Send the invitation").click()
    await expect(invite.get_by_role("alert")).to_have_text("Another account already uses this email address.")
    await invite.get_by_label("Email address").fill("nia@bright.example")
    await invite.get_by_label("First name").fill("Nia")
    await invite.get_by_label("Require 2-Step Verification").uncheck()
    await invite.get_by_role("button", name="Send the invitation").click()
    await expect(page.get_by_role("status")).to_have_text("An invitation to register has been sent to nia@bright.example.")
    await expect(user_row(page, "nia@bright.example")).to_contain_text("Invited, not registered")


async def test_support_unlocks_a_locked_user_who_must_still_reset_the_password(
        page: Page, stack: Stack, member: MakeMember) -> None:
    mel = await member("mel@bright.example", "Bright Smiles")
    await member("max@bright.example", "Bright Smiles")
    await lock_out(stack, mel.email)

    await log_in(page)
    await page.goto("/#/support/users")
    await page.get_by_label("Only locked accounts").check()
    await page.get_by_role("button", name="Find users").click()
    await expect(page).to_have_url("/#/support/users?locked=true")
    await expect(page.locator("#support-users tbody tr")).to_have_count(1)
    await expect(user_row(page, mel.email)).to_contain_text("Locked")
    await page.get_by_label("Only locked accounts").uncheck()
    await page.get_by_label("Email address contains").fill("mel@")
    await page.get_by_role("button", name="Find users").click()
    await expect(page).to_have_url("/#/support/users?email=mel%40")
    await expect(page.locator("#support-users tbody tr")).to_have_count(1)
    row = user_row(page, mel.email)
    await expect(row).to_contain_text("Locked")

    await row.get_by_role("button", name="Unlock").click()
    question = page.get_by_role("group", name=f"Unlock {mel.email}?")
    await expect(question).to_be_focused()
    await expect(question).to_contain_text("The user will have to set a new password themselves")
    await question.get_by_role("button", name="Yes, unlock").click()
    await expect(page.get_by_role("status")).to_have_text(
        f"{mel.email} is unlocked. The user must set a new password themselves, "
        "with \u201cForgot password\u201d, before they can log in.")
    await expect(row).not_to_contain_text("Locked")
    await expect(row).to_contain_text("Must set a new password")
    await expect(row.get_by_role("button", name="Unlock")).to_have_count(0)

    # Unlocked by someone else: the old password stays unusable until the user resets it.
    async with stack.browser() as browser:
        status, body, _ = await browser.login(mel.email, mel.password)
    assert status == 423 and body["error"] == "password_reset_required", body


async def test_support_grants_and_revokes_user_manager_and_reads_the_audit_trail(
        page: Page, stack: Stack, member: MakeMember) -> None:
    mel = await member("mel@bright.example", "Bright Smiles")
    await lock_out(stack, mel.email)
    await log_in(page)
    await open_practice_page(page, "Bright Smiles")
    row = user_row(page, mel.email)

    await row.get_by_role("button", name="Grant User Manager").click()
    question = page.get_by_role("group", name=f"Make {mel.email} a User Manager?")
    await question.get_by_role("button", name="Yes, grant").click()
    await expect(page.get_by_role("status")).to_have_text(f"{mel.email} is now a User Manager of their practice.")
    await expect(row.locator(".badge", has_text="User Manager")).to_be_visible()
    async with stack.browser() as support:
        await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        _, found, _ = await support.call("GET", f"/admin/users?email={mel.email}")
    assert found["users"][0]["roles"] == ["member", "user_manager"]

    await row.get_by_role("button", name="Revoke User Manager").click()
    await page.get_by_role("button", name="Yes, revoke").click()
    await expect(page.get_by_role("status")).to_have_text(f"{mel.email} is no longer a User Manager.")
    await expect(row.get_by_role("button", name="Grant User Manager")).to_be_visible()
    await expect(row.locator(".badge", has_text="User Manager")).to_have_count(0)

    # The user's own trail, newest first: the role changes, then the lockout.
    await row.get_by_role("link", name="Audit trail").click()
    await expect(page).to_have_url(f"/#/support/audit?subject_id={mel.id}")
    audit = page.get_by_role("table")
    await expect(audit.get_by_role("columnheader")).to_have_text(
        ["Time", "Action", "Outcome", "Actor", "Subject", "Practice", "IP", "Details"])
    actions = audit.locator("tbody tr td:nth-child(2)")
    await expect(actions).to_contain_text(["role_revoked", "role_granted", "account_locked", "login"])
    locked = audit.locator("tbody tr").filter(has_text="account_locked")
    await expect(locked).to_contain_text("consecutive_failures: 5")
    await expect(audit.locator("tbody tr").filter(has_text="role_granted")).to_contain_text("role: user_manager")
    # Who an id in the trail is: Support's user search by id.
    await audit.locator("tbody tr").filter(has_text="account_locked").get_by_role("link", name=f"Who is {mel.id}?").click()
    await expect(page).to_have_url(f"/#/support/users?id={mel.id}")
    await expect(page.locator("#support-users tbody tr")).to_have_count(1)
    await expect(user_row(page, mel.email)).to_be_visible()
    await page.go_back()

    # Paging: two rows a page, then the older ones.
    await page.get_by_label("Rows per page").fill("2")
    await page.get_by_role("button", name="Show entries").click()
    await expect(actions).to_have_text(["role_revoked", "role_granted"])
    await page.get_by_role("link", name="Older entries").click()
    await expect(actions).to_have_text(["account_locked", "login"])
    await page.get_by_role("link", name="Newest entries").click()
    await expect(actions).to_have_text(["role_revoked", "role_granted"])

    # The CSV file has the same filters.
    await page.get_by_label("Action").fill("role_granted")
    await page.get_by_role("button", name="Show entries").click()
    await expect(actions).to_have_text(["role_granted"])
    href = await page.get_by_role("link", name="Download CSV").get_attribute("href")
    assert href and href.startswith("/api/v1/admin/audit?"), href
    assert f"subject_id={mel.id}" in href and "action=role_granted" in href and "format=csv" in href, href
    resp = await page.request.get(href)
    assert resp.status == 200
    assert resp.headers["content-type"].startswith("text/csv"), resp.headers
    lines = (await resp.text()).splitlines()
    assert lines[0] == CSV_HEADER
    assert len(lines) == 2 and f",role_granted,ok," in lines[1] and mel.id in lines[1], lines


async def test_a_practice_name_with_markup_is_shown_as_text(page: Page, stack: Stack) -> None:
    name = "Evil <img src=x onerror=alert(1)> Dental"
    dialogs: list[str] = []

    async def dismiss(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        await dialog.dismiss()

    page.on("dialog", dismiss)
    await log_in(page)
    await page.get_by_role("link", name="Support", exact=True).click()
    await page.get_by_role("link", name="Open a new practice").click()
    practice = page.get_by_role("group", name="Practice", exact=True)
    await practice.get_by_label("Practice name").fill(name)
    await practice.get_by_label("Address", exact=True).fill("<b>1</b> Exploit Way")
    first = page.get_by_role("group", name="First user")
    await first.get_by_label("Email address").fill("eve@evil.example")
    await first.get_by_label("Require 2-Step Verification").uncheck()
    await page.get_by_role("button", name="Open the practice").click()
    await expect(page.get_by_role("status")).to_have_text(
        "The practice is open. An invitation to register has been sent to eve@evil.example.")
    await expect(page.get_by_role("heading", level=1)).to_have_text(name)
    await expect(page.get_by_label("Practice name")).to_have_value(name)
    # The first user manages the practice.
    await expect(user_row(page, "eve@evil.example").locator(".badge", has_text="User Manager")).to_be_visible()
    await expect(page.locator("img, b")).to_have_count(0)
    assert name in await page.title()

    await page.get_by_role("link", name="Practices", exact=True).click()
    await expect(page.get_by_role("link", name=name)).to_be_visible()
    await expect(page.locator("#practices")).to_contain_text("<b>1</b> Exploit Way")
    await page.goto("/#/support/audit?action=practice_opened")
    await expect(page.get_by_role("table").locator("tbody tr")).to_have_count(1)
    await expect(page.locator("img, b")).to_have_count(0)
    assert dialogs == []
    assert await stack.mail_to("eve@evil.example")


async def test_support_finds_users_by_name_page_by_page(page: Page, member: MakeMember) -> None:
    for name in ("mia", "mel", "max"):
        await member(f"{name}@bright.example", "Bright Smiles")
    await log_in(page)
    await page.goto("/#/support/users")
    await page.get_by_label("Name contains").fill("dana m")
    await page.get_by_label("Users per page").fill("2")
    await page.get_by_role("button", name="Find users").click()
    await expect(page).to_have_url("/#/support/users?name=dana+m&limit=2")
    rows = page.locator("#support-users tbody tr")
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("max@bright.example")  # email order
    await expect(rows.nth(1)).to_contain_text("mel@bright.example")

    await page.get_by_role("link", name="More users").click()
    await expect(rows).to_have_count(1)
    await expect(rows.nth(0)).to_contain_text("mia@bright.example")
    assert "bright.example" not in page.url and "after=" in page.url  # the cursor is an id, not an address
    await expect(page.get_by_role("link", name="More users")).to_have_count(0)
    await page.get_by_role("link", name="First page").click()
    await expect(rows).to_have_count(2)
    await expect(rows.nth(0)).to_contain_text("max@bright.example")
