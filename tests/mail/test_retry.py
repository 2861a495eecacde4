"""The retry rule: exponential back-off, capped, given up only after a long bound."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

from msp_mail.outbound.retry import RetryPolicy

T0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
POLICY = RetryPolicy(first_delay=timedelta(seconds=30), max_delay=timedelta(hours=1), give_up_after=timedelta(days=3))


def test_delay_doubles_then_is_capped():
    assert [POLICY.delay(n).total_seconds() for n in range(1, 6)] == [30, 60, 120, 240, 480]
    assert POLICY.delay(8) == timedelta(hours=1)
    assert POLICY.delay(10_000) == timedelta(hours=1)  # no overflow after a long outage


def test_retries_continue_until_the_bound_then_stop():
    now = T0 + timedelta(days=2, hours=23)
    assert POLICY.next_attempt(attempts=50, requested_at=T0, now=now) == now + timedelta(hours=1)
    assert POLICY.next_attempt(attempts=51, requested_at=T0, now=T0 + timedelta(days=3)) is None
