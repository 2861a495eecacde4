"""The session rules, free of I/O: when a session has ended, when its activity must be
written down, and whether the cookie needs the Secure flag.

Idle expiry is sliding: every request moves last_seen_at, except the web app's passive idle
check (GET /session?activity=none), which only looks. A session ends at
last_seen_at + idle (30 minutes) or at created_at + absolute lifetime, whichever comes first;
a request at exactly that instant is already too late."""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import urlsplit

LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})


@dataclass(frozen=True)
class SessionPolicy:
    idle: timedelta
    absolute: timedelta
    touch_every: timedelta


def ended(policy: SessionPolicy, *, created_at: datetime, last_seen_at: datetime, now: datetime) -> str | None:
    """Why the session is over ("idle" or "absolute"), or None while it is alive."""
    if now >= created_at + policy.absolute:
        return "absolute"
    if now >= last_seen_at + policy.idle:
        return "idle"
    return None


def idle_expires_at(policy: SessionPolicy, *, created_at: datetime, last_seen_at: datetime) -> datetime:
    """When the session ends if no further request comes."""
    return min(last_seen_at + policy.idle, created_at + policy.absolute)


def seconds_left(policy: SessionPolicy, *, created_at: datetime, last_seen_at: datetime, now: datetime) -> int:
    """Whole seconds from `now` until the session ends if no further request comes, rounded
    up (a client waiting this long from when it got the answer checks at or after the end,
    never before it); 0 once it has ended."""
    left = (idle_expires_at(policy, created_at=created_at, last_seen_at=last_seen_at) - now).total_seconds()
    return max(0, math.ceil(left))


def needs_touch(policy: SessionPolicy, *, persisted_last_seen_at: datetime, now: datetime) -> bool:
    """Write last_seen_at only every `touch_every`: keeps a request's cost to a cache hit."""
    return now - persisted_last_seen_at >= policy.touch_every


def cookie_secure(public_url: str, mode: str) -> bool:
    """Secure cookies (and HSTS) everywhere except plain http on the local machine."""
    if mode == "always":
        return True
    if mode == "never":
        return False
    parts = urlsplit(public_url)
    return not (parts.scheme == "http" and (parts.hostname or "") in LOCAL_HOSTS)
