"""Sending and checking codes through verify-service's HTTP API (real PostgreSQL and
RabbitMQ, ManualClock, the local outbox transport)."""
from __future__ import annotations

import asyncio
import re
import uuid
from datetime import timedelta

import pytest

from msp_shared import signed
from msp_shared.events import Envelope

from verify_helpers import Verify, code_in, phone


def other_code(code: str, step: int = 1) -> str:
    return f"{(int(code) + step) % 10**len(code):0{len(code)}d}"


async def test_sms_code_arrives_in_origin_bound_format_and_buys_a_proof(verify: Verify) -> None:
    user = uuid.uuid4()
    reply = await verify.send(verify.ticket(user, phone(101)), "sms")
    assert reply.status == 201, reply.body
    assert set(reply.body) == {"id", "channel", "expires_at", "resend_after"}
    assert reply.body["channel"] == "sms"
    now = verify.clock.now()
    assert reply.body["expires_at"] == (now + timedelta(minutes=10)).isoformat()
    assert reply.body["resend_after"] == (now + timedelta(seconds=30)).isoformat()

    [line] = verify.sms()
    assert set(line) == {"to", "channel", "body", "at"}
    assert line["to"] == "+12015550101" and line["channel"] == "sms"
    assert line["at"] == now.isoformat()
    match = re.fullmatch(r"Your SecurePractice code is (\d{6})\.\n\n@portal\.example\.com #(\d{6})", line["body"])
    assert match and match.group(1) == match.group(2)

    check = await verify.check(reply.body["id"], match.group(1))
    assert check.status == 200, check.body
    claims = signed.verify_claims(
        check.body["proof"], purpose="verify-proof",
        secret=verify.settings.verify_secret.get_secret_value().encode(), now=now.timestamp(),
    )
    assert claims["user_id"] == str(user)
    assert claims["phone"] == "+12015550101"
    assert claims["purpose"] == "registration"
    assert claims["verification_id"] == reply.body["id"]
    assert claims["jti"] and claims["exp"] == int(now.timestamp()) + 600
    # A proof is not a ticket: it cannot be used to ask for codes.
    with pytest.raises(signed.InvalidToken):
        signed.verify_claims(check.body["proof"], purpose="verify-ticket",
                             secret=verify.settings.verify_secret.get_secret_value().encode(), now=now.timestamp())


async def test_voice_call_reads_the_code_digit_by_digit_twice(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(102)), "call")
    assert reply.status == 201, reply.body
    assert reply.body["channel"] == "call"
    assert "dial tree" in reply.body["help"]
    [line] = verify.sms()
    assert line["channel"] == "call" and line["to"] == "+12015550102"
    code = code_in(line)
    assert len(code) == 6
    spelled = ", ".join(code)
    assert line["body"].count(spelled) == 2
    assert code not in line["body"]  # read as separate digits, never as one number
    assert (await verify.check(reply.body["id"], code)).status == 200


async def test_phone_numbers_are_normalised_to_e164(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), "+1 (201) 555-0103"))
    assert reply.status == 201, reply.body
    assert verify.sms()[-1]["to"] == "+12015550103"


@pytest.mark.parametrize(
    "raw, reason",
    [("12345", "international format"), ("+1 201 555 01", "not a valid"), ("+1 201 555 0104 ext. 12", "extension")],
)
async def test_an_invalid_phone_number_is_a_clear_400_and_nothing_is_sent(verify: Verify, raw: str, reason: str) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), raw))
    assert reply.status == 400
    assert reply.body["error"] == "invalid_phone"
    assert reason in reply.body["message"] and "+1 555 010 1234" in reply.body["message"]
    assert verify.sms() == []


