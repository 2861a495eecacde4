"""The web app in a real browser against the real stack: what a user sees when signing in
and out, mistyping the password, being signed out after 30 idle minutes, and registering
from an invitation link with a text-message code."""
from __future__ import annotations

from e2e_kit import needs_chromium, open_profile
from playwright.async_api import Page, expect
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Stack, links

pytestmark = needs_chromium


async def log_in(page: Page, email_address: str, password: str) -> None:
    await page.goto("/#/login")
    await page.get_by_label("Email address").fill(email_address)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name="Log in").click()


async def test_support_logs_in_and_out(page: Page) -> None:
    await page.goto("/")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()

    await log_in(page, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    await expect(page).to_have_url("/#/inbox")
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_be_visible()

    await page.get_by_role("button", name="Log out").click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("You have been logged out.")
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()
    # The session is gone on the server too: a private page sends back to the login page.
    await page.goto("/#/profile")
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()


async def test_the_app_works_without_replace_children_as_on_ios_12(page: Page) -> None:
    """iOS 12.5.1 (supported, says the help page) has no Element.replaceChildren, which the
    app uses everywhere: its polyfill must carry it. Removed here before the app loads."""
    await page.add_init_script("delete Element.prototype.replaceChildren;")
    await log_in(page, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    await open_profile(page)
    assert await page.evaluate("Element.prototype.replaceChildren.toString().includes('removeChild')")


async def test_wrong_password_shows_the_api_message_and_stays_signed_out(page: Page) -> None:
    await log_in(page, SUPPORT_EMAIL, "Not-The-Password-1!")
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text("The email or password is not right.")
    await expect(alert).to_be_focused()
    await expect(page).to_have_url("/#/login")
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


async def test_idle_for_30_minutes_sends_back_to_login_with_the_reason(page: Page, stack: Stack) -> None:
    await log_in(page, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()

    stack.clock.advance(minutes=31)
    await page.get_by_role("navigation", name="Main").locator("#account-name").click()
    await page.get_by_role("link", name="Profile", exact=True).click()
    await expect(page.get_by_role("heading", name="Log in")).to_be_visible()
    await expect(page.get_by_role("status")).to_contain_text("signed out after 30 minutes of inactivity")
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


async def test_idle_tabs_do_not_keep_the_session_alive_and_go_to_login_on_their_own(page: Page, stack: Stack) -> None:
    """Two idle tabs, the browser's clock 10 minutes ahead of the server's: their idle checks
    (timed by the app's own timers, driven here) keep nothing alive, and when the server's 30
    idle minutes are up both tabs show the login page with the reason, untouched."""
    import datetime as dt

    context = page.context
    await context.clock.install(time=dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10))
    await log_in(page, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    other = await context.new_page()
    await other.goto("/#/inbox")
    await expect(other.get_by_role("heading", name="Inbox")).to_be_visible()
    tabs = (page, other)

    def idle_check(response) -> bool:  # noqa: ANN001
        return "/api/v1/session?activity=none" in response.url

    async def checks_answer(status: int, minutes: float) -> None:
        """Move the browsers' timers `minutes` on: both tabs check, the server answers `status`."""
        async with page.expect_response(idle_check) as first, other.expect_response(idle_check) as second:
            await context.clock.run_for(int(minutes * 60 * 1000))
        assert [(await first.value).status, (await second.value).status] == [status, status]

    stack.clock.advance(minutes=29)
    await checks_answer(200, 30.1)  # each tab's watcher fires once its 30 minutes are up
    for tab in tabs:
        await expect(tab.get_by_role("heading", name="Inbox")).to_be_visible()
    stack.clock.advance(minutes=1, seconds=1)  # 30 idle minutes on the server's clock
    await checks_answer(401, 1.1)  # the server said 60 s were left: the tabs look again then
    for tab in tabs:
        await expect(tab.get_by_role("heading", name="Log in")).to_be_visible()
        await expect(tab.get_by_role("status")).to_contain_text("signed out after 30 minutes of inactivity")
    await other.close()


async def test_register_from_invitation_with_a_text_message_code(page: Page, stack: Stack) -> None:
    phone = "+12025550143"
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        status, body, _ = await support.call("POST", "/admin/practices", json={
            "name": "Lakeside Dental",
            "first_user": {"email": "dana@lakeside.example", "phone": phone, "two_step_required": True},
        })
        assert status == 201, body
    invitation = await stack.mail_to("dana@lakeside.example")
    link = next(link for link in links(invitation) if "#/register?token=" in link)

    await page.goto(link)
    await expect(page.get_by_role("heading", name="Register")).to_be_visible()
    await expect(page.get_by_text("dana@lakeside.example")).to_be_visible()
    await page.get_by_label("First name").fill("Dana")
    await page.get_by_label("Last name").fill("Reyes")
    # The number Support entered is the one to prove: shown (last digits), not asked for.
    await expect(page.locator("#phone-on-file")).to_contain_text("Lakeside Dental has on file for you (\u2022\u2022\u2022\u2022 43)")
    await expect(page.get_by_label("Phone for 2-Step Verification")).to_have_count(0)

    # The rules are ticked off live as the password is typed.
    password = page.get_by_label("Password", exact=True)
    rules = page.locator("#pw-rules")
    await password.fill("sunny")
    await expect(rules.get_by_text("An upper case letter (A-Z)")).to_have_class("missing")
    await password.fill("Sunny-Lake-42")
    await expect(rules.get_by_text("An upper case letter (A-Z)")).to_have_class("ok")
    await expect(rules.get_by_text("At least 8 characters")).to_have_class("ok")
    await page.get_by_label("Repeat the password").fill("Sunny-Lake-42")

    # The terms must be accepted: the browser keeps the form from being sent without it.
    await page.get_by_role("button", name="Create my account").click()
    await expect(page.get_by_role("heading", name="Register")).to_be_visible()
    await page.get_by_label("I have read and accept the Terms of Use", exact=False).check()
    await page.get_by_role("button", name="Create my account").click()

    await expect(page.get_by_text("does not have a dial tree")).to_be_visible()
    await page.get_by_role("button", name="Text me a code").click()
    code_box = page.get_by_label("6-digit code")
    await expect(code_box).to_be_focused()
    code = await stack.code_for(phone, channel="sms")

    await code_box.fill("000000" if code != "000000" else "111111")
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("alert")).to_be_visible()  # a wrong code is refused, in words

    await code_box.fill(code)
    await page.get_by_role("button", name="Verify").click()
    await expect(page).to_have_url("/#/inbox")
    await expect(page.get_by_role("heading", name="Inbox")).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("Your phone number is verified.")
    await expect(page.get_by_role("link", name="Manage Users")).to_be_visible()  # the first user manages the practice



async def _registered_unverified(stack: Stack, email_address: str, *, phone_on_file: str | None,
                                 typed: str | None) -> None:
    """Support opens a practice whose first user (2-step on) registers, phone not proven yet."""
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        first_user = {"email": email_address, "two_step_required": True} | ({"phone": phone_on_file} if phone_on_file else {})
        status, body, _ = await support.call("POST", "/admin/practices", json={"name": f"Practice of {email_address}",
                                                                              "first_user": first_user})
        assert status == 201, body
    token = next(link for link in links(await stack.mail_to(email_address)) if "#/register?token=" in link).split("token=")[1]
    async with stack.browser() as registrant:
        status, body, _ = await registrant.call("POST", "/registrations", json={
            "token": token, "first_name": "Ria", "last_name": "Moss", "password": "Sunny-Lake-42",
            "terms_version": "2026-01", "accept_terms": True, **({"phone": typed} if typed else {})})
        assert status == 201 and body["user"]["status"] == "registered_unverified", body


async def test_a_number_the_user_gave_can_be_corrected_before_it_is_proven(page: Page, stack: Stack) -> None:
    await _registered_unverified(stack, "ria@moss.example", phone_on_file=None, typed="+12025550151")  # a typo
    await log_in(page, "ria@moss.example", "Sunny-Lake-42")
    await expect(page.get_by_role("heading", name="Verify your phone")).to_be_visible()
    await expect(page.locator(".two-step")).to_contain_text("We will send a 6-digit code to \u2022\u2022\u2022\u2022 51")
    await page.get_by_text("Wrong number?").click()
    await page.get_by_label("Right phone number").fill("(202) 555-0152")
    await page.get_by_label("Your password").fill("Sunny-Lake-42")
    await page.get_by_role("button", name="Use this number").click()
    await expect(page.get_by_role("status")).to_have_text("The code will go to \u2022\u2022\u2022\u2022 52.")
    await page.get_by_role("button", name="Text me a code").click()
    code = await stack.code_for("+12025550152", channel="sms")
    await page.get_by_label("6-digit code").fill(code)
    await page.get_by_role("button", name="Verify").click()
    await expect(page.get_by_role("status")).to_have_text("Your phone number is verified.")


async def test_a_number_the_practice_entered_is_not_swapped_by_the_user(page: Page, stack: Stack) -> None:
    await _registered_unverified(stack, "rex@moss.example", phone_on_file="+12025550153", typed=None)
    await log_in(page, "rex@moss.example", "Sunny-Lake-42")
    await expect(page.get_by_role("heading", name="Verify your phone")).to_be_visible()
    await page.get_by_text("Wrong number?").click()
    await page.get_by_label("Right phone number").fill("(202) 555-0154")
    await page.get_by_label("Your password").fill("Sunny-Lake-42")
    await page.get_by_role("button", name="Use this number").click()
    await expect(page.get_by_role("alert")).to_contain_text("ask them to correct it, then sign in again")


async def test_locked_account_is_told_to_reset_the_password(page: Page) -> None:
    for attempt in range(5):  # the fifth wrong password in a row locks the account
        await log_in(page, SUPPORT_EMAIL, f"Wrong-Guess-{attempt}!")
        await expect(page.get_by_role("alert")).to_have_text("The email or password is not right.")
    # Now even the right password is refused, with what to do about it.
    await log_in(page, SUPPORT_EMAIL, SUPPORT_PASSWORD)
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Reset your password to unlock it.")
    await alert.get_by_role("link", name="Reset my password").click()
    await expect(page.get_by_role("heading", name="Forgot password")).to_be_visible()
    await expect(page.get_by_role("navigation", name="Main")).to_be_hidden()


async def test_an_out_of_date_browser_is_asked_to_update(page: Page) -> None:
    """The help page: Internet Explorer 9 and below "will be prompted to update their browser".
    The prompt is a `nomodule` script: a current browser skips it and runs the app; an old one
    (simulated here by running the script where the app would be) shows the prompt, under the
    page's own CSP."""
    await page.goto("/#/login")
    await expect(page.get_by_role("button", name="Log in")).to_be_visible()
    await expect(page.get_by_text("Please update your browser")).to_have_count(0)  # skipped here
    assert await page.locator('script[src="/assets/outdated.js"][nomodule]').count() == 1

    await page.add_script_tag(url="/assets/outdated.js")  # what an old browser runs
    prompt = page.get_by_role("alert")
    await expect(prompt.get_by_role("heading", name="Please update your browser")).to_be_visible()
    await expect(prompt).to_contain_text("Google Chrome, Mozilla Firefox or Safari")
