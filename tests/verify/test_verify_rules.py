"""The pure rules on their own: the check rule, the send limits, the messages."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import phonenumbers
import pytest

from msp_shared import phones as shared_phones
from msp_verify import codes, limits, messages, phones

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
LIMITS = limits.SendLimits(window=timedelta(hours=1), per_phone=5, per_user=5, per_ip=20, cooldown=timedelta(seconds=30))
NONE = limits.Usage(0, None)


def state(status: str = "pending", attempts: int = 0, expires_in: int = 600) -> codes.CodeState:
    return codes.CodeState(status, attempts, NOW + timedelta(seconds=expires_in))


def test_codes_are_digits_of_the_right_length_and_hashes_are_bound_to_salt_and_id() -> None:
    code = codes.new_code(6)
    assert len(code) == 6 and code.isdigit()
    salt = codes.new_salt()
    stored = codes.code_hash(code, salt=salt, verification_id="a", pepper=b"k")
    assert codes.code_matches(code, stored, salt=salt, verification_id="a", pepper=b"k")
    assert not codes.code_matches(code, stored, salt=codes.new_salt(), verification_id="a", pepper=b"k")
    assert not codes.code_matches(code, stored, salt=salt, verification_id="b", pepper=b"k")
    assert not codes.code_matches(code, stored, salt=salt, verification_id="a", pepper=b"other")


def test_check_rule() -> None:
    check = codes.check
    assert check(state(), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.OK
    assert check(state(), matches=True, now=NOW, max_checks=5).status == "verified"
    wrong = check(state(attempts=3), matches=False, now=NOW, max_checks=5)
    assert (wrong.outcome, wrong.attempts, wrong.attempts_left) == (codes.Outcome.WRONG, 4, 1)
    last = check(state(attempts=4), matches=False, now=NOW, max_checks=5)
    assert (last.outcome, last.status) == (codes.Outcome.TOO_MANY, "dead")
    assert check(state(attempts=5), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.TOO_MANY
    assert check(state(expires_in=0), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.EXPIRED
    assert check(state("verified"), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.USED
    assert check(state("superseded"), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.REPLACED
    assert check(state("failed"), matches=True, now=NOW, max_checks=5).outcome is codes.Outcome.NOT_SENT


def test_send_limits_rule() -> None:
    fresh = limits.SendHistory(NONE, NONE, NONE, None)
    assert limits.refusal(fresh, LIMITS, NOW) is None
    recent = limits.SendHistory(NONE, NONE, NONE, NOW - timedelta(seconds=10))
    refusal = limits.refusal(recent, LIMITS, NOW)
    assert refusal and (refusal.code, refusal.retry_after) == ("resend_too_soon", 20)
    busy_phone = limits.SendHistory(limits.Usage(5, NOW - timedelta(minutes=50)), NONE, NONE, None)
    refusal = limits.refusal(busy_phone, LIMITS, NOW)
    assert refusal and (refusal.code, refusal.retry_after) == ("too_many_codes_for_phone", 600)
    assert limits.refusal(limits.SendHistory(NONE, limits.Usage(5, NOW), NONE, None), LIMITS, NOW).code == "too_many_codes_for_user"
    assert limits.refusal(limits.SendHistory(NONE, NONE, limits.Usage(20, NOW), None), LIMITS, NOW).code == "too_many_codes_from_ip"
    assert limits.refusal(limits.SendHistory(NONE, NONE, limits.Usage(19, NOW), None), LIMITS, NOW) is None


def test_messages() -> None:
    assert messages.sms_body("042917", "portal.example.com") == (
        "Your SecurePractice code is 042917.\n\n@portal.example.com #042917"
    )
    twiml = messages.call_twiml("042917")
    assert twiml.count("<Say>") == 2 and twiml.count("0, 4, 2, 9, 1, 7") == 2


def test_phone_hint_keeps_two_digits_at_most() -> None:
    assert phones.hint("+12015550142") == "42"
    assert phones.normalise("+1 201-555-0142") == "+12015550142"


@pytest.mark.parametrize("raw, e164", [
    ("+1 202 555 0100", "+12025550100"),   # US: FIXED_LINE_OR_MOBILE to phonenumbers
    ("+44 7911 123456", "+447911123456"),  # UK mobile
    ("+44 20 7946 0958", "+442079460958"),  # UK landline
])
def test_mobile_and_landline_numbers_can_receive_codes(raw: str, e164: str) -> None:
    assert phones.normalise(raw) == e164


@pytest.mark.parametrize("raw", [
    "+1 900 222 3333",   # US premium rate
    "+1 800 222 3333",   # US toll free
    "+44 909 879 0000",  # UK premium rate
    "+49 180 12345",     # German shared cost
    "+1 500 555 0001",   # personal number (Twilio's magic test numbers)
])
def test_premium_toll_free_and_other_special_numbers_never_receive_codes(raw: str) -> None:
    """The last check before a code is sent (SMS pumping / toll fraud): the same kinds
    auth-service refuses when a number is entered (msp_shared.phones)."""
    assert not shared_phones.receives_codes(phonenumbers.parse(raw, None))
    with pytest.raises(phones.InvalidPhone, match="premium-rate, toll-free, shared-cost .*mobile or landline"):
        phones.normalise(raw)
