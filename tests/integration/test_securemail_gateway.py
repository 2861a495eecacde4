"""SecureMail and Collaborator through the gateway (issue 4, "What must be shown"), on the
whole stack of stack.py: real PostgreSQL and RabbitMQ, browsers signed in at the gateway
with a session cookie and CSRF token, never a hand-signed identity header.

- the help page's attachment types (every listed extension accepted, others refused with
  415 naming the file) and the 300 MB total (exactly passes, one byte more is 413 with
  nothing left behind: no rows, no blob or half-written file on disk, and with S3 storage
  no object and no unfinished multipart upload), streamed from a generator, never held in
  memory;
- strangers (another practice, the same practice, guessed ids) get 404 for a message and
  each of its files;
- a tampered file on disk is refused on download, not served;
- an unpaid user cannot start a message but can reply, and can start one after billing's
  grant event arrives on the bus;
- Collaborator: referral accepted across practices, a Doctor Talk file downloaded by the
  referrer, a removed participant locked out at once, the 11th acceptance refused;
- expiry: gone for both sides, blob deleted and wrapped key destroyed; the disclosure log
  (JSON and CSV, sender and Support) lists each open and download; HTTP Range (206)."""
from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiobotocore.session import get_session
from aiohttp import MultipartWriter, hdrs, payload
from aiohttp.test_utils import unused_port
from moto.server import ThreadedMotoServer

from msp_auth import store as auth_store
from msp_auth.keys import HASHER
from msp_mail.attachment_rules import ALLOWED_EXTENSIONS, MAX_TOTAL_BYTES
from msp_mail.crypto import CHUNK_SIZE, NONCE_SIZE
from msp_mail.messaging.keys import SWEEPER
from msp_shared.bus import Bus
from msp_shared.clock import ManualClock
from msp_shared.events import EventData, SecureMailGranted, SecureMailRevoked, make_envelope
from msp_shared.web import POOL, SETTINGS

from stack import SUPPORT_EMAIL, SUPPORT_PASSWORD, Browser, Stack, build_stack, eventually, text_of

PASSWORD = "Tulip-Harbor-42!"
PDF = b"%PDF-1.7\n" + b"scan of tooth 14 " * 300
DICOM = b"\x00" * 128 + b"DICM" + bytes(range(256)) * 40
# Three encryption chunks and a bit: tampering can hit the first or a later chunk.
BIG_PDF = b"%PDF-1.7\n" + bytes(i % 251 for i in range(3 * CHUNK_SIZE + 1000))

# A valid beginning for every listed type that has a known signature; text for the others.
HEADS = {
    "pdf": b"%PDF-1.7\n", "ai": b"%PDF-1.5\n", "png": b"\x89PNG\r\n\x1a\n", "gif": b"GIF89a", "jpg": b"\xff\xd8\xff\xe0",
    "jpeg": b"\xff\xd8\xff\xe0", "jpe": b"\xff\xd8\xff\xe0", "bmp": b"BM", "tif": b"II*\x00", "tiff": b"MM\x00*",
    "zip": b"PK\x03\x04", "docx": b"PK\x03\x04", "xlsx": b"PK\x03\x04", "pptx": b"PK\x03\x04",
    "doc": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "xls": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1",
    "ppt": b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", "dcm": b"\x00" * 128 + b"DICM", "mp4": b"\x00\x00\x00\x18ftyp",
    "mov": b"\x00\x00\x00\x14ftyp", "qt": b"\x00\x00\x00\x14moov", "avi": b"RIFF\x00\x00\x00\x00AVI ",
    "wav": b"RIFF\x00\x00\x00\x00WAVE", "aif": b"FORM\x00\x00\x00\x00AIFF", "aiff": b"FORM\x00\x00\x00\x00AIFF",
    "aifc": b"FORM\x00\x00\x00\x00AIFC", "mid": b"MThd", "midi": b"MThd", "mp3": b"ID3\x03",
    "wmv": b"\x30\x26\xb2\x75\x8e\x66\xcf\x11", "mpeg": b"\x00\x00\x01\xba", "mpe": b"\x00\x00\x01\xb3",
    "rtf": b"{\\rtf1", "ps": b"%!PS-Adobe", "eps": b"%!PS-Adobe-3.0 EPSF",
}


# ---- people and requests ---------------------------------------------------------------------

@dataclass
class Person:
    id: str
    email: str
    practice_id: str
    browser: Browser

    async def call(self, method: str, path: str, **kw: Any) -> tuple[int, Any, dict]:
        return await self.browser.call(method, path, **kw)


