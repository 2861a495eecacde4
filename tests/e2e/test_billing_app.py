"""SecureMail purchases in the web app, as a User Manager sees them, against the whole stack
with billing-service and the local Stripe server (tests/integration/stack.py): buying
SecureMail for a user of the practice (Manage Users, Edit), the card and the invoices on
Profile, "Messaging", "View Invoices", and "Email my invoices" reaching the manager's own
sign-in address (not the billing email given with the card, which is Stripe's); the card put
on file the Billing Dept.'s way (e2e_kit.put_card_on_file: Support's look-up, the card entered
in Stripe, Stripe's webhook), the web app sending card changes to the Billing Dept.;
what a manager without a card, and a user not registered yet, are told; and, through the
gateway with a plain HTTP client, that nobody buys for a user of another practice and a plain
member buys nothing."""
from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from e2e_kit import MakeMember, Member, log_in_as, needs_chromium, open_profile, put_card_on_file
from msp_shared.web import POOL
from playwright.async_api import Locator, Page, expect
from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Stack, eventually, text_of

pytestmark = needs_chromium

NO_CARD = "There is no credit card on file for you. To add one, contact the PBHS Billing Dept. at 800-840-5383."
NO_INVOICES = "There are no invoices for your account yet."
NOT_REGISTERED = "SecureMail can be purchased for this user once they have registered fully."
PURCHASED = "SecureMail purchased: the user has paid SecureMail access now."
ANOTHER_USERS = "(another user's account)"


def user_row(page: Page, email: str) -> Locator:
    return page.locator("tbody tr").filter(has_text=email)


def invoice_row(page: Page, number: str) -> Locator:
    return page.locator("tbody tr").filter(has_text=number)


async def open_manage_users(page: Page) -> None:
    await page.get_by_role("link", name="Manage Users", exact=True).click()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()


async def edit_user(page: Page, email: str) -> None:
    await open_manage_users(page)
    await user_row(page, email).get_by_role("button", name="Edit").click()
    await expect(page.get_by_role("heading", name=f"Edit {email}", level=1)).to_be_visible()


async def purchase_for(page: Page, email: str) -> None:
    """Manage Users, Edit, "Purchase SecureMail for this User", "Confirm purchase"."""
    await edit_user(page, email)
    await page.get_by_role("button", name="Purchase SecureMail for this User").click()
    confirm = page.get_by_role("group", name=f"Purchase SecureMail for {email}?")
    await expect(confirm).to_be_focused()
    await expect(confirm).to_contain_text("$10/month for this account to the credit card on file")
    await confirm.get_by_role("button", name="Confirm purchase").click()


async def open_invoices(page: Page) -> None:
    """The way the help page sends User Managers: Profile (from the menu in the upper right
    corner), the "Messaging" tab, "View Invoices"."""
    await open_profile(page)
    await page.get_by_role("navigation", name="Profile").get_by_role("link", name="Messaging").click()
    messaging = page.get_by_role("region", name="Messaging")
    await expect(messaging).to_contain_text("Your SecureMail payments")
    await messaging.get_by_role("link", name="View Invoices").click()
    await expect(page.get_by_role("heading", name="SecureMail payments", level=1)).to_be_visible()


async def reload_until(page: Page, visible: Callable[[], Locator], what: str, *, ready: Locator) -> None:
    """Reload the page (bounded) until `visible()` shows: for facts that reach the page's
    service by an event (a Stripe webhook, a billing event on the bus), not by the request."""
    async def shown() -> bool:
        await page.reload()
        await expect(ready).to_be_visible()
        return await visible().count() > 0
    await eventually(shown, what=what)


def stripe_invoice_number(stack: Stack, payer: Member, user: Member) -> str:
    """The number of the invoice Stripe made with the subscription `payer` bought for `user`."""
    subs = [s for s in stack.stripe.objects["subscription"].values()
            if s["metadata"].get("payer_id") == payer.id and s["metadata"].get("user_id") == user.id]
    assert len(subs) == 1, subs
    return stack.stripe.objects["invoice"][subs[0]["latest_invoice"]]["number"]


def granted_in_mail(stack: Stack, user: Member) -> Callable[[], Awaitable[Any]]:
    return lambda: stack.mail_app[POOL].fetchval(
        "SELECT count(*) FROM securemail_accounts WHERE user_id = $1", uuid.UUID(user.id))


