"""Secure messages through mail-service's API (signed gateway identities), with the real
auth-service answering /internal/recipients: compose with attachments, notifications
without PHI, reading, downloads, read receipts, who may send, and who may see."""
from __future__ import annotations

import hashlib
import uuid

from messages_kit import DICOM, DOCX, PDF, PNG, TXT, Stack, message_id_from_link

FILES = [("x-ray.png", PNG), ("referral.pdf", PDF), ("notes.txt", TXT), ("report.docx", DOCX), ("ct.dcm", DICOM)]


async def test_send_read_download_and_receipt(stack: Stack) -> None:
    practice = await stack.practice("Bright Smiles Dental")
    sender = await stack.user("dr.sender@example.com", practice, paid=True)
    known = await stack.user("dr.known@other.example", await stack.practice("Other Ortho"))

    sent = await stack.send(sender, ["new.patient@example.org", known.email], FILES,
                            subject="Ana Lopez tooth 14", body="Secret clinical details")
    assert sent.status == 201, sent.body
    message = sent.body
    assert [a["filename"] for a in message["attachments"]] == [name for name, _ in FILES]
    assert message["attachments"][0]["content_type"] == "image/png"

    # The new address was invited by auth-service (an account now exists, status invited).
    invited = await stack.auth_pool.fetchrow("SELECT id, status, invited_by_practice FROM users WHERE email = $1",
                                             "new.patient@example.org")
    assert invited["status"] == "invited" and str(invited["invited_by_practice"]) == practice
    auth_mails = await stack.emails(stack.auth_pool)
    assert [m["template"] for m in auth_mails if m["to"] == "new.patient@example.org"] == ["invitation"]

    # Notifications: only "a secure message is waiting, from <practice>, link".
    notes = [m for m in await stack.emails() if m["template"] == "message_waiting"]
    assert sorted(m["to"] for m in notes) == sorted(["new.patient@example.org", known.email])
    for note in notes:
        assert note["params"] == {"practice_name": "Bright Smiles Dental"}
        assert message_id_from_link(note["link"]) == message["id"]
        flat = repr(note)
        for secret in ("Ana Lopez", "tooth 14", "Secret clinical", "x-ray", "referral.pdf", "ct.dcm"):
            assert secret not in flat

    # Nobody has opened it: no receipt yet.
    before = await stack.call("GET", f"/messages/{message['id']}", sender)
    assert all(r["first_opened_at"] is None for r in before.body["to"])

    inbox = await stack.call("GET", "/messages?folder=inbox", known)
    assert [m["id"] for m in inbox.body["messages"]] == [message["id"]]
    assert inbox.body["messages"][0]["read"] is False

    opened = await stack.call("GET", f"/messages/{message['id']}", known)
    assert opened.status == 200
    assert opened.body["body"] == "Secret clinical details"
    assert opened.body["from"]["practice_name"] == "Bright Smiles Dental"
    assert "first_opened_at" not in opened.body["to"][0]  # receipts are the sender's

    for att, (name, data) in zip(opened.body["attachments"], FILES):
        got = await stack.download(known, message["id"], att["id"])
        assert got.status == 200
        assert hashlib.sha256(got.raw).hexdigest() == hashlib.sha256(data).hexdigest()
        assert got.headers["X-Content-Type-Options"] == "nosniff"
        assert got.headers["Content-Disposition"].startswith("attachment;")
        assert f"filename*=UTF-8''{name}" in got.headers["Content-Disposition"]

    receipts = await stack.call("GET", f"/messages/{message['id']}", sender)
    by_email = {r["email"]: r["first_opened_at"] for r in receipts.body["to"]}
    assert by_email[known.email] is not None
    assert by_email["new.patient@example.org"] is None
    sent_folder = await stack.call("GET", "/messages?folder=sent", sender)
    assert {r["email"]: r["first_opened_at"] is not None for r in sent_folder.body["messages"][0]["to"]} == {
        known.email: True, "new.patient@example.org": False}