async def practice(stack: Stack, name: str) -> str:
    async with stack.auth_app[POOL].acquire() as conn:
        row = await auth_store.create_practice(conn, name=name, address="1 Main St", phone="+12025550100",
                                               identifiers={}, now=stack.clock.now())
    return str(row["id"])


async def person(stack: Stack, email: str, practice_id: str, people: list[Person], *, paid: bool = False) -> Person:
    """A registered, verified user of `practice_id`, signed in through the gateway."""
    now = stack.clock.now()
    password_hash = await stack.auth_app[HASHER].hash(PASSWORD)
    async with stack.auth_app[POOL].acquire() as conn:
        row = await auth_store.create_user(
            conn, email=email, practice_id=uuid.UUID(practice_id), invited_by_practice=uuid.UUID(practice_id),
            first_name="Dana", last_name=email.split("@")[0].title(), phone=None, roles=("member",),
            two_step_required=False, time_zone="America/New_York", now=now)
        await auth_store.set_password(conn, row["id"], password_hash, now)
        await auth_store.update_user(conn, row["id"], {"status": "verified", "registered_at": now,
                                                       "terms_version": "2026-01"}, now)
    who = Person(str(row["id"]), email, practice_id, stack.browser())
    people.append(who)
    await sign_in(who)
    if paid:
        await publish(stack, SecureMailGranted(user_id=row["id"], paid_by=row["id"]))
        await eventually(lambda: is_paid(stack, who.id), what="the SecureMail grant")
    return who


async def sign_in(who: Person) -> None:
    status, body, _ = await who.browser.login(who.email, PASSWORD)
    assert status == 200, body


async def publish(stack: Stack, data: EventData) -> None:
    """What billing-service does: the event on the real bus, consumed by mail-service."""
    bus = Bus(stack.amqp_url, stack.exchange, service="billing-test")
    await bus.connect()
    try:
        await bus.publish(make_envelope(data))
    finally:
        await bus.close()


async def is_paid(stack: Stack, user_id: str) -> bool:
    return bool(await stack.mail_app[POOL].fetchval(
        "SELECT count(*) FROM securemail_accounts WHERE user_id = $1", uuid.UUID(user_id)))


def form(fields: dict, files: list[tuple[str, Any]] = ()) -> MultipartWriter:
    """multipart/form-data as the web app sends it: the JSON part "message", then the files
    (bytes, or an async generator streamed as it is produced)."""
    writer = MultipartWriter("form-data")
    part = writer.append(json.dumps(fields), {hdrs.CONTENT_TYPE: "application/json"})
    part.set_content_disposition("form-data", name="message")
    for name, data in files:
        if isinstance(data, bytes):
            part = writer.append(data, {hdrs.CONTENT_TYPE: "application/octet-stream"})
        else:
            part = writer.append_payload(payload.AsyncIterablePayload(data, content_type="application/octet-stream"))
        part.set_content_disposition("form-data", name="file", filename=name)
    return writer


async def send(who: Person, to: list[str], files: list[tuple[str, Any]] = (), **fields: Any) -> tuple[int, Any, dict]:
    body = {"to": to, "subject": "Ana Lopez tooth 14", "body": "Biopsy result attached.", **fields}
    return await who.call("POST", "/messages", data=form(body, list(files)))


async def generated(size: int, head: bytes, piece: int = 1024 * 1024) -> AsyncIterator[bytes]:
    """`size` bytes starting with `head`, then 0x5a, produced piece by piece (never held whole)."""
    first = (head + b"\x5a" * piece)[:piece]
    filler = b"\x5a" * piece
    sent = 0
    while sent < size:
        chunk = (first if sent == 0 else filler)[: size - sent]
        sent += len(chunk)
        yield chunk


def attachment_dir(stack: Stack) -> Path:
    return Path(stack.mail_app[SETTINGS].attachment_dir)


def stored_files(stack: Stack) -> list[str]:
    """Every name in the attachment folder, half-written temporary files included."""
    folder = attachment_dir(stack)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


async def mail_rows(stack: Stack) -> dict[str, int]:
    pool = stack.mail_app[POOL]
    return {t: await pool.fetchval(f"SELECT count(*) FROM {t}")
            for t in ("messages", "message_recipients", "attachments", "blob_deletions")}


async def close_all(people: list[Person]) -> None:
    for who in people:
        await who.browser.close()


# ---- attachment types and the 300 MB total ---------------------------------------------------

REFUSED = [
    ("setup.exe", b"MZ\x90\x00" + b"\x00" * 100),
    ("app.js", b"alert(1)"),
    ("page.html", b"<html><script>alert(1)</script>"),
    ("logo.svg", b"<svg onload=alert(1)>"),
    ("README", b"no extension"),
    ("x.pdf.exe", b"MZ\x90\x00"),
]