async def test_user_manager_buys_securemail_and_emails_the_invoices(page: Page, stack: Stack, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")
    card = await put_card_on_file(stack, lee, billing_email="accounts@bright.example")
    assert (card["brand"], card["last4"]) == ("visa", "4242")
    assert await granted_in_mail(stack, mel)() == 0
    # On Lee's one Stripe customer, which billing made with our ids and the practice's name.
    [customer] = stack.stripe.objects["customer"].values()
    assert customer["metadata"] == {"msp_user_id": lee.id, "msp_practice_id": lee.practice_id}
    assert "Bright Smiles" in customer["description"] and customer["email"] == "accounts@bright.example"

    await log_in_as(page, lee)
    await purchase_for(page, mel.email)
    await expect(page.get_by_text(PURCHASED)).to_be_visible()
    await expect(page.get_by_role("status")).to_have_text("SecureMail purchased.")
    await expect(page.get_by_role("button", name="Purchase SecureMail for this User")).to_have_count(0)

    # Really bought: a Stripe subscription paid by Lee for Mel, and SecureMail granted to Mel
    # in mail-service (billing's event on the bus); Manage Users shows it once auth-service
    # has heard it too.
    subs = [s for s in stack.stripe.objects["subscription"].values() if s["metadata"].get("user_id") == mel.id]
    assert [(s["status"], s["metadata"]["payer_id"]) for s in subs] == [("active", lee.id)]
    await eventually(granted_in_mail(stack, mel), what="SecureMail granted to Mel in mail-service")
    await page.get_by_role("link", name="Back to Manage Users").click()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()
    await reload_until(page, lambda: user_row(page, mel.email).get_by_text("SecureMail", exact=True),
                       "the SecureMail badge in Manage Users",
                       ready=page.get_by_role("heading", name="Manage Users", level=1))
    await user_row(page, mel.email).get_by_role("button", name="Edit").click()
    await expect(page.get_by_text("SecureMail is paid for this user.")).to_be_visible()

    # The card on file and Mel's invoice (it reaches billing by Stripe's webhook too).
    mel_invoice = stripe_invoice_number(stack, lee, mel)
    await open_invoices(page)
    await expect(page.get_by_text(
        f"Card on file: visa ending in 4242, expires {card['exp_month']}/{card['exp_year']}.")).to_be_visible()
    await expect(page.get_by_text(
        "To change the payment method, contact the PBHS Billing Dept. at 800-840-5383.")).to_be_visible()
    await reload_until(page, lambda: invoice_row(page, mel_invoice), "Mel's invoice on the invoices page",
                       ready=page.get_by_role("heading", name="SecureMail payments", level=1))
    row = invoice_row(page, mel_invoice)
    await expect(row).to_contain_text(ANOTHER_USERS)
    await expect(row).to_contain_text("10.00")
    await expect(row.get_by_text("paid", exact=True)).to_be_visible()

    # "Email my invoices" sends the invoices of Lee's own account only: there are none yet.
    await page.get_by_role("button", name="Email my invoices").click()
    alert = page.get_by_role("alert").filter(has_text="There are no invoices")
    await expect(alert).to_have_text(NO_INVOICES)
    await expect(alert).to_be_focused()

    # Lee buys SecureMail for their own account the same way, then has an invoice to mail.
    await purchase_for(page, lee.email)
    await expect(page.get_by_text(PURCHASED)).to_be_visible()
    own_invoice = stripe_invoice_number(stack, lee, lee)
    await open_invoices(page)
    await reload_until(page, lambda: invoice_row(page, own_invoice), "Lee's own invoice on the invoices page",
                       ready=page.get_by_role("heading", name="SecureMail payments", level=1))
    await expect(invoice_row(page, own_invoice)).not_to_contain_text(ANOTHER_USERS)
    await expect(invoice_row(page, mel_invoice)).to_contain_text(ANOTHER_USERS)
    await expect(page.locator("tbody tr")).to_have_count(2)

    mails_before = stack.mail_count()
    await page.get_by_role("button", name="Email my invoices").click()
    await expect(page.get_by_role("status")).to_have_text("Your invoice is on the way to your email address.")
    # To the address Lee signs in with, not the billing email given with the card.
    mail = await stack.mail_to(lee.email, after=mails_before, subject="Your SecureMail invoices")
    body = text_of(mail)
    assert own_invoice in body and "10.00 USD" in body and "paid" in body, body
    assert mel_invoice not in body, body  # Mel's invoice is not Lee's own account's
    assert not any("accounts@bright.example" in str(m["To"]) for m in stack.mails()[mails_before:])

    # Every Stripe event reached billing through the gateway's webhook route, once each: the
    # card's (attached, customer updated) and, for each of the two subscriptions, created +
    # invoice.paid.
    stripe_events = set(stack.stripe.objects["event"])
    types = [e["type"] for e in stack.stripe.objects["event"].values()]
    assert sorted(t for t in types if not t.startswith(("payment_method.", "customer.updated"))) == [
        "customer.subscription.created", "customer.subscription.created", "invoice.paid", "invoice.paid"]
    assert "payment_method.attached" in types and "customer.updated" in types
    await eventually(lambda: set(stack.stripe.delivered) == stripe_events, what="every webhook delivered")
    applied = {r["event_id"] for r in await stack.billing_app[POOL].fetch("SELECT event_id FROM stripe_events")}
    assert applied == stripe_events


async def test_no_card_and_no_registration_mean_nothing_can_be_bought(
        page: Page, stack: Stack, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")
    # Nia is invited by Support and has not registered: billing has never heard of her.
    async with stack.browser() as support:
        status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
        assert status == 200, body
        status, body, _ = await support.call("POST", f"/admin/practices/{lee.practice_id}/users", json={
            "email": "nia@bright.example", "first_name": "Nia", "two_step_required": False})
        assert status == 201, body
        assert body["user"]["status"] == "invited"

    await log_in_as(page, lee)
    await purchase_for(page, mel.email)
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(NO_CARD)
    await expect(alert).to_be_focused()
    await expect(page.get_by_role("button", name="Confirm purchase")).to_be_enabled()  # may try again
    await expect(page.get_by_text(PURCHASED)).to_have_count(0)
    assert stack.stripe.objects["subscription"] == {}
    denied = await stack.billing_app[POOL].fetchval(
        "SELECT outcome FROM audit WHERE action = 'billing.securemail.purchase' AND subject = $1", uuid.UUID(mel.id))
    assert denied == "denied:card_required"

    await page.get_by_role("link", name="Back to Manage Users").click()
    await expect(user_row(page, "nia@bright.example")).to_contain_text("Invited, not registered")
    await user_row(page, "nia@bright.example").get_by_role("button", name="Edit").click()
    await expect(page.get_by_role("heading", name="Edit nia@bright.example", level=1)).to_be_visible()
    await expect(page.get_by_text(NOT_REGISTERED)).to_be_visible()
    # The edit page has an address of its own: the menu's "Manage Users" leads back.
    await expect(page).to_have_url(f"/#/users/edit?id={body['user']['id']}")
    await page.get_by_role("navigation", name="Main").get_by_role("link", name="Manage Users").click()
    await expect(page.get_by_role("heading", name="Manage Users", level=1)).to_be_visible()
    await expect(page.get_by_role("button", name="Purchase SecureMail for this User")).to_have_count(0)

    await open_invoices(page)
    await expect(page.get_by_text("No credit card on file.")).to_be_visible()
    await expect(page.get_by_text("No invoices yet.")).to_be_visible()
    await page.get_by_role("button", name="Email my invoices").click()
    alert = page.get_by_role("alert").filter(has_text="There are no invoices")
    await expect(alert).to_have_text(NO_INVOICES)
    await expect(alert).to_be_focused()
    await expect(page.get_by_role("status")).to_be_hidden()


async def test_nobody_buys_for_another_practice_and_members_buy_nothing(stack: Stack, member: MakeMember) -> None:
    lee = await member("lee@bright.example", "Bright Smiles", manager=True)
    mel = await member("mel@bright.example", "Bright Smiles")
    max_ = await member("max@bright.example", "Bright Smiles")
    rival = await member("ray@harbor.example", "Harbor Dental", manager=True)
    await put_card_on_file(stack, lee, billing_email="accounts@bright.example")
    await put_card_on_file(stack, rival, billing_email="accounts@harbor.example")  # a card is not the obstacle

    async with stack.browser() as api:
        status, body, _ = await api.login(rival.email, rival.password)
        assert status == 200, body
        status, body, _ = await api.call("POST", "/billing/securemail", json={"user_id": mel.id})
        assert (status, body["error"]) == (404, "user_not_found"), body
        # Answered exactly like a user that does not exist: nothing tells Mel's practice apart.
        status, nobody, _ = await api.call("POST", "/billing/securemail", json={"user_id": str(uuid.uuid4())})
        assert (status, nobody) == (404, body)

    async with stack.browser() as api:
        status, body, _ = await api.login(max_.email, max_.password)
        assert status == 200, body
        for target in (mel, max_):
            status, body, _ = await api.call("POST", "/billing/securemail", json={"user_id": target.id})
            assert (status, body["error"]) == (403, "user_manager_required"), body
        status, body, _ = await api.call("GET", "/billing/invoices")
        assert (status, body["error"]) == (403, "user_manager_required"), body

    assert stack.stripe.objects["subscription"] == {}
    assert await granted_in_mail(stack, mel)() == 0
    outcomes = await stack.billing_app[POOL].fetch(
        "SELECT actor, subject, outcome FROM audit WHERE action = 'billing.securemail.purchase' ORDER BY id")
    assert [(str(r["actor"]), r["outcome"]) for r in outcomes] == [
        (rival.id, "denied:user_not_found"), (rival.id, "denied:user_not_found"),
        (max_.id, "denied:user_manager_required"), (max_.id, "denied:user_manager_required")]

    # Lee, Mel's own User Manager, can: the refusals above were about who asked, not Mel.
    async with stack.browser() as api:
        status, body, _ = await api.login(lee.email, lee.password)
        assert status == 200, body
        status, body, _ = await api.call("POST", "/billing/securemail", json={"user_id": mel.id})
        assert status == 201, body
        assert (body["subscription"]["user_id"], body["subscription"]["paid_by"]) == (mel.id, lee.id)

