"""The lockout rule, pure: 5 consecutive wrong passwords lock the account (the 5th locks),
and a locked account tells only someone who knows its password that it is locked.

A guesser must learn nothing from lockout state, so every wrong password gets the same
"invalid credentials" answer, locked or not. Only the right password on a locked account
(or on one someone else unlocked, whose password stays unusable until reset) answers
"locked: reset your password"."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum


class LoginOutcome(str, Enum):
    OK = "ok"
    INVALID = "invalid_credentials"  # unknown email or wrong password: one answer for both
    LOCKED = "account_locked"  # right password, locked account
    RESET_REQUIRED = "password_reset_required"  # right password, but unlocked by someone else


@dataclass(frozen=True)
class Failure:
    failures: int  # consecutive wrong passwords after this one
    locks_now: bool  # this attempt locks the account


def after_wrong_password(failures_before: int, *, locked: bool, threshold: int) -> Failure:
    """Count a wrong password. Once locked the count stops: the lock is already there."""
    if locked:
        return Failure(failures_before, locks_now=False)
    failures = failures_before + 1
    return Failure(failures, locks_now=failures >= threshold)


def outcome(*, password_ok: bool, locked: bool, reset_required: bool) -> LoginOutcome:
    if not password_ok:
        return LoginOutcome.INVALID
    if locked:
        return LoginOutcome.LOCKED
    if reset_required:
        return LoginOutcome.RESET_REQUIRED
    return LoginOutcome.OK