async def test_every_listed_type_is_accepted_and_others_are_refused_by_name(stack: Stack) -> None:
    people: list[Person] = []
    try:
        sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright Smiles"), people, paid=True)
        reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral Surgery"), people)

        exts = sorted(ALLOWED_EXTENSIONS)
        assert len(exts) == 66  # the help page lists 67, ".text" twice
        # Case-insensitive: every other name in capitals.
        files = [(f"file{i}.{ext.upper() if i % 2 else ext}", HEADS.get(ext, b"plain ") + b" sample " * 20)
                 for i, ext in enumerate(exts)]
        status, sent, _ = await send(sender, [reader.email], files)
        assert status == 201, sent
        assert [a["filename"] for a in sent["attachments"]] == [name for name, _ in files]
        # Spot-check through the gateway that they come back as sent.
        for att, (_name, data) in list(zip(sent["attachments"], files))[::13]:
            status, got, _ = await reader.call("GET", f"/messages/{sent['id']}/attachments/{att['id']}")
            assert status == 200 and got == data
        # File names are sanitised, and sent back in a safe Content-Disposition.
        odd = [("../../etc/passwd.pdf", "passwd.pdf"), ('Ana "Lopez"\r\n.pdf', "Ana _Lopez_.pdf"),
               ("radiografía.pdf", "radiografía.pdf")]
        status, sent, _ = await send(sender, [reader.email], [(name, PDF) for name, _ in odd])
        assert status == 201, sent
        assert [a["filename"] for a in sent["attachments"]] == [shown for _, shown in odd]
        dispositions = []
        for att in sent["attachments"]:
            status, got, headers = await reader.call("GET", f"/messages/{sent['id']}/attachments/{att['id']}")
            assert status == 200 and got == PDF and headers["X-Content-Type-Options"] == "nosniff"
            assert headers["Content-Type"] == "application/pdf" and "sandbox" in headers["Content-Security-Policy"]
            dispositions.append(headers["Content-Disposition"])
        assert dispositions == [
            "attachment; filename=\"passwd.pdf\"; filename*=UTF-8''passwd.pdf",
            "attachment; filename=\"Ana _Lopez_.pdf\"; filename*=UTF-8''Ana%20_Lopez_.pdf",
            "attachment; filename=\"radiograf_a.pdf\"; filename*=UTF-8''radiograf%C3%ADa.pdf",
        ]
        before = stored_files(stack)
        assert len(before) == 66 + 3

        # Each refused type, after a good file that was already stored: 415 naming the file,
        # and the good file is removed with the refused message.
        for name, data in REFUSED:
            status, refused, _ = await send(sender, ["brand.new@example.org"], [("good.pdf", PDF), (name, data)])
            assert status == 415, (name, refused)
            assert refused["error"] == "file_type_refused", name
            assert refused["details"]["file"] == name
            assert name in refused["message"]
        # An executable renamed to .pdf is refused by its content.
        status, refused, _ = await send(sender, [reader.email], [("invoice.pdf", b"MZ\x90\x00" + b"\x00" * 64)])
        assert status == 415 and refused["error"] == "executable_content" and refused["details"]["file"] == "invoice.pdf"

        assert stored_files(stack) == before
        assert (await mail_rows(stack))["messages"] == 2
        # Nothing was sent, nobody was invited.
        assert await stack.auth_app[POOL].fetchval(
            "SELECT count(*) FROM users WHERE email = 'brand.new@example.org'") == 0
    finally:
        await close_all(people)


