"""The dev SMTP server: a real SMTP conversation ends as DIR/mail/<time>-<n>.eml."""
from __future__ import annotations

import itertools
import re
from email.message import EmailMessage

import aiosmtplib
from mail_helpers import read_mails
from msp_mail.devsmtp import DevSmtpServer, write_eml


async def test_each_mail_becomes_one_eml_file(dev_outbox):
    async with DevSmtpServer(dev_outbox, port=0) as server:
        for n in range(3):
            message = EmailMessage()
            message["From"] = "no-reply@securepractice.local"
            message["To"] = f"user{n}@example.com"
            message["Subject"] = f"hello {n}"
            message.set_content("body")
            await aiosmtplib.send(message, hostname="127.0.0.1", port=server.port)
    files = sorted((dev_outbox / "mail").iterdir())
    assert len(files) == 3
    assert all(re.fullmatch(r"\d{8}T\d{6}\.\d{6}Z-\d+\.eml", f.name) for f in files)  # no temp files left
    mails = read_mails(dev_outbox)
    assert sorted(m["X-RcptTo"] for m in mails) == ["user0@example.com", "user1@example.com", "user2@example.com"]
    assert sorted(m["Subject"] for m in mails) == ["hello 0", "hello 1", "hello 2"]


def test_write_eml_never_overwrites_an_existing_file(tmp_path, monkeypatch):
    first = write_eml(tmp_path, b"one", itertools.count(1))
    # Same timestamp, counter restarting at 1 (a second server process on the same folder).
    stamp = first.name.rsplit("-", 1)[0]
    import msp_mail.devsmtp as devsmtp

    class FrozenDatetime:
        @staticmethod
        def now(tz=None):
            from datetime import datetime
            return datetime.strptime(stamp, "%Y%m%dT%H%M%S.%fZ").replace(tzinfo=tz)

    monkeypatch.setattr(devsmtp, "datetime", FrozenDatetime)
    second = write_eml(tmp_path, b"two", itertools.count(1))
    assert second != first
    assert first.read_bytes() == b"one" and second.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, second.name])