async def test_range_requests_and_headers(stack: Stack) -> None:
    sender = await stack.user("a@example.com", await stack.practice("P1"), paid=True)
    reader = await stack.user("b@example.com", await stack.practice("P2"))
    video = b"\x00\x00\x00\x18ftypmp42" + bytes(range(256)) * 2000
    sent = await stack.send(sender, [reader.email], [('clip "1".MP4', video)])
    mid, aid = sent.body["id"], sent.body["attachments"][0]["id"]
    assert sent.body["attachments"][0]["filename"] == "clip _1_.MP4"

    part = await stack.download(reader, mid, aid, headers={"Range": "bytes=100000-300000"})
    assert part.status == 206
    assert part.raw == video[100000:300001]
    assert part.headers["Content-Range"] == f"bytes 100000-300000/{len(video)}"
    assert part.headers["Content-Type"] == "video/mp4"
    assert part.headers["Accept-Ranges"] == "bytes"

    tail = await stack.download(reader, mid, aid, headers={"Range": "bytes=-10"})
    assert tail.status == 206 and tail.raw == video[-10:]
    beyond = await stack.download(reader, mid, aid, headers={"Range": f"bytes={len(video)}-"})
    assert beyond.status == 416 and beyond.headers["Content-Range"] == f"bytes */{len(video)}"

    log = await stack.call("GET", f"/messages/{mid}/disclosures", sender)
    ranges = [d["byte_range"] for d in log.body["disclosures"] if d["action"] == "download"]
    assert "100000-300000" in ranges


async def test_strangers_get_404_for_message_and_attachments(stack: Stack) -> None:
    home = await stack.practice("Home Dental")
    sender = await stack.user("s@home.example", home, paid=True)
    recipient = await stack.user("r@away.example", await stack.practice("Away Ortho"))
    colleague = await stack.user("colleague@home.example", home, paid=True)  # same practice, not a participant
    outsider = await stack.user("x@elsewhere.example", await stack.practice("Elsewhere"), paid=True)
    support = await stack.user("help@support.example", None, roles=("support",))
    sent = await stack.send(sender, [recipient.email], FILES[:2])
    mid = sent.body["id"]

    for who in (colleague, outsider, support):
        assert (await stack.call("GET", f"/messages/{mid}", who)).status == 404
        for att in sent.body["attachments"]:
            got = await stack.download(who, mid, att["id"])
            assert got.status == 404 and PDF[:20] not in got.raw
        assert (await stack.reply(who, mid)).status == 404
        assert (await stack.call("GET", "/messages?folder=inbox", who)).body["messages"] == []
        assert (await stack.call("PATCH", f"/messages/{mid}", who, json_body={"read": True})).status == 404
        assert (await stack.call("POST", f"/messages/{mid}/recall", who)).status == 404
        assert (await stack.call("GET", f"/messages/{mid}/disclosures", who)).status == 404 or who is support

    # Guessed ids: another message's attachment id under this message, random ids, garbage.
    other = await stack.send(colleague, [outsider.email], FILES[:1])
    assert (await stack.download(recipient, mid, other.body["attachments"][0]["id"])).status == 404
    assert (await stack.call("GET", f"/messages/{uuid.uuid4()}", recipient)).status == 404
    assert (await stack.download(recipient, mid, str(uuid.uuid4()))).status == 404
    assert (await stack.call("GET", "/messages/1", recipient)).status == 404

    # A forged or missing identity header never gets in.
    anonymous = await stack.call("GET", f"/messages/{mid}", None)
    assert anonymous.status == 401
    async with stack.mail_client.get(f"/messages/{mid}", headers={"X-MSP-Identity": "forged.sig"}) as resp:
        assert resp.status == 401

    # The participants still can.
    assert (await stack.call("GET", f"/messages/{mid}", recipient)).status == 200
    assert (await stack.download(recipient, mid, sent.body["attachments"][1]["id"])).raw == PDF


async def test_unpaid_user_can_reply_but_not_start(stack: Stack) -> None:
    paid = await stack.user("paid@example.com", await stack.practice("Paid Practice"), paid=True)
    unpaid = await stack.user("unpaid@example.com", await stack.practice("Unpaid Practice"))

    refused = await stack.send(unpaid, [paid.email], [("x.pdf", PDF)])
    assert refused.status == 403
    assert refused.body["error"] == "securemail_required"
    assert "reply" in refused.body["message"]
    assert await stack.counts() == {"messages": 0, "message_recipients": 0, "attachments": 0}

    first = await stack.send(paid, [unpaid.email], subject="Hello")
    stack.clock.advance(minutes=2)
    answer = await stack.reply(unpaid, first.body["id"], "Thanks!", [("reply.pdf", PDF)])
    assert answer.status == 201, answer.body
    assert answer.body["thread_id"] == first.body["id"]
    assert answer.body["subject"] == "Re: Hello"
    assert [r["email"] for r in answer.body["to"]] == [paid.email]
    inbox = await stack.call("GET", "/messages?folder=inbox", paid)
    assert [m["id"] for m in inbox.body["messages"]] == [answer.body["id"]]
    thread = await stack.call("GET", f"/messages/{answer.body['id']}", paid)
    assert [m["id"] for m in thread.body["thread"]] == [first.body["id"], answer.body["id"]]
    assert (await stack.download(paid, answer.body["id"], answer.body["attachments"][0]["id"])).raw == PDF


