"""Expiry, the expiry digest and the accounting of disclosures, against the ManualClock."""
from __future__ import annotations

import csv
import io
import uuid
from datetime import timedelta
from pathlib import Path

from messages_kit import PDF, PNG, Stack
from msp_mail.attachments import StoredAttachment, read_decrypted
from msp_mail.blobstore import DiskBlobStore
from msp_mail.crypto import MasterKeys


async def test_expired_message_is_gone_for_everyone_with_its_files_and_keys(stack: Stack, tmp_path: Path) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    m = (await stack.send(sender, [reader.email], [("scan.pdf", PDF), ("x.png", PNG)])).body
    assert m["expires_at"] == (stack.clock.now() + timedelta(days=30)).isoformat()
    att = m["attachments"][0]
    row = await stack.pool.fetchrow("SELECT * FROM attachments WHERE id = $1", uuid.UUID(att["id"]))
    blob_path = Path(stack.settings.attachment_dir) / att["id"]
    copy = tmp_path / "stolen"  # someone copied the encrypted file while it existed
    copy.mkdir()
    (copy / att["id"]).write_bytes(blob_path.read_bytes())

    assert (await stack.call("GET", f"/messages/{m['id']}", reader)).status == 200
    assert (await stack.download(reader, m["id"], att["id"])).raw == PDF

    stack.clock.advance(days=29, hours=23)
    await stack.sweep()
    assert (await stack.call("GET", f"/messages/{m['id']}", reader)).status == 200

    stack.clock.advance(hours=1, seconds=1)
    # Past expiry it is hidden at once, even before the sweeper runs...
    assert (await stack.call("GET", f"/messages/{m['id']}", reader)).status == 404
    result = await stack.sweep()
    assert result.expired == 1 and result.blobs_deleted == 2
    for who in (sender, reader):
        assert (await stack.call("GET", f"/messages/{m['id']}", who)).status == 404
        assert (await stack.download(who, m["id"], att["id"])).status == 404
        for folder in ("inbox", "sent"):
            assert (await stack.call("GET", f"/messages?folder={folder}", who)).body["messages"] == []
    # ...and after the sweep no row, no wrapped key and no file is left.
    assert await stack.counts() == {"messages": 0, "message_recipients": 0, "attachments": 0}
    assert not blob_path.exists()
    assert await stack.pool.fetchval("SELECT count(*) FROM blob_deletions") == 0
    # The copied ciphertext is useless: the only wrapped data key was destroyed with the row,
    # and without it nothing decrypts (shown with the key we saved before: it still worked).
    keys = MasterKeys.parse(stack.settings.attachment_master_keys.get_secret_value())
    saved = StoredAttachment(att["id"], row["size"], row["sha256"], row["wrapped_key"])
    assert b"".join([c async for c in read_decrypted(DiskBlobStore(copy), keys, saved)]) == PDF
    assert await stack.pool.fetchval(
        "SELECT count(*) FROM attachments WHERE wrapped_key = $1", row["wrapped_key"]) == 0

    # The accounting of disclosures outlives the message: the sender still reads it.
    log = await stack.call("GET", f"/messages/{m['id']}/disclosures", sender)
    assert log.status == 200
    assert [(d["action"], d["user_id"]) for d in log.body["disclosures"]] == [
        ("open", reader.id), ("download", reader.id), ("open", reader.id)]


