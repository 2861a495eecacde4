"""SecureMail end to end through the gateway: gateway, auth-, verify- and mail-service built
from their factories on real sockets, real PostgreSQL and RabbitMQ, mail delivered to the
dev SMTP server and read from its files, SMS codes read from the dev outbox.

A paid sender writes to an address with no account, with five attachments → the recipient
gets an invitation and a "message waiting" mail, neither carrying PHI → registers (with
2-step verification, as the practice requires by default) → reads the message and
downloads every file byte-identical → the sender sees the read receipt."""
from __future__ import annotations

import hashlib
import json
import re
import uuid
from urllib.parse import parse_qs, urlsplit

from aiohttp import MultipartWriter, hdrs
from stack import Browser, Stack, eventually, mails, text_of, token_link

from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_shared.bus import Bus
from msp_shared.clock import ManualClock
from msp_shared.events import SecureMailGranted, make_envelope
from msp_shared.web import POOL

PASSWORD = "Tulip-Harbor-42!"
NEW_RECIPIENT = "new.doctor@example.org"
PHI = ("Ana Lopez", "tooth 14", "Biopsy result", "lopez-xray.png", "pathology.pdf", "notes.txt", "plan.docx", "ct.dcm")
FILES = [
    ("lopez-xray.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 300),
    ("pathology.pdf", b"%PDF-1.7\n" + b"report " * 40_000),
    ("notes.txt", "Biopsy result for Ana Lopez.\n".encode() * 100),
    ("plan.docx", b"PK\x03\x04" + bytes(reversed(range(256))) * 500),
    ("ct.dcm", b"\x00" * 128 + b"DICM" + bytes(range(256)) * 4000),
]


async def test_send_to_new_recipient_register_read_download_and_receipt(stack: Stack, clock: ManualClock) -> None:
    # A practice and its paid sender (SecureMail granted by a billing event on the bus).
    sender, practice_id = await _paid_sender(stack, clock, "dr.sender@example.com", roles=("member",))

    alice = Browser(stack.gateway)
    bob = Browser(stack.gateway)
    try:
        status, body, _ = await alice.call("POST", "/session", json={"email": "dr.sender@example.com", "password": PASSWORD})
        assert status == 200, body

        writer = MultipartWriter("form-data")
        part = writer.append(json.dumps({"to": [NEW_RECIPIENT], "subject": "Ana Lopez tooth 14",
                                         "body": "Biopsy result attached."}), {hdrs.CONTENT_TYPE: "application/json"})
        part.set_content_disposition("form-data", name="message")
        for name, data in FILES:
            part = writer.append(data, {hdrs.CONTENT_TYPE: "application/octet-stream"})
            part.set_content_disposition("form-data", name="file", filename=name)
        status, sent, _ = await alice.call("POST", "/messages", data=writer)
        assert status == 201, sent
        message_id = sent["id"]

        # Two mails reach the SMTP server: the invitation and the notification, neither with PHI.
        delivered = await eventually(lambda: (m := mails(stack.dev_outbox)) and len(m) >= 2 and m, what="two mails")
        assert sorted(m["To"] for m in delivered) == [NEW_RECIPIENT, NEW_RECIPIENT]
        by_subject = {m["Subject"]: m for m in delivered}
        invitation = by_subject["Bright Smiles Dental invites you to SecurePractice"]
        waiting = by_subject["New secure message from Bright Smiles Dental"]
        for mail in delivered:
            whole = mail.as_string() + text_of(mail)
            for secret in PHI:
                assert secret not in whole
        assert f"/#/message?id={message_id}" in text_of(waiting)  # the web app's message route
        link = re.search(r"https?://\S+register\?token=[\w-]+", text_of(invitation)).group(0)
        token = parse_qs(urlsplit(urlsplit(link).fragment).query)["token"][0]

        # The recipient registers; 2-step applies, and until the phone is proved nothing is readable.
        status, invite, _ = await bob.call("GET", f"/invitations/{token}")
        assert status == 200 and invite["two_step_required"] is True
        status, reg, _ = await bob.call("POST", "/registrations", json={
            "token": token, "first_name": "Sam", "last_name": "Doctor", "password": PASSWORD, "phone": "+12025550177",
            "terms_version": invite["terms_version"], "accept_terms": True})
        assert status == 201, reg
        assert reg["restriction"] == "verification_required"
        status, refused, _ = await bob.call("GET", f"/messages/{message_id}")
        assert status == 403 and refused["error"] == "verification_required"

        status, sent_code, _ = await bob.call("POST", "/verifications", json={"ticket": reg["verification"]["ticket"], "channel": "sms"})
        assert status == 201, sent_code
        sms = await eventually(lambda: (stack.dev_outbox / "sms.jsonl").exists()
                               and (stack.dev_outbox / "sms.jsonl").read_text().strip().splitlines(), what="sms")
        code = re.search(r"\b(\d{6})\b", json.loads(sms[-1])["body"]).group(1)
        status, checked, _ = await bob.call("POST", f"/verifications/{sent_code['id']}/check", json={"code": code})
        assert status == 200, checked
        status, done, _ = await bob.call("POST", "/registrations/verify", json={"proof": checked["proof"]})
        assert status == 200, done
        assert done["restriction"] is None

        # Inbox, the message, and every file byte-identical through the gateway.
        status, inbox, _ = await bob.call("GET", "/messages?folder=inbox")
        assert status == 200 and [m["id"] for m in inbox["messages"]] == [message_id]
        status, opened, _ = await bob.call("GET", f"/messages/{message_id}")
        assert status == 200 and opened["subject"] == "Ana Lopez tooth 14"
        assert [a["filename"] for a in opened["attachments"]] == [name for name, _ in FILES]
        for att, (name, data) in zip(opened["attachments"], FILES):
            status, got, headers = await bob.call("GET", f"/messages/{message_id}/attachments/{att['id']}")
            assert status == 200
            assert hashlib.sha256(got).hexdigest() == hashlib.sha256(data).hexdigest(), name
            assert headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Content-Disposition"].startswith("attachment;")
        status, part_got, headers = await bob.call(
            "GET", f"/messages/{message_id}/attachments/{opened['attachments'][4]['id']}", headers={"Range": "bytes=128-131"})
        assert status == 206 and part_got == b"DICM"

        # The sender sees the read receipt, and the disclosure log names each open and download.
        status, mine, _ = await alice.call("GET", f"/messages/{message_id}")
        assert [(r["email"], r["first_opened_at"] is not None) for r in mine["to"]] == [(NEW_RECIPIENT, True)]
        status, log, _ = await alice.call("GET", f"/messages/{message_id}/disclosures")
        actions = [d["action"] for d in log["disclosures"] if d["user_id"] != str(sender["id"])]
        assert actions == ["open"] + ["download"] * 6

        # A stranger signed in through the gateway gets 404 for the message and its files.
        async with stack.auth_app[POOL].acquire() as conn:
            other = await auth_store.create_user(
                conn, email="colleague@example.com", practice_id=practice_id, invited_by_practice=practice_id,
                first_name="Col", last_name="League", phone=None, roles=("member",), two_step_required=False,
                time_zone="America/New_York", now=clock.now())
            await auth_store.set_password(conn, other["id"], await stack.auth_app[HASHER].hash(PASSWORD), clock.now())
            await auth_store.update_user(conn, other["id"], {"status": "verified", "registered_at": clock.now(),
                                                             "terms_version": "2026-01"}, clock.now())
        eve = Browser(stack.gateway)
        try:
            status, _, _ = await eve.call("POST", "/session", json={"email": "colleague@example.com", "password": PASSWORD})
            assert status == 200
            assert (await eve.call("GET", f"/messages/{message_id}"))[0] == 404
            for att in opened["attachments"]:
                assert (await eve.call("GET", f"/messages/{message_id}/attachments/{att['id']}"))[0] == 404
            assert (await eve.call("GET", f"/messages/{uuid.uuid4()}"))[0] == 404
            # An unpaid user cannot start a message.
            writer = MultipartWriter("form-data")
            part = writer.append(json.dumps({"to": ["x@example.org"], "subject": "s"}), {hdrs.CONTENT_TYPE: "application/json"})
            part.set_content_disposition("form-data", name="message")
            status, refused, _ = await eve.call("POST", "/messages", data=writer)
            assert status == 403 and refused["error"] == "securemail_required"
        finally:
            await eve.close()
    finally:
        await alice.close()
        await bob.close()


# ---- a new message to someone still waiting to register ------------------------------------------

async def _paid_sender(stack: Stack, clock: ManualClock, email: str,
                       roles: tuple[str, ...] = ("member", "user_manager")) -> tuple[dict, uuid.UUID]:
    """A practice and its paid sender (by default also its User Manager): (user row, practice id)."""
    async with stack.auth_app[POOL].acquire() as conn:
        practice = await auth_store.create_practice(conn, name="Bright Smiles Dental", address="1 Main St",
                                                    phone="+12025550100", identifiers={}, now=clock.now())
        sender = await auth_store.create_user(
            conn, email=email, practice_id=practice["id"], invited_by_practice=practice["id"],
            first_name="Dana", last_name="Sender", phone="+12025550123", roles=roles,
            two_step_required=False, time_zone="America/New_York", now=clock.now())
        await auth_store.set_password(conn, sender["id"], await stack.auth_app[HASHER].hash(PASSWORD), clock.now())
        await auth_store.update_user(conn, sender["id"], {"status": "verified", "registered_at": clock.now(),
                                                          "terms_version": "2026-01"}, clock.now())
    bus = Bus(stack.amqp_url, stack.exchange, service="billing-test")
    await bus.connect()
    await bus.publish(make_envelope(SecureMailGranted(user_id=sender["id"], paid_by=sender["id"])))
    await bus.close()
    await eventually(lambda: stack.mail_app[POOL].fetchval(
        "SELECT count(*) FROM securemail_accounts WHERE user_id = $1", sender["id"]), what="grant")
    return dict(sender), practice["id"]


async def _send(browser: Browser, to: str, subject: str, phones: dict | None = None) -> str:
    fields: dict = {"to": [to], "subject": subject, "body": "Please read."}
    if phones:
        fields["recipient_phones"] = {to: phones}
    writer = MultipartWriter("form-data")
    part = writer.append(json.dumps(fields), {hdrs.CONTENT_TYPE: "application/json"})
    part.set_content_disposition("form-data", name="message")
    status, sent, _ = await browser.call("POST", "/messages", data=writer)
    assert status == 201, sent
    return sent["id"]


INVITES = "Bright Smiles Dental invites you to SecurePractice"
WAITING = "New secure message from Bright Smiles Dental"


def _invitations(stack: Stack, address: str) -> list[str]:
    return [token_link(m, "register") for m in stack.mails()
            if str(m["To"]).lower() == address and m["Subject"] == INVITES]


async def test_a_corrected_address_gets_a_working_link_with_the_next_message(stack: Stack, clock: ManualClock) -> None:
    """The help page (Manage Users → Edit): correct the address the message went to, SAVE,
    "then ... send them a new message to the current email address for the account"."""
    await _paid_sender(stack, clock, "dr.sender@example.com")
    alice = stack.browser()
    status, body, _ = await alice.login("dr.sender@example.com", PASSWORD)
    assert status == 200, body

    # The first message goes to a mistyped address: its invitation lands there.
    wrong, right, phone = "ana.lopez@exmaple.org", "ana.lopez@example.org", "+12025550178"
    first_id = await _send(alice, wrong, "Ana Lopez tooth 14", {"phone": phone})
    old_link = token_link(await stack.mail_to(wrong, subject=INVITES), "register")

    # The User Manager corrects it in Manage Users and saves: the link sent to the wrong address dies.
    status, listed, _ = await alice.call("GET", "/practice/users")
    ana = next(u for u in listed["users"] if u["email"] == wrong)
    status, saved, _ = await alice.call("PATCH", f"/practice/users/{ana['id']}", json={"email": right})
    assert status == 200 and saved["invitation_revoked"] is True, saved
    anon = stack.browser()
    status, refused, _ = await anon.call("GET", f"/invitations/{old_link}")
    assert status == 404 and refused["error"] == "invitation_invalid"

    # A new message to the current address brings a registration link with it.
    mark = stack.mail_count()
    second_id = await _send(alice, right, "Ana Lopez follow-up")
    invitation = await stack.mail_to(right, after=mark, subject=INVITES)
    waiting = await stack.mail_to(right, after=mark, subject=WAITING)
    assert f"/#/message?id={second_id}" in text_of(waiting)
    new_link = token_link(invitation, "register")
    assert (await anon.call("GET", f"/invitations/{old_link}"))[0] == 404

    # The link works: register (the code goes to the number the sender entered), then read both messages.
    bob = stack.browser()
    status, invite, _ = await bob.call("GET", f"/invitations/{new_link}")
    assert status == 200 and invite["email"] == right and invite["practice_name"] == "Bright Smiles Dental", invite
    status, reg, _ = await bob.call("POST", "/registrations", json={
        "token": new_link, "first_name": "Ana", "last_name": "Lopez", "password": PASSWORD, "phone": phone,
        "terms_version": invite["terms_version"], "accept_terms": True})
    assert status == 201 and reg["user"]["id"] == ana["id"], reg
    sms_before = len(stack.sms())
    status, sent_code, _ = await bob.call("POST", "/verifications", json={"ticket": reg["verification"]["ticket"], "channel": "sms"})
    assert status == 201, sent_code
    code = await stack.code_for(phone, after=sms_before)
    status, checked, _ = await bob.call("POST", f"/verifications/{sent_code['id']}/check", json={"code": code})
    assert status == 200, checked
    status, done, _ = await bob.call("POST", "/registrations/verify", json={"proof": checked["proof"]})
    assert status == 200 and done["restriction"] is None, done
    status, inbox, _ = await bob.call("GET", "/messages?folder=inbox")
    assert status == 200 and sorted(m["id"] for m in inbox["messages"]) == sorted([first_id, second_id])
    assert (await bob.call("GET", f"/messages/{second_id}"))[0] == 200
    # The old link is refused for good, also to register with.
    status, refused, _ = await anon.call("POST", "/registrations", json={
        "token": old_link, "first_name": "Eve", "last_name": "Il", "password": PASSWORD, "phone": phone,
        "terms_version": invite["terms_version"], "accept_terms": True})
    assert status == 404 and refused["error"] == "invitation_invalid"

    # Registered now: a further message only says a message is waiting.
    mark = stack.mail_count()
    third_id = await _send(alice, right, "Ana Lopez results")
    waiting = await stack.mail_to(right, after=mark, subject=WAITING)
    assert f"/#/message?id={third_id}" in text_of(waiting)
    async with stack.auth_app[POOL].acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tokens WHERE user_id = $1 AND kind = 'invitation'",
                                   uuid.UUID(ana["id"])) == 2
    assert len(_invitations(stack, right)) == 1