@pytest.mark.parametrize("raw", ["+1 900 222 3333", "+44 909 879 0000", "+1 800 222 3333"])
@pytest.mark.parametrize("channel", ["sms", "call"])
async def test_a_premium_rate_or_toll_free_number_is_a_400_and_nothing_is_sent(verify: Verify, raw: str,
                                                                              channel: str) -> None:
    """SMS pumping / toll fraud: a ticket naming such a number (auth-service refuses them when
    they are entered; one stored before that still reaches here) sends nothing and records no
    verification."""
    reply = await verify.send(verify.ticket(uuid.uuid4(), raw), channel)
    assert reply.status == 400, reply.body
    assert reply.body["error"] == "invalid_phone"
    assert "premium-rate, toll-free" in reply.body["message"] and "mobile or landline" in reply.body["message"]
    assert verify.sms() == []  # the dev outbox: neither a text nor a call
    conn = await verify.db()
    try:
        assert await conn.fetchval("SELECT count(*) FROM verifications") == 0
    finally:
        await conn.close()


async def test_an_unknown_channel_is_refused_with_the_dial_tree_caveat(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(105)), "pigeon")
    assert reply.status == 400 and reply.body["error"] == "invalid_channel"
    assert "dial tree" in reply.body["message"]
    assert verify.sms() == []


async def test_resend_kills_the_previous_code_and_may_switch_channel(verify: Verify) -> None:
    user = uuid.uuid4()
    ticket = verify.ticket(user, phone(106))
    first = await verify.send(ticket, "sms")
    first_code = verify.last_code()

    too_soon = await verify.send(ticket, "call")
    assert too_soon.status == 429 and too_soon.body["error"] == "resend_too_soon"
    assert too_soon.body["details"]["retry_after"] == 30
    assert len(verify.sms()) == 1

    verify.clock.advance(seconds=31)
    second = await verify.send(ticket, "call")
    assert second.status == 201 and second.body["channel"] == "call"
    assert second.body["id"] != first.body["id"]
    assert [line["channel"] for line in verify.sms()] == ["sms", "call"]
    second_code = verify.last_code()

    stale = await verify.check(first.body["id"], first_code)
    assert stale.status == 422 and stale.body["error"] == "code_replaced"
    if first_code != second_code:  # one chance in a million they are equal
        wrong = await verify.check(second.body["id"], first_code)
        assert wrong.status == 422 and wrong.body["error"] == "wrong_code"
    assert (await verify.check(second.body["id"], second_code)).status == 200


async def test_a_new_code_for_another_purpose_leaves_the_first_alive(verify: Verify) -> None:
    user = uuid.uuid4()
    reset = await verify.send(verify.ticket(user, phone(107), "password_reset"))
    reset_code = verify.last_code()
    await verify.send(verify.ticket(user, phone(108), "phone_change"))
    assert (await verify.check(reset.body["id"], reset_code)).status == 200


async def test_code_guessing_is_bounded_to_five_checks(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(109)))
    code = verify.last_code()
    lefts = []
    for step in range(1, 5):
        wrong = await verify.check(reply.body["id"], other_code(code, step))
        assert wrong.status == 422 and wrong.body["error"] == "wrong_code"
        lefts.append(wrong.body["details"]["attempts_left"])
    assert lefts == [4, 3, 2, 1]
    fifth = await verify.check(reply.body["id"], other_code(code, 5))
    assert fifth.status == 429 and fifth.body["error"] == "too_many_attempts"
    # The code is dead: even the right one no longer works.
    right = await verify.check(reply.body["id"], code)
    assert right.status == 429 and right.body["error"] == "too_many_attempts"
    assert "proof" not in right.body


async def test_parallel_guesses_cannot_exceed_the_limit(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(110)))
    code = verify.last_code()
    guesses = [other_code(code, step) for step in range(1, 13)]
    replies = await asyncio.gather(*(verify.check(reply.body["id"], g) for g in guesses))
    assert sorted(r.status for r in replies) == [422] * 4 + [429] * 8
    assert (await verify.check(reply.body["id"], code)).status == 429
    conn = await verify.db()
    try:
        assert await conn.fetchval("SELECT attempts FROM verifications WHERE id = $1", uuid.UUID(reply.body["id"])) == 5
    finally:
        await conn.close()


async def test_a_code_expires_after_ten_minutes(verify: Verify) -> None:
    early = await verify.send(verify.ticket(uuid.uuid4(), phone(111)))
    early_code = verify.last_code()
    late = await verify.send(verify.ticket(uuid.uuid4(), phone(112)))
    late_code = verify.last_code()

    verify.clock.advance(minutes=9, seconds=59)
    assert (await verify.check(early.body["id"], early_code)).status == 200
    verify.clock.advance(seconds=1)
    expired = await verify.check(late.body["id"], late_code)
    assert expired.status == 422 and expired.body["error"] == "code_expired"


