"""Send limits (SMS pumping defence): per phone number, per user and per client IP, checked
before anything is sent; refused sends reach no phone and are audited."""
from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

import pytest

from msp_verify.app import prune_verifications
from msp_shared.events import Envelope
from msp_verify.config import VerifySettings
from verify_helpers import Verify, phone

Start = Callable[..., Awaitable[Verify]]
LOOSE = {"send_limit_per_phone": 100, "send_limit_per_user": 100, "send_limit_per_ip": 100}


async def test_sends_to_one_phone_are_limited_across_users_and_networks(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_phone": 3, "send_window_seconds": 3600})
    target = phone(201)
    for n in range(3):
        reply = await verify.send(verify.ticket(uuid.uuid4(), target), ip=f"198.51.100.{n}")
        assert reply.status == 201, reply.body
    refused = await verify.send(verify.ticket(uuid.uuid4(), target), ip="198.51.100.50")
    assert refused.status == 429 and refused.body["error"] == "too_many_codes_for_phone"
    assert refused.body["details"]["retry_after"] == 3600
    assert len(verify.sms()) == 3
    # Another number is not affected; the limit lifts when the window has passed.
    assert (await verify.send(verify.ticket(uuid.uuid4(), phone(202)))).status == 201
    verify.clock.advance(seconds=3601)
    assert (await verify.send(verify.ticket(uuid.uuid4(), target))).status == 201


async def test_sends_for_one_user_are_limited_across_numbers(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_user": 2})
    user = uuid.uuid4()
    assert (await verify.send(verify.ticket(user, phone(203), "phone_change"))).status == 201
    verify.clock.advance(seconds=31)
    assert (await verify.send(verify.ticket(user, phone(204), "phone_change"), ip="198.51.100.77")).status == 201
    verify.clock.advance(seconds=31)
    refused = await verify.send(verify.ticket(user, phone(205), "password_reset"), ip="198.51.100.78")
    assert refused.status == 429 and refused.body["error"] == "too_many_codes_for_user"
    assert 0 < refused.body["details"]["retry_after"] <= 3600
    assert len(verify.sms()) == 2


async def test_sends_from_one_ip_are_limited_across_users_and_numbers(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_ip": 2})
    for n in range(2):
        assert (await verify.send(verify.ticket(uuid.uuid4(), phone(206 + n)), ip="192.0.2.1")).status == 201
    refused = await verify.send(verify.ticket(uuid.uuid4(), phone(208)), ip="192.0.2.1")
    assert refused.status == 429 and refused.body["error"] == "too_many_codes_from_ip"
    assert (await verify.send(verify.ticket(uuid.uuid4(), phone(208)), ip="192.0.2.2")).status == 201
    assert [line["to"] for line in verify.sms()] == [phone(206), phone(207), phone(208)]


async def test_a_burst_of_parallel_sends_cannot_slip_past_the_limit(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_phone": 3})
    replies = await asyncio.gather(
        *(verify.send(verify.ticket(uuid.uuid4(), phone(209)), ip=f"198.51.100.{n}") for n in range(10))
    )
    assert sorted(r.status for r in replies) == [201] * 3 + [429] * 7
    assert len(verify.sms()) == 3


async def test_refused_sends_are_audited(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_ip": 1})
    user = uuid.uuid4()
    await verify.send(verify.ticket(uuid.uuid4(), phone(210)), ip="192.0.2.9")
    await verify.send(verify.ticket(user, phone(211)), ip="192.0.2.9")
    conn = await verify.db()
    try:
        row = await conn.fetchrow("SELECT * FROM audit WHERE user_id = $1", user)
        assert (row["action"], row["outcome"], row["ip"], row["phone_hint"]) == (
            "code.sent", "too_many_codes_from_ip", "192.0.2.9", "11"
        )
        assert row["verification_id"] is None
        # ...and announced, in the same transaction, for the audit trail Support reads
        envelopes = [Envelope.model_validate_json(r["envelope"]) for r in await conn.fetch(
            "SELECT envelope FROM outbox ORDER BY created_at, id")]
    finally:
        await conn.close()
    assert [e.type for e in envelopes] == ["verify.code.sent", "verify.code.sent"]
    refused = envelopes[1].data
    assert refused == {
        "user_id": str(user), "verification_id": None, "purpose": "registration", "channel": "sms",
        "outcome": "too_many_codes_from_ip", "ip": "192.0.2.9", "actor_id": None,
    }
    assert envelopes[0].data["outcome"] == "sent" and envelopes[0].data["verification_id"] is not None


async def test_every_refusal_reason_is_announced_with_its_outcome(start_verify: Start) -> None:
    verify = await start_verify(**{**LOOSE, "send_limit_per_phone": 2, "send_limit_per_user": 2})
    user, signed_in = uuid.uuid4(), uuid.uuid4()
    assert (await verify.send(verify.ticket(user, phone(212)), ip="192.0.2.10")).status == 201
    too_soon = await verify.send(verify.ticket(user, phone(212)), user_id=str(signed_in), ip="192.0.2.11")
    assert too_soon.status == 429 and too_soon.body["error"] == "resend_too_soon"
    verify.clock.advance(seconds=31)
    assert (await verify.send(verify.ticket(user, phone(213)), ip="192.0.2.10")).status == 201
    verify.clock.advance(seconds=31)
    for_user = await verify.send(verify.ticket(user, phone(214), "password_reset"), ip="192.0.2.12")
    assert for_user.status == 429 and for_user.body["error"] == "too_many_codes_for_user"
    assert (await verify.send(verify.ticket(uuid.uuid4(), phone(212)), ip="192.0.2.10")).status == 201
    for_phone = await verify.send(verify.ticket(uuid.uuid4(), phone(212)), ip="192.0.2.13")
    assert for_phone.status == 429 and for_phone.body["error"] == "too_many_codes_for_phone"

    conn = await verify.db()
    try:
        envelopes = [Envelope.model_validate_json(r["envelope"]) for r in await conn.fetch(
            "SELECT envelope FROM outbox ORDER BY created_at, id")]
        audited = [r["outcome"] for r in await conn.fetch("SELECT outcome FROM audit ORDER BY id")]
    finally:
        await conn.close()
    announced = [(e.data["outcome"], e.data["ip"], e.data["actor_id"], e.data["verification_id"] is None)
                 for e in envelopes]
    assert announced == [
        ("sent", "192.0.2.10", None, False),
        ("resend_too_soon", "192.0.2.11", str(signed_in), True),
        ("sent", "192.0.2.10", None, False),
        ("too_many_codes_for_user", "192.0.2.12", None, True),
        ("sent", "192.0.2.10", None, False),
        ("too_many_codes_for_phone", "192.0.2.13", None, True),
    ]
    assert audited == [a[0] for a in announced]  # verify's own audit is unchanged: one row each
    assert len(verify.sms()) == 3


async def test_code_rows_are_deleted_after_the_retention_and_the_audit_stays(start_verify: Start) -> None:
    """Data minimisation: a sent code's row (phone number, client IP, code hash) lives as long
    as the rules that read it need, not forever; the audit trail keeps its record without the
    full number."""
    verify = await start_verify(**LOOSE, verification_retention_hours=24)
    old = await verify.send(verify.ticket(uuid.uuid4(), phone(230)))
    verify.clock.advance(seconds=23 * 3600)
    recent = await verify.send(verify.ticket(uuid.uuid4(), phone(231)))
    verify.clock.advance(seconds=3601)  # the first is now 24 h + 1 s old, the second 1 h + 1 s

    assert await prune_verifications(verify.server.app) == 1
    conn = await verify.db()
    try:
        left = [str(r["id"]) for r in await conn.fetch("SELECT id FROM verifications")]
        assert left == [recent.body["id"]]
        assert await conn.fetchval("SELECT count(*) FROM audit WHERE action = 'code.sent'") == 2
    finally:
        await conn.close()
    assert (await verify.check(old.body["id"], "123456")).status == 404  # gone: unusable, as it was expired
    assert await prune_verifications(verify.server.app) == 0


def test_the_retention_cannot_be_shorter_than_the_rules_that_read_the_rows(base_env: dict) -> None:
    assert VerifySettings(**base_env).verification_retention_hours == 24
    with pytest.raises(ValueError, match="send window"):
        VerifySettings(**base_env, verification_retention_hours=0.5)  # the send window is an hour
    with pytest.raises(ValueError, match="resend cooldown"):
        VerifySettings(**base_env, resend_cooldown_seconds=2 * 86400)  # longer than the 24 h kept
