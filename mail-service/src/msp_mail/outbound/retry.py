"""The retry rule for outbound email (pure: no I/O).

A transient SMTP failure (relay down, 4xx) must delay a mail, never lose it: retry with
exponential back-off, capped, until a long bound after the request (3 days by default);
only then is the mail given up as failed."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class RetryPolicy:
    first_delay: timedelta
    max_delay: timedelta
    give_up_after: timedelta

    def delay(self, attempts: int) -> timedelta:
        """Wait after the `attempts`-th failed attempt (1 = the first): first, 2×, 4×… capped."""
        exponent = max(attempts - 1, 0)
        # Cap the exponent so a long outage never overflows timedelta arithmetic.
        seconds = self.first_delay.total_seconds() * (2 ** min(exponent, 40))
        return min(timedelta(seconds=seconds), self.max_delay)

    def next_attempt(self, *, attempts: int, requested_at: datetime, now: datetime) -> datetime | None:
        """When to try again after a transient failure, or None once the bound is passed."""
        if now - requested_at >= self.give_up_after:
            return None
        return now + self.delay(attempts)