async def test_an_expired_invitation_is_renewed_by_the_next_message_but_not_flooded(stack: Stack, clock: ManualClock) -> None:
    await _paid_sender(stack, clock, "dr.sender@example.com")
    alice = stack.browser()
    assert (await alice.login("dr.sender@example.com", PASSWORD))[0] == 200
    late = "late@example.org"
    await _send(alice, late, "First")
    expired = token_link(await stack.mail_to(late, subject=INVITES), "register")
    clock.advance(hours=73)  # invitations live 72 hours
    anon = stack.browser()
    assert (await anon.call("GET", f"/invitations/{expired}"))[0] == 404

    assert (await alice.login("dr.sender@example.com", PASSWORD))[0] == 200  # the moved clock ended the session
    mark = stack.mail_count()
    second_id = await _send(alice, late, "Second")
    renewed = token_link(await stack.mail_to(late, after=mark, subject=INVITES), "register")
    assert (await anon.call("GET", f"/invitations/{renewed}"))[0] == 200

    # More messages at once bring no more invitations: the renewed link works and is the only one.
    mark = stack.mail_count()
    last_id = await _send(alice, late, "Third")
    await _send(alice, late, "Fourth")
    await stack.mail_to(late, after=mark, subject=WAITING)
    await eventually(lambda: sum(1 for m in stack.mails()[mark:] if m["Subject"] == WAITING) == 2, what="two notices")
    assert second_id != last_id
    async with stack.auth_app[POOL].acquire() as conn:
        user_id = await conn.fetchval("SELECT id FROM users WHERE email = $1", late)
        assert await conn.fetchval("SELECT count(*) FROM tokens WHERE user_id = $1 AND kind = 'invitation'", user_id) == 2
    assert len(_invitations(stack, late)) == 2
    assert (await anon.call("GET", f"/invitations/{renewed}"))[0] == 200
