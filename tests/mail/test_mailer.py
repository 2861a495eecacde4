"""msp_shared.mailer.request_email: an EmailRequested in the caller's outbox, in the caller's
transaction, with the address and secrets sealed."""
from __future__ import annotations

import json

import pytest
from cryptography.exceptions import InvalidTag
from msp_shared import db
from msp_shared.config import DEV_SEAL_KEY
from msp_shared.events import EmailRequested, Envelope
from msp_shared.mailer import request_email
from msp_shared.seal import Sealer

SEALER = Sealer(DEV_SEAL_KEY)
LINK = "https://portal.example.test/reset?token=very-secret-token"


@pytest.fixture
async def pool(database_url):
    await db.migrate(database_url, "producer", None)
    pool = await db.create_pool(database_url, "producer")
    yield pool
    await pool.close()


async def test_request_is_written_sealed_in_the_callers_transaction(pool):
    async with pool.acquire() as conn, conn.transaction():
        envelope = await request_email(conn, SEALER, template="password_reset", to="jane@example.com",
                                       secrets={"link": LINK}, params={"days_left": "3"}, requested_by="auth")
    row = await pool.fetchrow("SELECT type, envelope::text AS raw FROM outbox WHERE id = $1", envelope.id)
    assert row["type"] == "mail.email.requested"
    assert "jane" not in row["raw"] and "very-secret-token" not in row["raw"]
    stored = Envelope.model_validate(json.loads(row["raw"]))
    data = stored.payload()
    assert isinstance(data, EmailRequested)
    assert data.template == "password_reset" and data.params == {"days_left": "3"} and data.requested_by == "auth"
    assert SEALER.open(data.sealed, context="mail.email.requested") == {"to": "jane@example.com", "link": LINK}
    with pytest.raises(InvalidTag):  # a sealed blob cannot be replayed inside another kind of event
        SEALER.open(data.sealed, context="auth.user.registered")


async def test_nothing_is_requested_when_the_transaction_rolls_back(pool):
    with pytest.raises(RuntimeError):
        async with pool.acquire() as conn, conn.transaction():
            await request_email(conn, SEALER, template="password_reset", to="jane@example.com",
                                secrets={"link": LINK}, requested_by="auth")
            raise RuntimeError("the state change failed")
    assert await pool.fetchval("SELECT count(*) FROM outbox") == 0


@pytest.mark.parametrize("to", ["jane@example.com\r\nBcc: all@example.com", "a@b.com, c@d.com",
                                "no-at-sign", "", "<jane@example.com>"])
async def test_bad_recipients_are_refused(pool, to):
    async with pool.acquire() as conn:
        with pytest.raises(ValueError):
            await request_email(conn, SEALER, template="password_reset", to=to, requested_by="auth")


async def test_a_field_cannot_be_both_secret_and_plain(pool):
    async with pool.acquire() as conn:
        with pytest.raises(ValueError):
            await request_email(conn, SEALER, template="password_reset", to="jane@example.com",
                                secrets={"link": LINK}, params={"link": LINK}, requested_by="auth")
        with pytest.raises(ValueError):
            await request_email(conn, SEALER, template="password_reset", to="jane@example.com",
                                secrets={"to": "other@example.com"}, requested_by="auth")