async def test_300_mb_exactly_passes_and_one_byte_more_is_refused_leaving_nothing(stack: Stack) -> None:
    people: list[Person] = []
    try:
        sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright Smiles"), people, paid=True)
        reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral Surgery"), people)
        first = 100 * 1024 * 1024
        second = MAX_TOTAL_BYTES - first

        status, refused, _ = await send(sender, ["brand.new@example.org", reader.email], [
            ("scan.pdf", generated(first, b"%PDF-1.7\n")),
            ("video.mp4", generated(second + 1, b"\x00\x00\x00\x18ftypmp42")),
        ])
        assert status == 413, refused
        assert refused["error"] == "attachments_too_large"
        assert refused["details"]["file"] == "video.mp4"
        assert "300 MB" in refused["message"]
        # Nothing left behind: no rows, no blob and no half-written temporary file, no
        # invitation, no notification.
        assert await mail_rows(stack) == {"messages": 0, "message_recipients": 0, "attachments": 0, "blob_deletions": 0}
        assert stored_files(stack) == []
        assert await stack.auth_app[POOL].fetchval(
            "SELECT count(*) FROM users WHERE email = 'brand.new@example.org'") == 0
        assert await stack.mail_app[POOL].fetchval("SELECT count(*) FROM outbox") == 0

        status, exact, _ = await send(sender, [reader.email], [
            ("scan.pdf", generated(first, b"%PDF-1.7\n")),
            ("video.mp4", generated(second, b"\x00\x00\x00\x18ftypmp42")),
        ])
        assert status == 201, exact
        sizes = [a["size"] for a in exact["attachments"]]
        assert sizes == [first, second] and sum(sizes) == MAX_TOTAL_BYTES
        assert len(stored_files(stack)) == 2
        # The ends of the video, read back through the gateway by Range (not 300 MB again).
        video = f"/messages/{exact['id']}/attachments/{exact['attachments'][1]['id']}"
        status, tail, headers = await reader.call("GET", video, headers={"Range": "bytes=-1"})
        assert status == 206 and tail == b"\x5a"
        assert headers["Content-Range"] == f"bytes {second - 1}-{second - 1}/{second}"
        status, head, _ = await reader.call("GET", video, headers={"Range": "bytes=0-11"})
        assert status == 206 and head == b"\x00\x00\x00\x18ftypmp42"
    finally:
        await close_all(people)


@pytest.fixture(scope="module")
def s3_endpoint() -> Iterator[str]:
    """A local S3-compatible server (moto), for the deployment where replicas share storage."""
    port = unused_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    yield f"http://127.0.0.1:{port}"
    server.stop()


async def test_one_byte_over_300_mb_leaves_no_object_or_multipart_upload_in_s3(
        base_env: dict, clock: ManualClock, dev_outbox: Path, tmp_path: Path, s3_endpoint: str) -> None:
    bucket = f"att-{uuid.uuid4().hex[:8]}"
    s3 = {"attachment_storage": "s3", "s3_endpoint_url": s3_endpoint, "s3_bucket": bucket,
          "s3_access_key_id": "test", "s3_secret_access_key": "test"}
    async with get_session().create_client("s3", endpoint_url=s3_endpoint, region_name="us-east-1",
                                           aws_access_key_id="test", aws_secret_access_key="test") as client:
        await client.create_bucket(Bucket=bucket)
        async with build_stack(base_env, clock, dev_outbox, tmp_path, {"mail": s3}) as stack:
            people: list[Person] = []
            try:
                sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright"), people, paid=True)
                reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral"), people)
                status, refused, _ = await send(sender, [reader.email], [
                    ("scan.pdf", PDF), ("video.mp4", generated(MAX_TOTAL_BYTES - len(PDF) + 1, b"\x00\x00\x00\x18ftypmp42"))])
                assert status == 413 and refused["details"]["file"] == "video.mp4", refused
                assert not (await client.list_objects_v2(Bucket=bucket)).get("Contents")
                assert not (await client.list_multipart_uploads(Bucket=bucket)).get("Uploads")
                assert await mail_rows(stack) == {"messages": 0, "message_recipients": 0, "attachments": 0,
                                                  "blob_deletions": 0}
            finally:
                await close_all(people)


# ---- who sees what ----------------------------------------------------------------------------

