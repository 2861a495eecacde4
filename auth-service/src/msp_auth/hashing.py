"""argon2id password hashing in worker threads, off the event loop.

A hash with the OWASP minimum parameters takes ~17 ms of CPU; run on the event loop it
would stall every other request. argon2-cffi releases the GIL for the whole hash, so one
thread per core (setting `hash_workers`) uses every core while the loop stays responsive.

Threads rather than the process pool DESIGN.md §4 names: a process pool pickles every call
and its answer through pipes, a feeder and a manager thread. bench/login.py, runs taking
turns on one machine: ~0.5 ms less CPU per login in all (21.3-22.0 ms against 22.0-22.5),
logins/s 83-89 against 82-85; the probe's p99 under load unchanged (6.5-8.8 ms). Fewer
processes and less memory too. Each hash thread lowers its own OS priority (Linux keeps the
nice value per thread)."""
from __future__ import annotations

import asyncio
import os
import secrets
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError


@dataclass(frozen=True)
class Argon2Params:
    time_cost: int = 2
    memory_kib: int = 19 * 1024
    parallelism: int = 1
    hash_len: int = 32
    salt_len: int = 16


@lru_cache(maxsize=8)
def _hasher(params: Argon2Params) -> PasswordHasher:
    return PasswordHasher(
        time_cost=params.time_cost,
        memory_cost=params.memory_kib,
        parallelism=params.parallelism,
        hash_len=params.hash_len,
        salt_len=params.salt_len,
        type=Type.ID,
    )


def hash_password(params: Argon2Params, password: str) -> str:
    return _hasher(params).hash(password)


def verify_password(params: Argon2Params, encoded: str, password: str) -> tuple[bool, bool]:
    """(matches, needs_rehash with the current parameters)."""
    hasher = _hasher(params)
    try:
        hasher.verify(encoded, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False, False
    return True, hasher.check_needs_rehash(encoded)


def matches_any(params: Argon2Params, encoded: list[str], password: str) -> bool:
    """Whether the password matches one of these hashes (the password history). Checks
    them all, so the time does not tell which one matched."""
    found = False
    for one in encoded:
        found |= verify_password(params, one, password)[0]
    return found


def _lower_priority(nice: int) -> None:
    """Thread initializer: hashes run at a lower OS priority than the event loops, so a burst
    of logins saturating every core does not delay cheap requests (measured: bench/login.py).
    On Linux nice(2) changes the calling thread only, not the event loop's."""
    if nice:
        try:
            os.nice(nice)
        except OSError:  # not allowed here: hash at normal priority
            pass


class Hasher:
    """The async face of the hashing threads. One per process, created and closed by the app."""

    def __init__(self, params: Argon2Params, workers: int = 0, *, nice: int = 0) -> None:
        self.params = params
        self.workers = workers or os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(
            self.workers, thread_name_prefix="argon2", initializer=_lower_priority, initargs=(nice,)
        )
        self._dummy: str | None = None

    async def _run(self, fn, *args):  # noqa: ANN001, ANN202 - thin wrapper
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, self.params, *args)

    async def start(self) -> None:
        """Start every worker now (not on the first logins) and make the dummy hash that
        unknown emails are checked against, so they take as long as real accounts."""
        hashes = await asyncio.gather(*(self.hash(secrets.token_urlsafe(24)) for _ in range(self.workers)))
        self._dummy = hashes[0]

    async def hash(self, password: str) -> str:
        return await self._run(hash_password, password)

    async def verify(self, encoded: str | None, password: str) -> tuple[bool, bool]:
        """Verify; with no hash (unknown email, no password yet) verify against a dummy hash
        so the answer takes about as long as for a real account, and fail."""
        if encoded is None:
            await self._run(verify_password, self._dummy or await self.hash("x"), password)
            return False, False
        return await self._run(verify_password, encoded, password)

    async def matches_any(self, encoded: list[str], password: str) -> bool:
        if not encoded:
            return False
        return await self._run(matches_any, encoded, password)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
