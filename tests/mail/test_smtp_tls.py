"""The production path: STARTTLS (certificate verified) and SMTP AUTH, against a real
aiosmtpd relay that refuses AUTH and mail without TLS."""
from __future__ import annotations

import asyncio
import datetime as dt
import ipaddress
import ssl

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from mail_helpers import eventually
from msp_mail.config import MailSettings
from msp_mail.outbound import store
from msp_shared.mailer import request_email
from msp_shared.web import POOL
from pydantic import ValidationError


def self_signed(tmp_path):
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "relay.test")])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "relay.pem", tmp_path / "relay.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class TlsRelay:
    def __init__(self, port, cert_path, key_path):
        self.port = port
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.context.load_cert_chain(cert_path, key_path)
        self.logins: list[tuple[bytes, bool]] = []
        self.received: list[tuple[list[str], bool]] = []

    def authenticator(self, server, session, envelope, mechanism, auth_data):
        assert isinstance(auth_data, LoginPassword)
        ok = auth_data.login == b"relay-user" and auth_data.password == b"relay-pass"
        self.logins.append((auth_data.login, session.ssl is not None))
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself

    async def handle_DATA(self, server, session, envelope):
        self.received.append((list(envelope.rcpt_tos), session.ssl is not None))
        return "250 OK"

    async def __aenter__(self):
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: SMTP(self, hostname="relay.test", tls_context=self.context, require_starttls=True,
                         auth_required=True, auth_require_tls=True, authenticator=self.authenticator, loop=loop),
            "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc):
        self._server.close()
        await self._server.wait_closed()


async def request(producer, to):
    async with producer.pool.acquire() as conn, conn.transaction():
        return await request_email(conn, producer.sealer, template="password_reset", to=to,
                                   secrets={"link": "https://portal.example.test/r?t=1"}, requested_by="producer")


async def test_mail_goes_over_starttls_with_auth(producer, start_mail, smtp_port, tmp_path):
    cert, key = self_signed(tmp_path)
    async with TlsRelay(smtp_port, cert, key) as relay, start_mail(
        smtp_starttls=True, smtp_ca_file=str(cert), smtp_username="relay-user", smtp_password="relay-pass",
    ) as app:
        envelope = await request(producer, "tls@example.com")
        await eventually(lambda: _status(app[POOL], envelope.id, "sent"))
    assert relay.logins == [(b"relay-user", True)]  # credentials only ever inside TLS
    assert relay.received == [(["tls@example.com"], True)]


async def test_refused_credentials_keep_the_mail_for_later(producer, start_mail, smtp_port, tmp_path):
    cert, key = self_signed(tmp_path)
    async with TlsRelay(smtp_port, cert, key) as relay, start_mail(
        smtp_starttls=True, smtp_ca_file=str(cert), smtp_username="relay-user", smtp_password="wrong",
    ) as app:
        envelope = await request(producer, "tls@example.com")
        row = await eventually(lambda: _status(app[POOL], envelope.id, "pending", attempted=True))
        assert row["last_error"] == "SMTPAuthenticationError:535"
    assert relay.received == []


async def test_an_unverifiable_certificate_is_not_trusted(producer, start_mail, smtp_port, tmp_path):
    cert, key = self_signed(tmp_path)
    async with TlsRelay(smtp_port, cert, key) as relay, start_mail(
        smtp_starttls=True, smtp_username="relay-user", smtp_password="relay-pass",  # system CAs only
    ) as app:
        envelope = await request(producer, "tls@example.com")
        row = await eventually(lambda: _status(app[POOL], envelope.id, "pending", attempted=True))
        assert row["last_error"]
    assert relay.logins == [] and relay.received == []


def test_credentials_without_starttls_are_refused(base_env):
    with pytest.raises(ValidationError):
        MailSettings(**base_env, smtp_username="relay-user", smtp_password="relay-pass")


async def _status(pool, mail_id, status, attempted=False):
    row = await store.get(pool, mail_id)
    if row is None or row["status"] != status:
        return None
    if attempted and not (row["last_error"] and row["locked_until"] is None):
        return None
    return row
