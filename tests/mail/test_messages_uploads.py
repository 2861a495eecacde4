"""The help page's attachment rules on the real upload path: every listed extension accepted
(case-insensitive), everything else refused with 415 naming the file, content that does
not match its name refused, and the 300 MB total enforced while streaming, with nothing of
a refused message left on disk, in the database or in auth-service."""
from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from messages_kit import PDF, Stack, generated
from msp_mail.attachment_rules import ALLOWED_EXTENSIONS, MAX_TOTAL_BYTES

# A valid beginning for every type that has a known signature; text for the others.
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


def sample(ext: str) -> bytes:
    return HEADS.get(ext, b"plain content ") + b"\x01\x02 sample body " * 20


async def nothing_left(stack: Stack) -> None:
    assert await stack.counts() == {"messages": 0, "message_recipients": 0, "attachments": 0}
    folder = Path(stack.settings.attachment_dir)
    assert not folder.exists() or list(folder.iterdir()) == []  # no blob, no half-written .part
    assert [m for m in await stack.emails() if m["template"] == "message_waiting"] == []


async def test_every_listed_extension_is_accepted(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    exts = sorted(ALLOWED_EXTENSIONS)
    # Case-insensitive: every other name in capitals.
    files = [(f"file{i}.{ext.upper() if i % 2 else ext}", sample(ext)) for i, ext in enumerate(exts)]
    sent = await stack.send(sender, [reader.email], files)
    assert sent.status == 201, sent.body
    assert len(sent.body["attachments"]) == len(exts) == 66  # the page lists 67, ".text" twice
    for att, (_name, data) in zip(sent.body["attachments"], files):
        got = await stack.download(reader, sent.body["id"], att["id"])
        assert got.raw == data


@pytest.mark.parametrize(
    ("name", "data", "code"),
    [
        ("setup.exe", b"MZ\x90\x00" + b"\x00" * 100, "file_type_refused"),
        ("app.js", b"alert(1)", "file_type_refused"),
        ("page.html", b"<html><script>alert(1)</script>", "file_type_refused"),
        ("logo.svg", b"<svg onload=alert(1)>", "file_type_refused"),
        ("README", b"no extension", "file_type_refused"),
        ("x.pdf.exe", b"MZ\x90\x00", "file_type_refused"),
        (".pdf", b"%PDF-1.4", "file_type_refused"),
        ("invoice.pdf", b"MZ\x90\x00" + b"\x00" * 100, "executable_content"),
        ("photo.jpg", b"GIF89a not a jpeg", "content_mismatch"),
        ("script.txt", b"#!/bin/sh\nrm -rf /", "executable_content"),
    ],
)
async def test_refused_files_are_named_and_leave_nothing(stack: Stack, name: str, data: bytes, code: str) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    # A good file first: it is stored before the bad one arrives, and must be removed too.
    refused = await stack.send(sender, ["brand.new@example.org"], [("good.pdf", PDF), (name, data)])
    assert refused.status == 415, refused.body
    assert refused.body["error"] == code
    shown = name.strip(" .") or "attachment"
    assert refused.body["details"]["file"] == shown
    assert shown in refused.body["message"]
    await nothing_left(stack)
    # The recipient was not invited: nothing was sent.
    assert await stack.auth_pool.fetchval("SELECT count(*) FROM users WHERE email = 'brand.new@example.org'") == 0


async def test_300_mb_exactly_passes_and_one_byte_more_is_refused(stack: Stack) -> None:
    sender = await stack.user("s@example.com", await stack.practice("S"), paid=True)
    reader = await stack.user("r@example.com", await stack.practice("R"))
    first = 100 * 1024 * 1024
    second = MAX_TOTAL_BYTES - first

    refused = await stack.send(sender, ["brand.new@example.org", reader.email], [
        ("scan.pdf", generated(first, b"%PDF-1.7\n")),
        ("video.mp4", generated(second + 1, b"\x00\x00\x00\x18ftypmp42")),
    ])
    assert refused.status == 413, refused.body
    assert refused.body["error"] == "attachments_too_large"
    assert refused.body["details"]["file"] == "video.mp4"
    await nothing_left(stack)
    assert await stack.auth_pool.fetchval("SELECT count(*) FROM users WHERE email = 'brand.new@example.org'") == 0

    exact = await stack.send(sender, [reader.email], [
        ("scan.pdf", generated(first, b"%PDF-1.7\n")),
        ("video.mp4", generated(second, b"\x00\x00\x00\x18ftypmp42")),
    ])
    assert exact.status == 201, exact.body
    sizes = [a["size"] for a in exact.body["attachments"]]
    assert sizes == [first, second] and sum(sizes) == MAX_TOTAL_BYTES
    # The last byte of the second file, read back by range through decryption.
    expected = hashlib.sha256(b"\x5a").hexdigest()
    tail = await stack.download(reader, exact.body["id"], exact.body["attachments"][1]["id"], headers={"Range": "bytes=-1"})
    assert tail.status == 206 and hashlib.sha256(tail.raw).hexdigest() == expected
