"""The password rules: one pure module, no I/O.

Two profiles, chosen per deployment (setting `password_policy`):

- "practice_portal" (the help page, plus NIST blocklisting): at least 8 characters, at least
  one lower case letter, one upper case letter, one digit and one special character; not one
  of the last 6 passwords; expires after 90 days; not a common password; not containing the
  user's email name.
- "nist_rev4" (NIST SP 800-63B Rev. 4): at least 15 characters, or 8 where 2-step
  verification applies; blocklist and email name as above; no composition rules, no
  history, no forced expiry.

Every rule a password breaks is reported separately, in words a person understands. The
history rule needs the stored hashes, so the service checks it and reports it with
`RECENTLY_USED` from here."""
from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

Profile = Literal["practice_portal", "nist_rev4"]
PROFILES: tuple[Profile, ...] = ("practice_portal", "nist_rev4")

MAX_LENGTH = 256  # NIST asks to allow at least 64; the cap bounds hashing work.
_EMAIL_PARTS = re.compile(r"[._+\-]+")


@dataclass(frozen=True)
class Violation:
    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def _too_short(n: int) -> Violation:
    return Violation("too_short", f"Use at least {n} characters.")


TOO_LONG = Violation("too_long", f"Use at most {MAX_LENGTH} characters.")
NEEDS_LOWER = Violation("needs_lowercase", "Add at least one lower case letter (a-z).")
NEEDS_UPPER = Violation("needs_uppercase", "Add at least one upper case letter (A-Z).")
NEEDS_DIGIT = Violation("needs_digit", "Add at least one number (0-9).")
NEEDS_SPECIAL = Violation("needs_special", "Add at least one special character, such as ! ? # % or a space.")
COMMON = Violation("common_password", "This password is on a list of commonly used passwords; choose a less predictable one.")
EMAIL_NAME = Violation("contains_email_name", "Do not use your email name (the part before the @) in your password.")


def recently_used(history_size: int) -> Violation:
    return Violation(
        "recently_used", f"You used this password recently; choose one that is not among your last {history_size}."
    )


@dataclass(frozen=True)
class Rules:
    """What a profile asks for, for the registration form to show."""

    profile: Profile
    min_length: int
    composition: bool  # lower, upper, digit and special required
    history: bool  # not one of the last `history_size` passwords
    expires: bool  # forced expiry after max age
    history_size: int = 0  # a setting (password_history_size), shown by the forms

    def as_dict(self) -> dict[str, object]:
        return {
            "profile": self.profile,
            "min_length": self.min_length,
            "max_length": MAX_LENGTH,
            "requires_lower_upper_digit_special": self.composition,
            "history": self.history and self.history_size > 0,
            "history_size": self.history_size if self.history else 0,
            "expires": self.expires,
            "blocklist": True,
            "no_email_name": True,
        }


def rules(profile: Profile, *, two_step: bool, history_size: int = 0) -> Rules:
    if profile == "practice_portal":
        return Rules(profile, min_length=8, composition=True, history=True, expires=True, history_size=history_size)
    if profile == "nist_rev4":
        return Rules(profile, min_length=8 if two_step else 15, composition=False, history=False, expires=False)
    raise ValueError(f"unknown password policy profile {profile!r}")


def single_factor_min_length() -> int:
    """The length a password needs to be the only factor under every profile (15: nist_rev4
    without 2-step). Not the deployment's profile alone: a password set under practice_portal
    must not count as long enough once a deployment moves to nist_rev4."""
    return max(rules(p, two_step=False).min_length for p in PROFILES)


def single_factor_ok(password: str) -> bool:
    """Whether this password may stand alone, without 2-step verification, under every
    profile. Remembered with the password (users.password_single_factor_ok), because the
    password itself is not kept."""
    return len(password) >= single_factor_min_length()


def two_step_off_allowed(profile: Profile, password_single_factor_ok: bool | None) -> bool:
    """Whether 2-step may be turned off for a user with a password, given what was recorded
    when that password was set (None: unknown). Under a profile that allows shorter passwords
    with 2-step (nist_rev4: 8 instead of 15) only a password known to be long enough may
    become the only factor; elsewhere (practice_portal) the length does not depend on 2-step."""
    if rules(profile, two_step=False).min_length <= rules(profile, two_step=True).min_length:
        return True
    return password_single_factor_ok is True


def email_names(email: str) -> list[str]:
    """The parts of an email's local part worth refusing inside a password: the whole local
    part (3+ characters) and its dot/dash/underscore-separated words of 4+ characters."""
    local = email.split("@", 1)[0].lower()
    names = [local] if len(local) >= 3 else []
    names += [part for part in _EMAIL_PARTS.split(local) if len(part) >= 4 and part != local]
    return names


def check(
    password: str,
    *,
    profile: Profile,
    email: str,
    common_passwords: Collection[str],
    two_step: bool,
) -> list[Violation]:
    """Every rule the password breaks, in the order a form would list them (history aside)."""
    rule = rules(profile, two_step=two_step)
    found: list[Violation] = []
    if len(password) < rule.min_length:
        found.append(_too_short(rule.min_length))
    if len(password) > MAX_LENGTH:
        found.append(TOO_LONG)
    if rule.composition:
        if not any(ch.islower() for ch in password):
            found.append(NEEDS_LOWER)
        if not any(ch.isupper() for ch in password):
            found.append(NEEDS_UPPER)
        if not any(ch.isdigit() for ch in password):
            found.append(NEEDS_DIGIT)
        if all(ch.isalnum() for ch in password):
            found.append(NEEDS_SPECIAL)
    lowered = password.lower()
    if lowered in common_passwords:
        found.append(COMMON)
    if any(name in lowered for name in email_names(email)):
        found.append(EMAIL_NAME)
    return found
