"""Password age, pure: a password set at T expires at T + max age (90 days by default), and
warnings go out 14, 7 and 1 days before, each once. If the task runs late (or the password
is already close to expiry), only the nearest warning is sent and the earlier ones are
marked as done, so a user never gets three emails at once."""
from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

DAY = timedelta(days=1)


def expires_at(changed_at: datetime, max_age_days: int) -> datetime:
    return changed_at + timedelta(days=max_age_days)


def is_expired(changed_at: datetime | None, now: datetime, max_age_days: int) -> bool:
    return changed_at is not None and now >= expires_at(changed_at, max_age_days)


def days_left(changed_at: datetime, now: datetime, max_age_days: int) -> int:
    """Whole days left before expiry, rounded up (0 once expired)."""
    remaining = expires_at(changed_at, max_age_days) - now
    return max(0, math.ceil(remaining / DAY))


@dataclass(frozen=True)
class Warning:
    days: int  # the threshold this warning is for (14, 7 or 1)
    mark_sent: frozenset[int]  # thresholds to record as done (this one and any skipped earlier ones)


def warning_due(
    changed_at: datetime,
    now: datetime,
    *,
    max_age_days: int,
    thresholds: Iterable[int],
    already_sent: Collection[int],
) -> Warning | None:
    if is_expired(changed_at, now, max_age_days):
        return None
    remaining = expires_at(changed_at, max_age_days) - now
    reached = sorted(t for t in thresholds if remaining <= t * DAY)
    if not reached or reached[0] in already_sent:
        return None
    return Warning(days=reached[0], mark_sent=frozenset(reached))


def warning_flag(changed_at: datetime | None, now: datetime, *, max_age_days: int, thresholds: Iterable[int]) -> int | None:
    """Days left when inside the widest warning window (the app shows a banner), else None."""
    if changed_at is None:
        return None
    widest = max(thresholds, default=0)
    left = days_left(changed_at, now, max_age_days)
    return left if expires_at(changed_at, max_age_days) - now <= widest * DAY else None