async def test_strangers_and_guessed_ids_get_404(stack: Stack) -> None:
    people: list[Person] = []
    try:
        home = await practice(stack, "Bright Smiles")
        sender = await person(stack, "dr.sender@bright.example", home, people, paid=True)
        reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral Surgery"), people)
        colleague = await person(stack, "colleague@bright.example", home, people, paid=True)  # same practice
        outsider = await person(stack, "eve@else.example", await practice(stack, "Elsewhere"), people, paid=True)

        status, sent, _ = await send(sender, [reader.email], [("scan.pdf", PDF), ("ct.dcm", DICOM)])
        assert status == 201, sent
        message = f"/messages/{sent['id']}"
        files = [f"{message}/attachments/{a['id']}" for a in sent["attachments"]]
        status, other, _ = await send(outsider, [colleague.email], [("own.pdf", PDF)])
        assert status == 201

        for stranger in (colleague, outsider):
            assert (await stranger.call("GET", message))[0] == 404
            for path in files:
                status, body, _ = await stranger.call("GET", path)
                assert status == 404 and body["error"] == "message_not_found", body
                assert (await stranger.call("GET", path, headers={"Range": "bytes=0-9"}))[0] == 404
            assert (await stranger.call("GET", f"{message}/disclosures"))[0] == 404
            assert (await stranger.call("POST", f"{message}/replies", json={"body": "let me in"}))[0] == 404
            assert (await stranger.call("PATCH", message, json={"read": True}))[0] == 404
            assert (await stranger.call("DELETE", message))[0] == 404
            status, inbox, _ = await stranger.call("GET", "/messages?folder=inbox")
            assert sent["id"] not in [m["id"] for m in inbox["messages"]]

        # Guessed ids, also by the message's own recipient: a random message, a random file of
        # a real message, a real file under another message, and ids that are not ids at all.
        for who in (reader, outsider):
            assert (await who.call("GET", f"/messages/{uuid.uuid4()}"))[0] == 404
            assert (await who.call("GET", f"/messages/{uuid.uuid4()}/attachments/{sent['attachments'][0]['id']}"))[0] == 404
            assert (await who.call("GET", f"{message}/attachments/{uuid.uuid4()}"))[0] == 404
            assert (await who.call("GET", f"/messages/{other['id']}/attachments/{sent['attachments'][0]['id']}"))[0] == 404
            assert (await who.call("GET", f"{message}/attachments/{other['attachments'][0]['id']}"))[0] == 404
            assert (await who.call("GET", "/messages/1"))[0] == 404
            assert (await who.call("GET", f"{message}/attachments/..%2F..%2Fetc"))[0] == 404

        # The participants still read it, and no stranger's attempt counts as a disclosure.
        status, got, _ = await reader.call("GET", files[0])
        assert status == 200 and got == PDF
        status, log, _ = await sender.call("GET", f"{message}/disclosures")
        assert status == 200
        assert {d["user_id"] for d in log["disclosures"]} == {reader.id}
    finally:
        await close_all(people)


async def test_tampered_file_on_disk_is_refused_on_download(stack: Stack) -> None:
    people: list[Person] = []
    try:
        sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright Smiles"), people, paid=True)
        reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral Surgery"), people)
        status, sent, _ = await send(sender, [reader.email], [("scan.pdf", BIG_PDF), ("plan.pdf", BIG_PDF)])
        assert status == 201, sent
        first, second = (a["id"] for a in sent["attachments"])
        path = f"/messages/{sent['id']}/attachments/"
        assert (await reader.call("GET", path + first))[1] == BIG_PDF

        # One byte flipped inside the first chunk's ciphertext: refused before anything is sent.
        blob = attachment_dir(stack) / first
        data = bytearray(blob.read_bytes())
        data[NONCE_SIZE + 100] ^= 0x01
        blob.write_bytes(bytes(data))
        for who in (reader, sender):
            status, body, _ = await who.call("GET", path + first)
            assert status == 422 and body["error"] == "attachment_damaged", body
            status, body, _ = await who.call("GET", path + first, headers={"Range": "bytes=0-99"})
            assert status == 422 and body["error"] == "attachment_damaged", body

        # One byte flipped in the last chunk: the first chunks are streamed, then the connection
        # is cut, so the client can never take a truncated or altered file for the real one.
        blob = attachment_dir(stack) / second
        original = blob.read_bytes()
        data = bytearray(original)
        data[-5] ^= 0x01
        blob.write_bytes(bytes(data))
        async with reader.browser.http.get(f"{stack.gateway}/api/v1{path}{second}") as resp:
            assert resp.status == 200
            try:
                got = await resp.read()
            except aiohttp.ClientPayloadError:
                got = None
        assert got is None
        # Put back as it was, the file is served again: the refusal was the integrity check's.
        blob.write_bytes(original)
        assert (await reader.call("GET", path + second))[1] == BIG_PDF
    finally:
        await close_all(people)


# ---- who may send -------------------------------------------------------------------------------

