"""The send rules (SMS pumping defence and resend throttling). Pure: no I/O.

Before any code is sent: at most N sends per phone number, per user and per client IP in a
sliding window, and a cooldown between two sends for the same user and purpose. Refused
sends are not counted (nothing was sent)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class SendLimits:
    window: timedelta
    per_phone: int
    per_user: int
    per_ip: int
    cooldown: timedelta


@dataclass(frozen=True)
class Usage:
    """Sends inside the window: how many, and when the oldest one happened."""

    count: int
    oldest: datetime | None


@dataclass(frozen=True)
class SendHistory:
    phone: Usage
    user: Usage
    ip: Usage
    last_send: datetime | None  # latest send for the same user and purpose


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    retry_after: int  # seconds


def _seconds(delta: timedelta) -> int:
    return max(1, math.ceil(delta.total_seconds()))


def refusal(history: SendHistory, limits: SendLimits, now: datetime) -> Refusal | None:
    if history.last_send is not None and now < history.last_send + limits.cooldown:
        return Refusal(
            "resend_too_soon",
            "A code was just sent. Please wait a moment before asking for another one.",
            _seconds(history.last_send + limits.cooldown - now),
        )
    for usage, limit, code, message in (
        (history.phone, limits.per_phone, "too_many_codes_for_phone", "Too many codes were sent to this phone number."),
        (history.user, limits.per_user, "too_many_codes_for_user", "Too many codes were sent for this account."),
        (history.ip, limits.per_ip, "too_many_codes_from_ip", "Too many codes were requested from your network."),
    ):
        if usage.count >= limit:
            oldest = usage.oldest or now
            return Refusal(code, message + " Please try again later.", _seconds(oldest + limits.window - now))
    return None
