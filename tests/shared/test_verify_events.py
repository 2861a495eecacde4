"""verify.code.sent / verify.code.checked (issue 3's audit trail): the client's IP, the signed-in
actor and a send's outcome were added after the events were first published. Events queued
before that still parse, with the defaults; the new ones round-trip; no code or number fits in."""
from __future__ import annotations

import uuid

import pytest
from pydantic import ValidationError

from msp_shared.events import REGISTRY, Envelope, VerifyCodeChecked, VerifyCodeSent, make_envelope


def test_events_queued_before_the_new_fields_still_parse_with_their_defaults() -> None:
    user, verification = uuid.uuid4(), uuid.uuid4()
    old_sent = Envelope(type="verify.code.sent", data={
        "user_id": str(user), "verification_id": str(verification), "purpose": "password_reset", "channel": "sms"})
    assert REGISTRY.parse(old_sent) == VerifyCodeSent(
        user_id=user, verification_id=verification, purpose="password_reset", channel="sms",
        outcome="sent", ip=None, actor_id=None)
    old_checked = Envelope(type="verify.code.checked", data={
        "user_id": str(user), "verification_id": str(verification), "purpose": "registration", "outcome": "ok"})
    parsed = REGISTRY.parse(old_checked)
    assert isinstance(parsed, VerifyCodeChecked)
    assert (parsed.outcome, parsed.ip, parsed.actor_id) == ("ok", None, None)


def test_a_refused_send_round_trips_with_ip_actor_and_outcome_and_no_verification() -> None:
    user, actor = uuid.uuid4(), uuid.uuid4()
    refused = VerifyCodeSent(user_id=user, verification_id=None, purpose="password_reset", channel="call",
                             outcome="too_many_codes_from_ip", ip="198.51.100.23", actor_id=actor)
    envelope = Envelope.model_validate_json(make_envelope(refused).model_dump_json())
    assert envelope.data == {
        "user_id": str(user), "verification_id": None, "purpose": "password_reset", "channel": "call",
        "outcome": "too_many_codes_from_ip", "ip": "198.51.100.23", "actor_id": str(actor)}
    assert envelope.payload() == refused

    checked = VerifyCodeChecked(user_id=user, verification_id=uuid.uuid4(), purpose="password_reset",
                                outcome="not_yours", ip="2001:db8::7")
    again = make_envelope(checked).payload()
    assert again == checked and again.actor_id is None and again.ip == "2001:db8::7"


def test_producers_cannot_add_a_code_or_a_phone_number() -> None:
    base = {"user_id": uuid.uuid4(), "verification_id": uuid.uuid4(), "purpose": "registration"}
    with pytest.raises(ValidationError):
        VerifyCodeSent(**base, channel="sms", phone="+12015550101")
    with pytest.raises(ValidationError):
        VerifyCodeChecked(**base, outcome="wrong_code", code="123456")
    assert not {"code", "phone", "phone_number"} & (set(VerifyCodeSent.model_fields) | set(VerifyCodeChecked.model_fields))
