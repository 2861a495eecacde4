"""Verification codes: how they are made, stored and checked. Pure: no I/O.

A code is random digits from `secrets`. Only an HMAC of it is stored: keyed with the
service's verify secret (a pepper, so a copied table alone cannot be brute-forced over the
small code space) over a per-row random salt and the verification id. Comparison is
constant-time."""
from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import Enum


def new_code(length: int) -> str:
    return f"{secrets.randbelow(10**length):0{length}d}"


def new_salt() -> bytes:
    return secrets.token_bytes(16)


def code_hash(code: str, *, salt: bytes, verification_id: str, pepper: bytes) -> bytes:
    message = salt + b"\n" + verification_id.encode() + b"\n" + code.encode()
    return hmac.new(pepper, message, hashlib.sha256).digest()


def code_matches(candidate: str, stored: bytes, *, salt: bytes, verification_id: str, pepper: bytes) -> bool:
    # Hash whatever was typed (even malformed input) so every answer costs the same.
    computed = code_hash(candidate.strip(), salt=salt, verification_id=verification_id, pepper=pepper)
    return hmac.compare_digest(computed, bytes(stored))


class Outcome(str, Enum):
    OK = "ok"
    WRONG = "wrong_code"
    TOO_MANY = "too_many_attempts"
    EXPIRED = "code_expired"
    USED = "code_already_used"
    REPLACED = "code_replaced"
    NOT_SENT = "code_not_sent"


@dataclass(frozen=True)
class CodeState:
    status: str  # pending | superseded | verified | dead | failed
    attempts: int
    expires_at: datetime


@dataclass(frozen=True)
class CheckResult:
    outcome: Outcome
    attempts: int  # wrong guesses after this check
    status: str  # the row's status after this check
    attempts_left: int


def check(state: CodeState, *, matches: bool, now: datetime, max_checks: int) -> CheckResult:
    """The check rule: a code is single use, dies after `max_checks` wrong guesses, expires,
    and is dead once a newer code was sent. Only a live, unexpired, matching code passes."""

    def result(outcome: Outcome, attempts: int, status: str) -> CheckResult:
        return CheckResult(outcome, attempts, status, max(0, max_checks - attempts))

    if state.status == "verified":
        return result(Outcome.USED, state.attempts, state.status)
    if state.status == "superseded":
        return result(Outcome.REPLACED, state.attempts, state.status)
    if state.status == "failed":
        return result(Outcome.NOT_SENT, state.attempts, state.status)
    if state.status == "dead" or state.attempts >= max_checks:
        return result(Outcome.TOO_MANY, state.attempts, "dead")
    if now >= state.expires_at:
        return result(Outcome.EXPIRED, state.attempts, state.status)
    if matches:
        return result(Outcome.OK, state.attempts, "verified")
    attempts = state.attempts + 1
    if attempts >= max_checks:
        return result(Outcome.TOO_MANY, attempts, "dead")
    return result(Outcome.WRONG, attempts, state.status)