async def test_unpaid_user_replies_but_cannot_start_until_billing_grants(stack: Stack) -> None:
    people: list[Person] = []
    try:
        sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright Smiles"), people, paid=True)
        unpaid = await person(stack, "dr.free@oral.example", await practice(stack, "Oral Surgery"), people)
        status, sent, _ = await send(sender, [unpaid.email], [("scan.pdf", PDF)])
        assert status == 201

        status, refused, _ = await send(unpaid, ["someone.new@example.org"], [("notes.pdf", PDF)])
        assert status == 403 and refused["error"] == "securemail_required", refused
        assert "paid SecureMail" in refused["message"] and "reply" in refused["message"]
        status, refused, _ = await unpaid.call("POST", "/messages", json={"to": [sender.email], "subject": "Hi"})
        assert status == 403 and refused["error"] == "securemail_required"
        assert (await unpaid.call("GET", "/messages/settings"))[1]["securemail"] is False
        assert await stack.auth_app[POOL].fetchval(
            "SELECT count(*) FROM users WHERE email = 'someone.new@example.org'") == 0
        assert stored_files(stack) == [sent["attachments"][0]["id"]]

        # A reply in the thread, with a file, is allowed and reaches the sender.
        status, replied, _ = await unpaid.call("POST", f"/messages/{sent['id']}/replies",
                                               data=form({"body": "Received, thanks."}, [("answer.pdf", PDF)]))
        assert status == 201, replied
        assert replied["thread_id"] == sent["id"] and replied["subject"] == "Re: Ana Lopez tooth 14"
        status, inbox, _ = await sender.call("GET", "/messages?folder=inbox")
        assert [m["id"] for m in inbox["messages"]] == [replied["id"]]
        notice = await stack.mail_to(sender.email, subject="New secure message from Oral Surgery")
        for secret in ("Ana Lopez", "tooth 14", "Received", "answer.pdf"):
            assert secret not in notice.as_string() + text_of(notice)
        status, got, _ = await sender.call(
            "GET", f"/messages/{replied['id']}/attachments/{replied['attachments'][0]['id']}")
        assert status == 200 and got == PDF

        # Billing grants SecureMail (an event on the bus): now they can start a message.
        await publish(stack, SecureMailGranted(user_id=uuid.UUID(unpaid.id), paid_by=uuid.UUID(unpaid.id)))
        await eventually(lambda: is_paid(stack, unpaid.id), what="the SecureMail grant")
        status, started, _ = await send(unpaid, [sender.email], [("notes.pdf", PDF)])
        assert status == 201, started
        assert (await unpaid.call("GET", "/messages/settings"))[1]["securemail"] is True

        # And when billing revokes it, starting is refused again (replying still works).
        await publish(stack, SecureMailRevoked(user_id=uuid.UUID(unpaid.id)))
        await eventually(lambda: _not(is_paid(stack, unpaid.id)), what="the SecureMail revocation")
        assert (await send(unpaid, [sender.email]))[0] == 403
        assert (await unpaid.call("POST", f"/messages/{sent['id']}/replies", json={"body": "Still here."}))[0] == 201
    finally:
        await close_all(people)


async def _not(result: Any) -> bool:
    return not await result


# ---- Collaborator -------------------------------------------------------------------------------

async def refer(owner: Person, doctor_email: str, patient: str = "Ana Lopez") -> tuple[int, Any, dict]:
    return await owner.call("POST", "/cases", json={
        "patient_name": patient, "summary": "Impacted third molar, please evaluate.", "refer_to": doctor_email})


