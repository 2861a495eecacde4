"""Secure messages in the web app, as their sender sees them: each recipient's read receipt,
recalling a message nobody opened (and the reason when a recipient opened it first),
shortening its life (never lengthening it), and the progress of an upload with attachments."""
from __future__ import annotations

from datetime import datetime, timedelta

from e2e_kit import MakeMember, Member, log_in_as, needs_chromium
from msp_shared.web import POOL
from playwright.async_api import Locator, Page, expect
from stack import Stack

pytestmark = needs_chromium
ALREADY_OPENED = "This message cannot be recalled: a recipient has already opened it."
ONLY_FORWARD = "A message's expiry can only be brought forward, not pushed back."


async def send(stack: Stack, sender: Member, to: list[Member], subject: str = "Ana Lopez tooth 14") -> str:
    """Sent through the gateway as the sender's own browser would (JSON, no files)."""
    async with stack.browser() as browser:
        status, body, _ = await browser.login(sender.email, sender.password)
        assert status == 200, body
        status, body, _ = await browser.call("POST", "/messages", json={
            "to": [r.email for r in to], "subject": subject, "body": "Biopsy result: benign."})
        assert status == 201, body
        return body["id"]


async def open_as(stack: Stack, reader: Member, message_id: str) -> int:
    """The recipient opens the message (which records the read receipt); the answer's status."""
    async with stack.browser() as browser:
        status, body, _ = await browser.login(reader.email, reader.password)
        assert status == 200, body
        status, _, _ = await browser.call("GET", f"/messages/{message_id}")
        return status


def receipt(page: Page, email: str) -> Locator:
    return page.locator("#receipts tbody tr").filter(has_text=email)


