"""The pure rule modules on their own: password policy (both profiles), lockout, expiry."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from msp_auth import blocklist, expiry, lockout, policy

COMMON = blocklist.load()
EMAIL = "jane.doe@brightsmiles.example"


def codes(password: str, *, profile: policy.Profile = "practice_portal", two_step: bool = False, email: str = EMAIL) -> list[str]:
    return [v.code for v in policy.check(password, profile=profile, email=email, common_passwords=COMMON, two_step=two_step)]


def test_shipped_blocklist_is_large_and_lowercased() -> None:
    assert len(COMMON) >= 10_000
    assert {"123456", "password", "qwerty", "password1"} <= COMMON
    assert all(p == p.lower() for p in list(COMMON)[:500])


def test_a_good_password_breaks_no_rule() -> None:
    assert codes("Tulip-Harbor-42!") == []


@pytest.mark.parametrize(
    "password,expected",
    [
        ("Tu-42!a", ["too_short"]),
        ("TULIP-HARBOR-42!", ["needs_lowercase"]),
        ("tulip-harbor-42!", ["needs_uppercase"]),
        ("Tulip-Harbor-XY!", ["needs_digit"]),
        ("TulipHarbor42", ["needs_special"]),
        ("Tulip Harbor 42", []),  # a space counts as a special character
        ("Jane-Harbor-42!", ["contains_email_name"]),  # "jane" is a word of the email name
    ],
)
def test_each_rule_is_reported_on_its_own(password: str, expected: list[str]) -> None:
    assert codes(password) == expected


def test_all_broken_rules_are_reported_together_in_words() -> None:
    found = policy.check("abc", profile="practice_portal", email=EMAIL, common_passwords=COMMON, two_step=False)
    assert [v.code for v in found] == ["too_short", "needs_uppercase", "needs_digit", "needs_special", "common_password"]
    assert found[0].message == "Use at least 8 characters."
    assert all(v.message.endswith(".") and " " in v.message for v in found)


def test_common_passwords_are_refused_whatever_their_case() -> None:
    assert codes("Password1!") == ["common_password"]
    assert codes("P@ssw0rd") == ["common_password"]
    assert codes("QWERTY123") == ["needs_lowercase", "needs_special", "common_password"]


def test_email_name_inside_the_password_is_refused() -> None:
    assert codes("xX-JANE.DOE-9x") == ["contains_email_name"]
    assert codes("Brightsmiles-9!") == []  # the domain is not the email name
    assert codes("Tulip-Harbor-42!", email="tulip@example.org") == ["contains_email_name"]
    assert codes("Tulip-Harbor-42!", email="al@example.org") == []  # too short a name to match on


def test_overlong_password_is_refused() -> None:
    assert codes("Aa1!" * 65) == ["too_long"]


def test_nist_profile_length_blocklist_and_no_composition() -> None:
    assert codes("correcthorsebatterystaple", profile="nist_rev4") == []
    assert codes("shortbutlong", profile="nist_rev4") == ["too_short"]
    assert codes("shortbutlong", profile="nist_rev4", two_step=True) == []
    assert codes("password123456789", profile="nist_rev4") == []  # long and not listed: NIST allows it
    assert codes("iloveyou", profile="nist_rev4", two_step=True) == ["common_password"]
    assert codes("1234567890", profile="nist_rev4", two_step=True) == ["common_password"]
    rules = policy.rules("nist_rev4", two_step=False)
    assert (rules.min_length, rules.composition, rules.history, rules.expires) == (15, False, False, False)
    portal = policy.rules("practice_portal", two_step=False)
    assert (portal.min_length, portal.composition, portal.history, portal.expires) == (8, True, True, True)


def test_a_password_stands_alone_only_when_every_profile_allows_it_without_two_step() -> None:
    """Remembered with the password; under nist_rev4 a short one keeps 2-step on, and a length
    nobody recorded counts as short. practice_portal asks 8 either way: nothing to keep."""
    assert policy.single_factor_min_length() == 15
    assert [policy.single_factor_ok("x" * n) for n in (8, 14, 15, 40)] == [False, False, True, True]
    assert [policy.two_step_off_allowed("nist_rev4", ok) for ok in (True, False, None)] == [True, False, False]
    assert [policy.two_step_off_allowed("practice_portal", ok) for ok in (True, False, None)] == [True, True, True]


def test_lockout_rule_fifth_failure_locks_and_counting_stops() -> None:
    results = []
    failures = 0
    for _ in range(5):
        f = lockout.after_wrong_password(failures, locked=False, threshold=5)
        failures = f.failures
        results.append(f.locks_now)
    assert results == [False, False, False, False, True]
    assert lockout.after_wrong_password(5, locked=True, threshold=5) == lockout.Failure(5, False)
    assert lockout.outcome(password_ok=False, locked=True, reset_required=False) is lockout.LoginOutcome.INVALID
    assert lockout.outcome(password_ok=True, locked=True, reset_required=False) is lockout.LoginOutcome.LOCKED
    assert lockout.outcome(password_ok=True, locked=False, reset_required=True) is lockout.LoginOutcome.RESET_REQUIRED
    assert lockout.outcome(password_ok=True, locked=False, reset_required=False) is lockout.LoginOutcome.OK


def test_expiry_at_90_days_and_warnings_each_once() -> None:
    set_at = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert not expiry.is_expired(set_at, set_at + timedelta(days=90) - timedelta(seconds=1), 90)
    assert expiry.is_expired(set_at, set_at + timedelta(days=90), 90)

    def due(days_after: float, sent: set[int]) -> expiry.Warning | None:
        return expiry.warning_due(set_at, set_at + timedelta(days=days_after), max_age_days=90,
                                  thresholds=[14, 7, 1], already_sent=sent)

    assert due(75, set()) is None
    assert due(76, set()).days == 14
    assert due(77, {14}) is None
    assert due(83, {14}).days == 7
    assert due(89.5, {14, 7}).days == 1
    assert due(89.5, {14, 7, 1}) is None
    late = due(84, set())  # the task was down: only the nearest warning, earlier ones marked done
    assert late.days == 7 and late.mark_sent == frozenset({14, 7})
    assert due(91, set()) is None  # expired: no warning, the login restriction takes over


def test_the_rules_a_form_shows_name_the_history_size() -> None:
    portal = policy.rules("practice_portal", two_step=False, history_size=6).as_dict()
    assert portal["history"] is True and portal["history_size"] == 6
    assert policy.rules("practice_portal", two_step=False, history_size=0).as_dict()["history"] is False
    nist = policy.rules("nist_rev4", two_step=True, history_size=6).as_dict()
    assert (nist["history"], nist["history_size"], nist["min_length"]) == (False, 0, 8)
