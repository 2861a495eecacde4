"""Rate limits on sensitive routes: sliding windows per client IP and per account.

A rule names the routes it guards and its limits; a store counts hits. The PostgreSQL store
(store.py) is shared by every replica; the memory store is per process (a single replica, or
tests of the rules). Keys never contain an email address: the account part is a SHA-256."""
from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol


@dataclass(frozen=True)
class Rule:
    name: str
    method: str
    path: str  # the upstream path and everything under it
    per_ip: int
    per_account: int
    account_field: str | None = None  # JSON body field naming the account when signed out

    def matches(self, method: str, path: str) -> bool:
        if method != self.method:
            return False
        return path == self.path or path.startswith(self.path + "/")


def rules(settings) -> tuple[Rule, ...]:  # noqa: ANN001 - GatewaySettings
    login_ip, login_acct = settings.rate_limit_login_per_ip, settings.rate_limit_login_per_account
    ip, acct = settings.rate_limit_sensitive_per_ip, settings.rate_limit_sensitive_per_account
    return (
        Rule("login", "POST", "/session", login_ip, login_acct, "email"),
        Rule("password_forgot", "POST", "/password/forgot", ip, acct, "email"),
        Rule("password_reset", "POST", "/password/reset", ip, acct),  # and /password/reset/verification
        Rule("password_change", "POST", "/me/password", ip, acct),
        Rule("verification", "POST", "/verifications", ip, acct),  # sending and checking codes
        Rule("registration", "POST", "/registrations", ip, acct),  # and /registrations/verify
        Rule("invitation", "GET", "/invitations", ip, acct),
    )


def rule_for(all_rules: tuple[Rule, ...], method: str, path: str) -> Rule | None:
    for rule in all_rules:  # a plain loop: asked on every request, most match none
        if rule.matches(method, path):
            return rule
    return None


def account_key(value: str) -> str:
    return hashlib.sha256(value.strip().lower().encode()).hexdigest()[:32]


class Store(Protocol):
    async def hit(self, key: str, *, limit: int, window: timedelta, now: datetime) -> int:
        """Record one hit unless the key is at its limit. Returns 0 when allowed, else the
        seconds until the oldest hit in the window leaves it (Retry-After)."""

    async def hit_all(self, checks: Sequence[tuple[str, int]], *, window: timedelta, now: datetime) -> int:
        """`hit` for each (key, limit) in turn, stopping at the first key at its limit (its hit
        and those after it are not recorded): 0 when all were allowed, else that key's wait."""


def retry_after(oldest: datetime, window: timedelta, now: datetime) -> int:
    return max(1, math.ceil((oldest + window - now).total_seconds()))


class MemoryStore:
    """Per-process sliding-window log: fine for one replica and for tests."""

    def __init__(self) -> None:
        self._hits: dict[str, deque[datetime]] = {}

    async def hit_all(self, checks: Sequence[tuple[str, int]], *, window: timedelta, now: datetime) -> int:
        for key, limit in checks:
            if wait := await self.hit(key, limit=limit, window=window, now=now):
                return wait
        return 0

    async def hit(self, key: str, *, limit: int, window: timedelta, now: datetime) -> int:
        hits = self._hits.setdefault(key, deque())
        while hits and hits[0] <= now - window:
            hits.popleft()
        if len(hits) >= limit:
            return retry_after(hits[0], window, now)
        hits.append(now)
        return 0

    async def purge(self, now: datetime, window: timedelta) -> None:
        for key in [k for k, v in self._hits.items() if not v or v[-1] <= now - window]:
            del self._hits[key]