async def test_sender_sees_read_receipts_and_recalls_an_unopened_message(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    ben = await member("ben@oral.example", "Oral Surgery")
    opened = await send(stack, sender, [ana, ben])
    assert await open_as(stack, ana, opened) == 200

    await log_in_as(page, sender)
    await page.goto(f"/#/message?id={opened}")
    await expect(page.get_by_role("heading", name="Read receipts")).to_be_visible()
    await expect(receipt(page, ana.email)).not_to_contain_text("Not opened yet")
    await expect(receipt(page, ana.email)).to_contain_text(str(stack.clock.now().year))
    await expect(receipt(page, ben.email)).to_contain_text("Not opened yet")
    # Opened by one recipient: no longer recallable, and the page says why.
    await expect(page.get_by_role("button", name="Recall this message")).to_have_count(0)
    await expect(page.get_by_text("can no longer be recalled")).to_be_visible()

    unopened = await send(stack, sender, [ben], subject="Second opinion")
    await page.goto(f"/#/message?id={unopened}")
    await expect(receipt(page, ben.email)).to_contain_text("Not opened yet")
    await page.get_by_role("button", name="Recall this message").click()
    question = page.get_by_role("group", name="Recall this message?")
    await expect(question).to_be_focused()
    await question.get_by_role("button", name="Cancel").click()  # changing one's mind keeps it
    await page.get_by_role("button", name="Recall this message").click()
    await page.get_by_role("button", name="Yes, recall it").click()
    await expect(page).to_have_url("/#/sent")
    await expect(page.get_by_role("status")).to_have_text("The message has been recalled: its recipients can no longer open it.")
    assert await open_as(stack, ben, unopened) == 404  # gone for the recipient too
    assert await open_as(stack, ana, opened) == 200  # the other message is untouched


async def test_recall_refused_once_a_recipient_opened_it_shows_why(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    message_id = await send(stack, sender, [ana])

    await log_in_as(page, sender)
    await page.goto(f"/#/message?id={message_id}")
    await expect(receipt(page, ana.email)).to_contain_text("Not opened yet")
    recall = page.get_by_role("button", name="Recall this message")
    await expect(recall).to_be_visible()
    assert await open_as(stack, ana, message_id) == 200  # opened while the sender's page was showing

    await recall.click()
    await page.get_by_role("button", name="Yes, recall it").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(ALREADY_OPENED)
    await expect(alert).to_be_focused()
    await expect(page.get_by_role("button", name="Recall this message")).to_have_count(0)
    await expect(page).to_have_url(f"/#/message?id={message_id}")
    assert await open_as(stack, ana, message_id) == 200  # still there


async def test_recipient_sees_no_sender_tools(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    message_id = await send(stack, sender, [ana])
    await log_in_as(page, ana)
    await page.goto(f"/#/message?id={message_id}")
    await expect(page.get_by_text("Biopsy result: benign.")).to_be_visible()
    await expect(page.get_by_role("heading", name="Read receipts")).to_have_count(0)
    await expect(page.get_by_role("button", name="Recall this message")).to_have_count(0)
    await expect(page.get_by_label("Expire in (days from now)")).to_have_count(0)


async def test_sender_shortens_the_expiry_but_cannot_lengthen_it(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    message_id = await send(stack, sender, [ana])

    await log_in_as(page, sender)
    await page.goto(f"/#/message?id={message_id}")
    expires = page.locator("#msg-expires")
    before = await expires.text_content()
    days = page.get_by_label("Expire in (days from now)")

    await days.fill("2")
    await page.get_by_role("button", name="Change expiry").click()
    await expect(page.get_by_role("status")).to_contain_text("The message now expires")
    await expect(expires).not_to_have_text(before or "")
    async with stack.browser() as browser:
        await browser.login(sender.email, sender.password)
        _, body, _ = await browser.call("GET", f"/messages/{message_id}")
    assert datetime.fromisoformat(body["expires_at"]) == stack.clock.now() + timedelta(days=2)

    # Longer than it has left: the API refuses, and its reason is shown.
    shortened = await expires.text_content()
    await days.fill("10")
    await page.get_by_role("button", name="Change expiry").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_have_text(ONLY_FORWARD)
    await expect(alert).to_be_focused()
    await expect(expires).to_have_text(shortened or "")

    # 0 days: asked first, then gone for everyone.
    await days.fill("0")
    await page.get_by_role("button", name="Change expiry").click()
    await page.get_by_role("group", name="Expire this message now?").get_by_role("button", name="Yes, expire it now").click()
    await expect(page).to_have_url("/#/sent")
    await expect(page.get_by_role("status")).to_contain_text("The message has expired")
    assert await open_as(stack, ana, message_id) == 404


async def test_the_access_log_lists_who_opened_the_message(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    message_id = await send(stack, sender, [ana])
    assert await open_as(stack, ana, message_id) == 200
    await log_in_as(page, sender)
    await page.goto(f"/#/message?id={message_id}")
    await page.get_by_role("button", name="Show the access log").click()
    log = page.locator("table").filter(has_text="Opened the message")
    await expect(log.locator("tbody tr").filter(has_text=ana.email)).to_have_count(1)
    await expect(log.locator("tbody tr").filter(has_text="You")).to_have_count(1)  # the sender's own opening
    await expect(page.get_by_role("link", name="Download the access log (CSV)")).to_be_visible()


PDF = b"%PDF-1.7\n" + b"scan of tooth 14 " * 200_000  # about 3.4 MB: several progress events

WATCH_PROGRESS = """() => {
  window.__progress = [];
  new MutationObserver((changes) => {
    for (const c of changes) if (c.target.id === "upload-progress") window.__progress.push(c.target.getAttribute("value"));
  }).observe(document.body, { subtree: true, attributes: true, attributeFilter: ["value"] });
}"""


async def compose(page: Page, to: str, files: list[dict]) -> None:
    await page.get_by_role("link", name="Compose", exact=True).click()
    await page.get_by_label("To").fill(to)
    await page.get_by_label("Subject").fill("Ana Lopez tooth 14")
    await page.get_by_label("Message").fill("The scan is attached.")
    await page.get_by_label("Attachments").set_input_files(files)


async def test_sending_attachments_shows_the_upload_progress(page: Page, stack: Stack, member: MakeMember) -> None:
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True)
    ana = await member("ana@oral.example", "Oral Surgery")
    await log_in_as(page, sender)

    # A refusal comes back through the upload path like any API error: shown, bar hidden.
    await compose(page, "not-an-address", [{"name": "small.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7\n"}])
    await page.get_by_role("button", name="Send securely").click()
    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Some recipients' addresses are not valid.")
    await expect(alert).to_be_focused()
    await expect(page.get_by_role("progressbar", name="Upload progress")).to_be_hidden()

    await page.get_by_label("To").fill(ana.email)
    await page.get_by_label("Attachments").set_input_files([{"name": "scan.pdf", "mimeType": "application/pdf", "buffer": PDF}])
    await page.evaluate(WATCH_PROGRESS)
    # A slower line (about 4 MB/s up, through Chromium's own network emulation) so the upload
    # takes about a second and the browser reports progress along the way.
    cdp = await page.context.new_cdp_session(page)
    await cdp.send("Network.enable")
    await cdp.send("Network.emulateNetworkConditions", {"offline": False, "latency": 0, "downloadThroughput": -1,
                                                         "uploadThroughput": 4 * 1024 * 1024})
    await page.get_by_role("button", name="Send securely").click()
    await expect(page.get_by_role("status")).to_have_text("Your secure message has been sent.")
    await expect(page.get_by_role("link", name="Download scan.pdf")).to_be_visible()
    seen = await page.evaluate("window.__progress")
    # The bar moved with the browser's upload events (from 0) and reached 100 %.
    assert seen and seen[0] == "0" and seen[-1] == "100", seen
    assert any(0 < int(v) < 100 for v in seen), f"no progress reported along the way: {seen}"
    assert [int(v) for v in seen] == sorted(int(v) for v in seen), seen


async def test_a_new_recipients_phone_is_entered_with_the_message(page: Page, stack: Stack, member: MakeMember) -> None:
    """The number the sender enters is the one the new recipient proves when registering; a
    typo is refused before the upload, with the form kept; the practice's User Manager can
    correct the number later in Manage Users."""
    sender = await member("dr.sender@bright.example", "Bright Smiles", paid=True, manager=True)
    await log_in_as(page, sender)
    await compose(page, "new.patient@example.org", [{"name": "scan.pdf", "mimeType": "application/pdf", "buffer": b"%PDF-1.7\n"}])
    await page.get_by_text("A new recipient's phone numbers (optional)").click()
    await page.get_by_label("Recipient's phone", exact=True).fill("555")
    await page.get_by_role("button", name="Send securely").click()
    await expect(page.get_by_role("alert")).to_contain_text("Some fields are missing or invalid.")
    await expect(page.get_by_label("Subject")).to_have_value("Ana Lopez tooth 14")  # nothing lost

    await page.get_by_label("Recipient's phone", exact=True).fill("(202) 555-0181")
    await page.get_by_role("button", name="Send securely").click()
    await expect(page.get_by_role("status")).to_have_text("Your secure message has been sent.")
    phone = await stack.auth_app[POOL].fetchval("SELECT phone FROM users WHERE email = 'new.patient@example.org'")
    assert phone == "+12025550181"

    # The practice's User Manager sees the invited patient and may correct the number (the
    # patient cannot: the code goes to the number the practice entered).
    await page.get_by_role("link", name="Manage Users", exact=True).click()
    row = page.locator("tbody tr").filter(has_text="new.patient@example.org")
    await expect(row.get_by_role("checkbox", name="2-Step Verification for new.patient@example.org")).to_be_enabled()
    await row.get_by_role("button", name="Edit").click()
    await expect(page.get_by_label("Phone", exact=True)).to_have_value("+12025550181")
    await expect(page.get_by_text("SecureMail can be purchased only for your practice's own users.")).to_be_visible()
    await page.get_by_label("Phone", exact=True).fill("202-555-0182")
    await page.get_by_role("button", name="Save").click()
    await expect(page.get_by_role("status")).to_have_text("Saved. The user can follow their registration link again.")
    phone = await stack.auth_app[POOL].fetchval("SELECT phone FROM users WHERE email = 'new.patient@example.org'")
    assert phone == "+12025550182"