async def test_collaborator_referral_doctor_talk_removal_and_quota(stack: Stack) -> None:
    people: list[Person] = []
    try:
        home = await practice(stack, "Home Dental")
        referrer = await person(stack, "dr.ref@home.example", home, people, paid=True)
        surgeon = await person(stack, "dr.surgeon@oral.example", await practice(stack, "Oral Surgery Group"), people)
        assistant = await person(stack, "assistant@home.example", home, people)
        outsider = await person(stack, "eve@else.example", await practice(stack, "Elsewhere"), people, paid=True)
        mails_before = stack.mail_count()

        status, case, _ = await refer(referrer, surgeon.email)
        assert status == 201, case
        case_path = f"/cases/{case['id']}"
        # The referred doctor is told without PHI.
        note = await stack.mail_to(surgeon.email, after=mails_before, subject="New referral")
        assert "Ana Lopez" not in note.as_string() + text_of(note) and "molar" not in text_of(note)

        assert (await outsider.call("POST", f"{case_path}/accept"))[0] == 404
        status, accepted, _ = await surgeon.call("POST", f"{case_path}/accept")
        assert status == 200 and accepted["status"] == "accepted", accepted

        # The surgeon (another practice) posts a file in Doctor Talk; the referrer downloads it.
        status, post, _ = await surgeon.call("POST", f"{case_path}/files",
                                             data=form({"body": "CBCT attached."}, [("cbct.dcm", DICOM)]))
        assert status == 201, post
        file_path = f"{case_path}/files/{post['files'][0]['id']}"
        status, got, headers = await referrer.call("GET", file_path)
        assert status == 200 and got == DICOM
        assert headers["Content-Type"] == "application/dicom"
        assert headers["Content-Disposition"].startswith("attachment;")
        status, part, _ = await referrer.call("GET", file_path, headers={"Range": "bytes=128-131"})
        assert status == 206 and part == b"DICM"
        status, view, _ = await referrer.call("GET", case_path)
        assert [p["body"] for p in view["posts"]] == ["CBCT attached."]
        status, bad, _ = await surgeon.call("POST", f"{case_path}/files",
                                            data=form({"body": "tool"}, [("tool.exe", b"MZ\x90")]))
        assert status == 415 and bad["details"]["file"] == "tool.exe"

        # Added by the owner, the assistant sees the file; removed, they lose access at once.
        status, _, _ = await referrer.call("POST", f"{case_path}/participants",
                                           json={"email": assistant.email, "role": "member"})
        assert status == 201
        assert (await assistant.call("GET", file_path))[1] == DICOM
        assert (await surgeon.call("DELETE", f"{case_path}/participants/{assistant.id}"))[0] == 403
        assert (await referrer.call("DELETE", f"{case_path}/participants/{assistant.id}"))[0] == 204
        assert (await assistant.call("GET", case_path))[0] == 404
        assert (await assistant.call("GET", file_path))[0] == 404
        assert (await assistant.call("POST", f"{case_path}/posts", json={"body": "still here?"}))[0] == 404
        assert (await assistant.call("POST", f"{case_path}/files",
                                     data=form({"body": "x"}, [("x.pdf", PDF)])))[0] == 404
        assert (await assistant.call("GET", "/cases"))[1]["cases"] == []
        # Strangers and guessed ids.
        assert (await outsider.call("GET", case_path))[0] == 404
        assert (await outsider.call("GET", file_path))[0] == 404
        assert (await referrer.call("GET", f"/cases/{uuid.uuid4()}"))[0] == 404
        assert (await referrer.call("GET", f"{case_path}/files/{uuid.uuid4()}"))[0] == 404

        # The quota: this account includes 10 accepted cases (one is used above).
        more = []
        for i in range(10):
            status, c, _ = await refer(referrer, surgeon.email, patient=f"Patient {i}")
            assert status == 201, c
            more.append(c["id"])
        for case_id in more[:9]:
            status, body, _ = await surgeon.call("POST", f"/cases/{case_id}/accept")
            assert status == 200, body
        status, refused, _ = await surgeon.call("POST", f"/cases/{more[9]}/accept")
        assert status == 422, refused
        assert refused["error"] == "case_quota_reached"
        assert "10 accepted Collaborator cases" in refused["message"] and "Home Dental" in refused["message"]
        assert refused["details"] == {"quota": 10, "accepted": 10}
        assert (await surgeon.call("GET", f"/cases/{more[9]}"))[1]["status"] == "pending"

        # Every notification that reached the SMTP server is free of PHI.
        await stack.mail_to(referrer.email, subject="accepted")
        await stack.mail_to(referrer.email, subject="New activity")
        for mail in stack.mails():
            whole = mail.as_string() + text_of(mail)
            for secret in ("Ana Lopez", "Patient 0", "molar", "CBCT", "cbct.dcm"):
                assert secret not in whole, mail["Subject"]
    finally:
        await close_all(people)


# ---- expiry, the accounting of disclosures, HTTP Range -------------------------------------------