async def test_disclosure_log_lists_each_open_and_download_and_exports_csv(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    support = await stack.user("help@support.example", None, roles=("support",))
    m = (await stack.send(sender, [reader.email], [("scan.pdf", PDF)])).body
    att_id = m["attachments"][0]["id"]

    await stack.call("GET", f"/messages/{m['id']}", reader)
    stack.clock.advance(minutes=5)
    await stack.download(reader, m["id"], att_id)
    await stack.download(reader, m["id"], att_id, headers={"Range": "bytes=0-9"})
    await stack.call("GET", f"/messages/{m['id']}", sender)

    log = (await stack.call("GET", f"/messages/{m['id']}/disclosures", sender)).body["disclosures"]
    assert [(d["action"], d["user_id"], d["attachment_id"], d["byte_range"]) for d in log] == [
        ("open", reader.id, None, None),
        ("download", reader.id, att_id, None),
        ("download", reader.id, att_id, "0-9"),
        ("open", sender.id, None, None),
    ]
    assert all(d["ip"] == "198.51.100.23" for d in log)
    assert log[1]["at"] > log[0]["at"]

    exported = await stack.call("GET", f"/messages/{m['id']}/disclosures?format=csv", sender)
    assert exported.status == 200 and exported.headers["Content-Type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(exported.raw.decode())))
    assert [r["action"] for r in rows] == ["open", "download", "download", "open"]
    assert "scan.pdf" not in exported.raw.decode()  # ids, not content

    # Support reads it through the admin route; the recipient and strangers do not.
    admin = await stack.call("GET", f"/admin/messages/{m['id']}/disclosures", support)
    assert admin.status == 200 and len(admin.body["disclosures"]) == 4
    assert (await stack.call("GET", f"/admin/messages/{m['id']}/disclosures", sender)).status == 403
    assert (await stack.call("GET", f"/messages/{m['id']}/disclosures", reader)).status == 404


async def test_sender_shortens_expiry_and_practice_sets_a_shorter_default(stack: Stack) -> None:
    practice = await stack.practice("S")
    manager = await stack.user("um@example.com", practice, paid=True, roles=("member", "user_manager"))
    sender = await stack.user("s@example.com", practice, paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    now = stack.clock.now()

    assert (await stack.send(sender, [reader.email], expires_in_days=31)).status == 422
    short = (await stack.send(sender, [reader.email], expires_in_days=3)).body
    assert short["expires_at"] == (now + timedelta(days=3)).isoformat()

    # Shorten after sending; never lengthen; only the sender.
    later = (now + timedelta(days=10)).isoformat()
    assert (await stack.call("PATCH", f"/messages/{short['id']}", sender, json_body={"expires_at": later})).status == 422
    assert (await stack.call("PATCH", f"/messages/{short['id']}", reader,
                             json_body={"expires_in_days": 1})).status == 403
    shortened = await stack.call("PATCH", f"/messages/{short['id']}", sender, json_body={"expires_in_days": 1})
    assert shortened.body["expires_at"] == (now + timedelta(days=1)).isoformat()
    gone = await stack.call("PATCH", f"/messages/{short['id']}", sender, json_body={"expires_in_days": 0})
    assert gone.body["expired"] is True
    assert (await stack.call("GET", f"/messages/{short['id']}", reader)).status == 404

    # The practice's default: only its User Manager sets it, at most the service maximum.
    assert (await stack.call("PUT", "/messages/settings", sender, json_body={"default_expiry_days": 7})).status == 403
    assert (await stack.call("PUT", "/messages/settings", manager, json_body={"default_expiry_days": 45})).status == 422
    assert (await stack.call("PUT", "/messages/settings", manager, json_body={"default_expiry_days": 7})).status == 200
    m = (await stack.send(sender, [reader.email])).body
    assert m["expires_at"] == (now + timedelta(days=7)).isoformat()
    assert (await stack.call("GET", "/messages/settings", sender)).body["default_expiry_days"] == 7


async def test_sender_gets_one_digest_before_attachments_expire(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    await stack.send(sender, [reader.email], [("a.pdf", PDF)], subject="Ana Lopez results", expires_in_days=10)
    await stack.send(sender, [reader.email], [("b.pdf", PDF)], expires_in_days=10)
    await stack.send(sender, [reader.email], subject="no files", expires_in_days=10)

    assert (await stack.sweep()).digests == 0
    stack.clock.advance(days=7, seconds=1)
    assert (await stack.sweep()).digests == 1
    assert (await stack.sweep()).digests == 0  # once
    digests = [m for m in await stack.emails() if m["template"] == "generic_notice"]
    assert len(digests) == 1
    assert digests[0]["to"] == sender.email
    assert "2 of your sent secure messages with attachments" in digests[0]["params"]["text"]
    assert "Ana Lopez" not in repr(digests[0]) and "a.pdf" not in repr(digests[0])
    assert digests[0]["params"]["link"].endswith("/#/sent")  # the web app's Sent folder