async def test_a_used_code_cannot_be_checked_again(verify: Verify) -> None:
    reply = await verify.send(verify.ticket(uuid.uuid4(), phone(113)))
    code = verify.last_code()
    assert (await verify.check(reply.body["id"], code)).status == 200
    replay = await verify.check(reply.body["id"], code)
    assert replay.status == 422 and replay.body["error"] == "code_already_used"
    assert "proof" not in replay.body


async def test_someone_elses_verification_is_not_found(verify: Verify) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    reply = await verify.send(verify.ticket(victim, phone(114)))
    code = verify.last_code()

    as_user = await verify.check(reply.body["id"], code, user_id=str(attacker))
    assert as_user.status == 404 and as_user.body["error"] == "not_found"
    with_ticket = await verify.check(reply.body["id"], code, ticket=verify.ticket(attacker, phone(115)))
    assert with_ticket.status == 404
    assert (await verify.check(str(uuid.uuid4()), code)).status == 404
    assert (await verify.check("not-a-uuid", code)).status == 404

    # The attacker's tries cost the owner nothing; the owner (signed in, or showing the ticket) succeeds.
    owner = await verify.check(reply.body["id"], code, user_id=str(victim), ticket=verify.ticket(victim, phone(114)))
    assert owner.status == 200


async def test_forged_expired_and_foreign_tickets_are_refused(verify: Verify) -> None:
    user = uuid.uuid4()
    forged = verify.ticket(user, phone(116), secret="not-the-shared-secret")
    assert (await verify.send(forged)).body["error"] == "invalid_ticket"

    payload, _, sig = verify.ticket(user, phone(116)).partition(".")
    other_payload = verify.ticket(user, phone(117)).partition(".")[0]
    tampered = await verify.send(f"{other_payload}.{sig}")
    assert tampered.status == 403 and tampered.body["error"] == "invalid_ticket"

    wrong_purpose = signed.sign_claims(
        {"user_id": str(user), "phone": phone(116), "purpose": "registration"}, purpose="verify-proof",
        secret=verify.settings.verify_secret.get_secret_value().encode(), now=verify.clock.now().timestamp(), ttl=900,
    )
    assert (await verify.send(wrong_purpose)).status == 403

    unknown_flow = signed.sign_claims(
        {"user_id": str(user), "phone": phone(116), "purpose": "lottery"}, purpose="verify-ticket",
        secret=verify.settings.verify_secret.get_secret_value().encode(), now=verify.clock.now().timestamp(), ttl=900,
    )
    assert (await verify.send(unknown_flow)).status == 403

    old = verify.ticket(user, phone(116), ttl=900)
    verify.clock.advance(seconds=901)
    expired = await verify.send(old)
    assert expired.status == 422 and expired.body["error"] == "ticket_expired"
    assert verify.sms() == []


async def test_requests_without_the_gateways_identity_are_refused(verify: Verify) -> None:
    async with verify.http.post(verify.server.make_url("/verifications"),
                                json={"ticket": verify.ticket(uuid.uuid4(), phone(118)), "channel": "sms"}) as r:
        assert r.status == 401
        assert (await r.json())["error"] == "gateway_identity_required"
    assert verify.sms() == []