async def test_expiry_disclosure_log_and_ranges(stack: Stack) -> None:
    people: list[Person] = []
    try:
        sender = await person(stack, "dr.sender@bright.example", await practice(stack, "Bright Smiles"), people, paid=True)
        reader = await person(stack, "dr.reader@oral.example", await practice(stack, "Oral Surgery"), people)
        status, sent, _ = await send(sender, [reader.email], [("scan.pdf", BIG_PDF), ("ct.dcm", DICOM)])
        assert status == 201, sent
        message = f"/messages/{sent['id']}"
        scan, ct = (f"{message}/attachments/{a['id']}" for a in sent["attachments"])

        # HTTP Range through the gateway: a span across an encryption chunk boundary, a suffix,
        # an open end, and one outside the file.
        status, got, headers = await reader.call("GET", scan, headers={"Range": f"bytes={CHUNK_SIZE - 5}-{CHUNK_SIZE + 4}"})
        assert status == 206 and got == BIG_PDF[CHUNK_SIZE - 5:CHUNK_SIZE + 5]
        assert headers["Content-Range"] == f"bytes {CHUNK_SIZE - 5}-{CHUNK_SIZE + 4}/{len(BIG_PDF)}"
        assert headers["Accept-Ranges"] == "bytes" and headers["Content-Length"] == "10"
        status, got, _ = await reader.call("GET", scan, headers={"Range": "bytes=-100"})
        assert status == 206 and got == BIG_PDF[-100:]
        status, got, _ = await reader.call("GET", ct, headers={"Range": "bytes=4000-"})
        assert status == 206 and got == DICOM[4000:]
        status, body, headers = await reader.call("GET", ct, headers={"Range": f"bytes={len(DICOM)}-"})
        assert status == 416 and headers["Content-Range"] == f"bytes */{len(DICOM)}"

        # Opens and whole downloads.
        assert (await reader.call("GET", message))[0] == 200
        assert (await reader.call("GET", scan))[1] == BIG_PDF
        assert (await reader.call("GET", ct))[1] == DICOM
        assert (await sender.call("GET", message))[0] == 200

        expected = [
            ("download", reader.id, sent["attachments"][0]["id"], f"{CHUNK_SIZE - 5}-{CHUNK_SIZE + 4}"),
            ("download", reader.id, sent["attachments"][0]["id"], f"{len(BIG_PDF) - 100}-{len(BIG_PDF) - 1}"),
            ("download", reader.id, sent["attachments"][1]["id"], f"4000-{len(DICOM) - 1}"),
            ("open", reader.id, None, None),
            ("download", reader.id, sent["attachments"][0]["id"], None),
            ("download", reader.id, sent["attachments"][1]["id"], None),
            ("open", sender.id, None, None),
        ]

        def rows(entries: list[dict]) -> list[tuple]:
            return [(d["action"], d["user_id"], d["attachment_id"] or None, d["byte_range"] or None) for d in entries]

        status, log, _ = await sender.call("GET", f"{message}/disclosures")
        assert status == 200
        assert rows(log["disclosures"]) == expected
        assert all(d["ip"] == "127.0.0.1" and d["at"] for d in log["disclosures"])
        status, raw, headers = await sender.call("GET", f"{message}/disclosures?format=csv")
        assert status == 200 and headers["Content-Type"].startswith("text/csv")
        assert headers["Content-Disposition"].startswith("attachment;")
        assert rows(list(csv.DictReader(io.StringIO(raw.decode())))) == expected
        # Support sees it too; the recipient does not (it is the sender's log).
        async with stack.browser() as support:
            status, body, _ = await support.login(SUPPORT_EMAIL, SUPPORT_PASSWORD)
            assert status == 200, body
            status, log, _ = await support.call("GET", f"/admin/messages/{sent['id']}/disclosures")
            assert status == 200 and rows(log["disclosures"]) == expected
        assert (await reader.call("GET", f"{message}/disclosures"))[0] == 404
        assert (await reader.call("GET", f"/admin/messages/{sent['id']}/disclosures"))[0] == 403

        pool = stack.mail_app[POOL]
        keys = {r["id"]: r["wrapped_key"] for r in await pool.fetch(
            "SELECT id, wrapped_key FROM attachments WHERE message_id = $1", uuid.UUID(sent["id"]))}
        blobs = [attachment_dir(stack) / str(k) for k in keys]
        assert all(b.exists() for b in blobs)

        # Past its expiry (30 days by default; sessions ended long before: sign in again).
        stack.clock.advance(timedelta(days=30, seconds=1))
        for who in (sender, reader):
            await sign_in(who)
        # Gone for both sides at once, even before the sweeper runs...
        for who in (sender, reader):
            assert (await who.call("GET", message))[0] == 404
            assert (await who.call("GET", scan))[0] == 404
        result = await stack.mail_app[SWEEPER].sweep()
        assert result.expired == 1 and result.blobs_deleted == 2
        # ...and after the sweep: no rows, no wrapped key, no file on disk.
        for who in (sender, reader):
            assert (await who.call("GET", message))[0] == 404
            for path in (scan, ct):
                assert (await who.call("GET", path))[0] == 404
                assert (await who.call("GET", path, headers={"Range": "bytes=0-0"}))[0] == 404
            for folder in ("inbox", "sent"):
                assert (await who.call("GET", f"/messages?folder={folder}"))[1]["messages"] == []
        assert await mail_rows(stack) == {"messages": 0, "message_recipients": 0, "attachments": 0, "blob_deletions": 0}
        assert not any(b.exists() for b in blobs)
        assert stored_files(stack) == []
        for wrapped in keys.values():
            assert await pool.fetchval("SELECT count(*) FROM attachments WHERE wrapped_key = $1", wrapped) == 0

        # The accounting of disclosures outlives the message (ids, times, addresses only).
        status, log, _ = await sender.call("GET", f"{message}/disclosures")
        assert status == 200 and rows(log["disclosures"]) == expected
        assert (await reader.call("GET", f"{message}/disclosures"))[0] == 404
    finally:
        await close_all(people)