async def test_read_unread_delete_and_recall(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    one = await stack.user("one@example.com", await stack.practice("One"))
    two = await stack.user("two@example.com", await stack.practice("Two"))
    m = (await stack.send(sender, [one.email, two.email], [("a.pdf", PDF)])).body

    await stack.call("GET", f"/messages/{m['id']}", one)
    marked = await stack.call("PATCH", f"/messages/{m['id']}", one, json_body={"read": False})
    assert marked.status == 200 and marked.body["read"] is False
    assert (await stack.call("GET", "/messages?folder=inbox", one)).body["messages"][0]["read"] is False
    assert (await stack.call("PATCH", f"/messages/{m['id']}", sender, json_body={"read": True})).status == 403

    # Opened by one: no recall any more.
    refused = await stack.call("POST", f"/messages/{m['id']}/recall", sender)
    assert refused.status == 409 and refused.body["error"] == "already_opened"

    # One removes it from their Inbox: gone for them, still there for the others.
    assert (await stack.call("DELETE", f"/messages/{m['id']}", one)).status == 204
    assert (await stack.call("GET", f"/messages/{m['id']}", one)).status == 404
    assert (await stack.call("GET", "/messages?folder=inbox", one)).body["messages"] == []
    assert (await stack.call("GET", f"/messages/{m['id']}", two)).status == 200

    # An unopened message can be recalled: gone for everyone, files deleted.
    fresh = (await stack.send(sender, [two.email], [("b.pdf", PDF)])).body
    path = _blob_path(stack, fresh["attachments"][0]["id"])
    assert path.exists()
    recalled = await stack.call("POST", f"/messages/{fresh['id']}/recall", sender)
    assert recalled.status == 200
    assert (await stack.call("GET", f"/messages/{fresh['id']}", two)).status == 404
    assert (await stack.call("GET", f"/messages/{fresh['id']}", sender)).status == 404
    assert not path.exists()
    assert await stack.pool.fetchval("SELECT count(*) FROM attachments WHERE message_id = $1", uuid.UUID(fresh["id"])) == 0


def _blob_path(stack: Stack, attachment_id: str):  # noqa: ANN202
    from pathlib import Path

    return Path(stack.settings.attachment_dir) / attachment_id


async def test_tampered_file_is_refused_on_download(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    big = b"%PDF-1.4\n" + bytes(range(256)) * 1024  # several encrypted chunks
    m = (await stack.send(sender, [reader.email], [("small.pdf", PDF), ("big.pdf", big)])).body
    small_id, big_id = m["attachments"][0]["id"], m["attachments"][1]["id"]

    for att_id, offset in ((small_id, 40), (big_id, 200_000)):
        path = _blob_path(stack, att_id)
        data = bytearray(path.read_bytes())
        data[offset] ^= 0x01
        path.write_bytes(bytes(data))

    refused = await stack.download(reader, m["id"], small_id)
    assert refused.status == 422 and refused.body["error"] == "attachment_damaged"
    assert PDF[:50] not in refused.raw

    # Damage deep inside a big file: the first chunks may have left, but the answer is cut
    # off before the damaged chunk, so the client never gets a "complete" file.
    import aiohttp

    try:
        got = await stack.download(reader, m["id"], big_id)
    except aiohttp.ClientPayloadError:
        pass
    else:
        assert got.raw != big and len(got.raw) < len(big)


async def test_billing_grant_event_lets_a_user_start_messages(stack: Stack, amqp_url: str, exchange_name: str) -> None:
    from mail_helpers import eventually
    from msp_shared.bus import Bus
    from msp_shared.events import SecureMailGranted, SecureMailRevoked, make_envelope

    user = await stack.user("late@example.com", await stack.practice("Late Practice"))
    other = await stack.user("other@example.com", await stack.practice("Other"))
    assert (await stack.send(user, [other.email])).status == 403

    bus = Bus(amqp_url, exchange_name, service="billing-test")
    await bus.connect()
    try:
        grant = make_envelope(SecureMailGranted(user_id=uuid.UUID(user.id), paid_by=uuid.UUID(user.id)))
        await bus.publish(grant)
        await bus.publish(grant)  # delivered twice: one effect
        await eventually(lambda: stack.pool.fetchval("SELECT count(*) FROM securemail_accounts WHERE user_id = $1",
                                                     uuid.UUID(user.id)))
        assert (await stack.send(user, [other.email])).status == 201

        await bus.publish(make_envelope(SecureMailRevoked(user_id=uuid.UUID(user.id))))

        async def revoked() -> bool:
            return not await stack.pool.fetchval("SELECT count(*) FROM securemail_accounts WHERE user_id = $1",
                                                 uuid.UUID(user.id))
        await eventually(revoked)
        assert (await stack.send(user, [other.email])).status == 403
    finally:
        await bus.close()


async def test_inbox_pages_with_a_keyset_cursor(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    ids = []
    for i in range(7):
        stack.clock.advance(seconds=1)
        ids.append((await stack.send(sender, [reader.email], subject=f"m{i}")).body["id"])
    seen, cursor = [], None
    while True:
        page = await stack.call("GET", f"/messages?folder=inbox&limit=3{'&cursor=' + cursor if cursor else ''}", reader)
        seen += [m["id"] for m in page.body["messages"]]
        cursor = page.body["next_cursor"]
        if not cursor:
            break
    assert seen == list(reversed(ids))
    sent = await stack.call("GET", "/messages?folder=sent&limit=100", sender)
    assert [m["id"] for m in sent.body["messages"]] == list(reversed(ids))
    assert (await stack.call("GET", "/messages?folder=inbox&cursor=!!", reader)).status == 400
    assert (await stack.call("GET", "/messages?folder=spam", reader)).status == 400


async def test_restricted_sessions_read_nothing(stack: Stack) -> None:
    from msp_shared.identity import Identity

    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    m = (await stack.send(sender, [reader.email], [("a.pdf", PDF)])).body
    for restriction in ("password_expired", "verification_required", "something_new"):
        restricted = Identity(user_id=reader.id, practice_id=reader.practice_id, roles=reader.roles, ip="203.0.113.9",
                              extra={"restriction": restriction})
        got = await stack.call("GET", f"/messages/{m['id']}", restricted)
        assert got.status == 403 and got.body["error"] == restriction
        assert (await stack.download(restricted, m["id"], m["attachments"][0]["id"])).status == 403
        assert (await stack.call("GET", "/cases", restricted)).status == 403
    assert (await stack.call("GET", f"/messages/{m['id']}/disclosures", sender)).body["disclosures"] == []


async def test_the_sender_enters_a_new_recipients_phone_numbers(stack: Stack) -> None:
    """The help page: a User Manager later edits "the phone number or cell phone number you
    entered during the sending of the original message". A bad number is refused before any
    file is stored and before anyone is invited; an existing account keeps its own numbers."""
    practice = await stack.practice("Bright Smiles Dental")
    sender = await stack.user("dr.sender@example.com", practice, paid=True)
    known = await stack.user("dr.known@other.example", await stack.practice("Other Ortho"))

    for phones, field in [({"new.patient@example.org": {"phone": "555"}}, "recipient_phones.new.patient@example.org.phone"),
                          ({"new.patient@example.org": {"phone": "+1 900 222 3333"}},  # premium rate: no codes
                           "recipient_phones.new.patient@example.org.phone"),
                          ({"someone.else@example.org": {"phone": "202-555-0171"}}, "recipient_phones.someone.else@example.org")]:
        refused = await stack.send(sender, ["new.patient@example.org"], [("x.pdf", PDF)], recipient_phones=phones)
        assert refused.status == 400 and list(refused.body["details"]["fields"]) == [field], refused.body
    assert await stack.counts() == {"messages": 0, "message_recipients": 0, "attachments": 0}
    assert await stack.auth_pool.fetchval("SELECT count(*) FROM users WHERE email = 'new.patient@example.org'") == 0

    sent = await stack.send(sender, ["new.patient@example.org", known.email], [("x.pdf", PDF)], recipient_phones={
        "new.patient@example.org": {"phone": "(202) 555-0172", "cell_phone": "202 555 0173"},
        known.email: {"phone": "202-555-0174"}})
    assert sent.status == 201, sent.body
    numbers = {r["email"]: (r["phone"], r["cell_phone"]) for r in await stack.auth_pool.fetch(
        "SELECT email, phone, cell_phone FROM users WHERE email = ANY($1)", ["new.patient@example.org", known.email])}
    assert numbers["new.patient@example.org"] == ("+12025550172", "+12025550173")
    assert numbers[known.email][0] != "+12025550174"  # a sender never changes someone's numbers