async def test_audit_records_sends_and_checks_without_codes_or_phones(verify: Verify) -> None:
    user = uuid.uuid4()
    reply = await verify.send(verify.ticket(user, phone(119)), ip="198.51.100.9")
    code = verify.last_code()
    await verify.check(reply.body["id"], other_code(code), ip="198.51.100.9")
    await verify.check(reply.body["id"], code, ip="198.51.100.9")
    conn = await verify.db()
    try:
        rows = await conn.fetch("SELECT * FROM audit WHERE user_id = $1 ORDER BY id", user)
        assert [(r["action"], r["outcome"]) for r in rows] == [
            ("code.sent", "sent"), ("code.checked", "wrong_code"), ("code.checked", "ok"),
        ]
        assert all(r["ip"] == "198.51.100.9" and r["phone_hint"] == "19" for r in rows)
        assert all(str(r["verification_id"]) == reply.body["id"] for r in rows)
        text = " ".join(str(dict(r)) for r in rows)
        assert code not in text and "2015550119" not in text
        stored = await conn.fetchrow("SELECT code_hash, salt FROM verifications WHERE user_id = $1", user)
        assert code.encode() not in bytes(stored["code_hash"]) and len(stored["code_hash"]) == 32
        with pytest.raises(Exception, match="append-only"):
            await conn.execute("UPDATE audit SET outcome = 'ok'")
        with pytest.raises(Exception, match="append-only"):
            await conn.execute("DELETE FROM audit")

        # Events for the platform's audit trail carry ids only.
        envelopes = [Envelope.model_validate_json(r["envelope"]) for r in await conn.fetch(
            "SELECT envelope FROM outbox ORDER BY created_at, id")]
        assert [e.type for e in envelopes] == ["verify.code.sent", "verify.code.checked", "verify.code.checked"]
        assert [e.data["outcome"] for e in envelopes] == ["sent", "wrong_code", "ok"]
        assert all(e.data["user_id"] == str(user) for e in envelopes)
        # the client's address; no actor: nobody was signed in (the ticket names the subject)
        assert [(e.data["ip"], e.data["actor_id"]) for e in envelopes] == [("198.51.100.9", None)] * 3
        assert all(e.data["verification_id"] == reply.body["id"] for e in envelopes)
        dumped = " ".join(e.model_dump_json() for e in envelopes)
        assert code not in dumped and "5550119" not in dumped
    finally:
        await conn.close()


async def outbox_events(verify: Verify, type_: str) -> list[dict]:
    conn = await verify.db()
    try:
        rows = await conn.fetch("SELECT envelope FROM outbox ORDER BY created_at, id")
    finally:
        await conn.close()
    envelopes = [Envelope.model_validate_json(r["envelope"]) for r in rows]
    return [e.data for e in envelopes if e.type == type_]


async def test_a_signed_in_requester_is_the_events_actor(verify: Verify) -> None:
    user = uuid.uuid4()
    reply = await verify.send(verify.ticket(user, phone(120), "phone_change"), user_id=str(user), ip="2001:db8::5")
    assert reply.status == 201, reply.body
    assert (await verify.check(reply.body["id"], verify.last_code(), user_id=str(user), ip="2001:db8::6")).status == 200
    [sent] = await outbox_events(verify, "verify.code.sent")
    assert (sent["actor_id"], sent["user_id"], sent["ip"], sent["outcome"], sent["purpose"], sent["channel"]) == (
        str(user), str(user), "2001:db8::5", "sent", "phone_change", "sms")
    [checked] = await outbox_events(verify, "verify.code.checked")
    assert (checked["actor_id"], checked["ip"], checked["outcome"]) == (str(user), "2001:db8::6", "ok")


async def test_checks_of_someone_elses_verification_are_announced_as_not_yours(verify: Verify) -> None:
    victim, attacker = uuid.uuid4(), uuid.uuid4()
    reply = await verify.send(verify.ticket(victim, phone(121), "password_reset"))
    code = verify.last_code()
    assert (await verify.check(reply.body["id"], code, user_id=str(attacker), ip="192.0.2.66")).status == 404
    assert (await verify.check(reply.body["id"], code, ip="192.0.2.67",
                               ticket=verify.ticket(attacker, phone(122)))).status == 404
    checked = await outbox_events(verify, "verify.code.checked")
    assert [(c["outcome"], c["user_id"], c["actor_id"], c["ip"], c["verification_id"], c["purpose"])
            for c in checked] == [
        ("not_yours", str(victim), str(attacker), "192.0.2.66", reply.body["id"], "password_reset"),
        # anonymous, holding the attacker's own ticket: no signed-in actor, the address is kept
        ("not_yours", str(victim), None, "192.0.2.67", reply.body["id"], "password_reset"),
    ]
    assert code not in str(checked)
