"""When a secure message expires (pure rules, no I/O).

- By default and at most after `max_days` (30); a practice may set a shorter default.
- The sender may ask for fewer days when sending, and shorten the life of a sent message
  later, never lengthen it.
- Senders get one digest `digest_days_before` days before their messages with attachments
  expire."""
from __future__ import annotations

from datetime import datetime, timedelta


class ExpiryRefused(ValueError):
    """The asked expiry breaks a rule; the text says which."""


def default_days(*, service_default: int, service_max: int, practice_default: int | None) -> int:
    days = min(service_default, service_max)
    if practice_default is not None:
        days = min(days, practice_default)
    return max(days, 1)


def expires_at(now: datetime, *, requested_days: int | None, default: int, service_max: int) -> datetime:
    """The expiry of a message sent now."""
    if requested_days is None:
        return now + timedelta(days=default)
    if requested_days < 1:
        raise ExpiryRefused("A message must live at least one day.")
    if requested_days > service_max:
        raise ExpiryRefused(f"A message can live at most {service_max} days.")
    return now + timedelta(days=requested_days)


def shortened(current: datetime, wanted: datetime, now: datetime) -> datetime:
    """The new expiry when the sender shortens a sent message: earlier than now means now."""
    if wanted >= current:
        raise ExpiryRefused("A message's expiry can only be brought forward, not pushed back.")
    return max(wanted, now)


def practice_default_allowed(days: int, service_max: int) -> bool:
    return 1 <= days <= service_max


def digest_window(now: datetime, days_before: int) -> datetime:
    """Messages expiring up to this moment (and not yet) belong in this sweep's digests."""
    return now + timedelta(days=days_before)
