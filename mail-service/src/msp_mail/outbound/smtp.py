"""Sending one message to the SMTP relay with aiosmtplib, and telling transient failures
(try again later) from permanent ones (this mail will never go)."""
from __future__ import annotations

from dataclasses import dataclass
from email.message import EmailMessage

import aiosmtplib

from ..config import MailSettings


@dataclass(frozen=True)
class SmtpFailure:
    permanent: bool
    label: str  # error class and SMTP code: safe to store and log (no server text)


class SmtpTransport:
    def __init__(self, settings: MailSettings) -> None:
        self._settings = settings

    async def send(self, message: EmailMessage, *, sender: str, recipient: str) -> None:
        s = self._settings
        await aiosmtplib.send(
            message,
            sender=sender,
            recipients=[recipient],
            hostname=s.smtp_host,
            port=s.smtp_port,
            username=s.smtp_username.get_secret_value() if s.smtp_username else None,
            password=s.smtp_password.get_secret_value() if s.smtp_password else None,
            # True: STARTTLS is required (the send fails if the relay does not offer it);
            # False: plain SMTP, for the local dev server only.
            start_tls=s.smtp_starttls,
            validate_certs=s.smtp_validate_certs,
            cert_bundle=s.smtp_ca_file,
            timeout=s.smtp_timeout_seconds,
        )


def classify(exc: BaseException) -> SmtpFailure:
    """5xx about the recipient or the message is permanent; everything else is transient.

    Failures that are about our own set-up (credentials refused, sender refused, STARTTLS
    not offered) are transient on purpose: an operator fixes the configuration and the
    queued mail then goes out, instead of every mail of the outage being thrown away."""
    name = type(exc).__name__
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        codes = [r.code for r in exc.recipients]
        permanent = bool(codes) and all(500 <= c < 600 for c in codes)
        return SmtpFailure(permanent, f"{name}:{','.join(map(str, codes))}")
    if isinstance(exc, (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPSenderRefused)):
        return SmtpFailure(False, f"{name}:{exc.code}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return SmtpFailure(500 <= exc.code < 600, f"{name}:{exc.code}")
    # Connection refused or reset, timeouts, TLS errors, a relay that hung up: try later.
    return SmtpFailure(False, name)
