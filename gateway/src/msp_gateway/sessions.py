"""Server-side sessions: the PostgreSQL rows (store.py) behind a small per-process cache.

Per request the cost is one SHA-256 and a dict lookup. A replica trusts its cached copy for
`session_cache_seconds` (a logout on another replica is seen within that time; revocations
are broadcast to every replica at once), keeps the exact last activity in memory, and writes
last_seen_at to PostgreSQL at most every `session_touch_seconds`. That write also notices a
row deleted elsewhere. Idle expiry is therefore exact on the replica that served the last
request, and at most one touch interval early (never late) on another replica."""
from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import asyncpg

from . import store
from .session_rules import SessionPolicy, ended, needs_touch
from .store import SessionRow

MAX_CACHED = 100_000
# How long a revocation is remembered: a grant reaches the gateway within its upstream
# deadline (seconds) of being made, so an older grant cannot arrive after an hour.
REVOCATION_MEMORY = timedelta(hours=1)


def token_hash(cookie_value: str) -> bytes:
    # surrogatepass: a quoted cookie may carry undecodable bytes, which aiohttp hands over as lone surrogates
    return hashlib.sha256(cookie_value.encode("utf-8", "surrogatepass")).digest()


@dataclass
class Session:
    row: SessionRow
    last_seen_at: datetime  # latest activity this replica knows of
    persisted_at: datetime  # last_seen_at as written to PostgreSQL
    loaded_at: float  # time.monotonic() of the database read (cache freshness only)
    touching: bool = False  # a last_seen_at write is in flight: concurrent requests skip theirs
    signed_payload: tuple[int, str, str] | None = None  # (exp, ip, identity payload) of the last request

    @property
    def user_id(self) -> uuid.UUID:
        return self.row.user_id


class BadGrant(ValueError):
    """auth-service answered a grant the gateway cannot use."""


class GrantRevoked(Exception):
    """A revocation of the user's sessions newer than the grant arrived first: no session."""


def _grant_epoch(value: object) -> int | None:
    """auth-service's session epoch of the grant (how many revocations the user had), or None
    from an auth-service that sends none (rolling update)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError("epoch")
    return value


def _grant_moment(value: object) -> datetime | None:
    """An ISO 8601 time with its zone, or None."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError("not a time")
    moment = datetime.fromisoformat(value)
    if moment.tzinfo is None:
        raise ValueError("a time without its zone")
    return moment


class SessionManager:
    def __init__(self, pool: asyncpg.Pool, policy: SessionPolicy, *, cache_seconds: float) -> None:
        self._pool = pool
        self._policy = policy
        self._cache_seconds = cache_seconds
        self._cache: dict[bytes, Session] = {}
        self._generation = 0  # bumped by every revocation: a read racing one is not cached
        # One database read per stale key at a time: when a hot session's cache entry expires,
        # the requests arriving meanwhile wait for that read instead of each issuing their own.
        self._loading: dict[bytes, tuple[int, asyncio.Future[SessionRow | None]]] = {}

    @property
    def policy(self) -> SessionPolicy:
        return self._policy

    async def resolve(self, cookie_value: str, now: datetime, *, activity: bool = True) -> tuple[Session | None, str | None]:
        """The live session for a cookie and records the activity, or (None, why).

        `activity=False` (the web app's idle check, GET /session?activity=none) only looks:
        a session past its idle or absolute limit still ends, but a live one keeps its
        last_seen_at, in memory and in PostgreSQL."""
        key = token_hash(cookie_value)
        session = self._cache.get(key)
        if session is None or time.monotonic() - session.loaded_at > self._cache_seconds:
            generation = self._generation
            row = await self._read(key, generation)
            if row is None:
                self._cache.pop(key, None)
                return None, "unknown"
            last_seen = max(row.last_seen_at, session.last_seen_at) if session else row.last_seen_at
            session = Session(row, last_seen, row.last_seen_at, time.monotonic())
            if generation == self._generation:
                if len(self._cache) >= MAX_CACHED:
                    self._cache.clear()  # safety valve; the database has everything
                self._cache[key] = session
        why = ended(self._policy, created_at=session.row.created_at, last_seen_at=session.last_seen_at, now=now)
        if why:
            await self.end(key, reason=why)
            return None, why
        if not activity:
            return session, None
        if now > session.last_seen_at:
            session.last_seen_at = now
        if not session.touching and needs_touch(self._policy, persisted_last_seen_at=session.persisted_at, now=now):
            session.touching = True
            try:
                if not await store.touch_session(self._pool, key, now):
                    self._cache.pop(key, None)
                    return None, "unknown"
                session.persisted_at = max(session.persisted_at, now)
            finally:
                session.touching = False
        return session, None

    async def _read(self, key: bytes, generation: int) -> SessionRow | None:
        """The row from PostgreSQL, sharing a read already in flight for the same key unless a
        revocation or logout happened since it started (then a fresh read)."""
        pending = self._loading.get(key)
        if pending is None or pending[0] != generation:
            future = asyncio.ensure_future(store.get_session(self._pool, key))
            pending = self._loading[key] = (generation, future)

            def done(_: asyncio.Future, key: bytes = key, pending: tuple = pending) -> None:
                if self._loading.get(key) is pending:
                    del self._loading[key]

            future.add_done_callback(done)
        # shield: one waiter giving up (client gone) must not cancel the read for the others
        return await asyncio.shield(pending[1])

    async def create(self, grant: dict, now: datetime, *, client_ip: str | None, user_agent: str | None) -> tuple[str, Session]:
        """A new session for a grant from auth-service; returns (cookie value, session)."""
        try:
            user_id = uuid.UUID(str(grant["user_id"]))
            practice_id = uuid.UUID(str(grant["practice_id"])) if grant.get("practice_id") else None
            roles = tuple(str(r) for r in grant.get("roles") or ())
            restriction = grant.get("restriction")
            if restriction is not None and not isinstance(restriction, str):
                raise TypeError("restriction")
            epoch = _grant_epoch(grant.get("epoch"))
            password_expires_at = _grant_moment(grant.get("password_expires_at"))
        except (KeyError, TypeError, ValueError) as exc:
            raise BadGrant(str(exc)) from exc
        cookie_value = secrets.token_urlsafe(32)
        row = SessionRow(
            token_hash=token_hash(cookie_value),
            id=uuid.uuid4(),
            user_id=user_id,
            practice_id=practice_id,
            roles=roles,
            restriction=restriction,
            created_at=now,
            last_seen_at=now,
            epoch=epoch,
            password_expires_at=password_expires_at,
        )
        row.created_wall, ended_older = await store.insert_session(self._pool, row, client_ip=client_ip,
                                                                   user_agent=user_agent)
        if row.created_wall is None:
            raise GrantRevoked(str(user_id))
        if ended_older:  # the database ended the user's sessions of older epochs (or none): so does this cache
            self._evict(lambda r: r.user_id == user_id and (r.epoch or 0) < epoch)
        session = Session(row, now, now, time.monotonic())
        self._cache[row.token_hash] = session
        return cookie_value, session

    async def end(self, key: bytes, *, reason: str, ip: str | None = None) -> None:
        """End a session; `reason` ("logout", "replaced", "idle", "absolute") goes to the audit
        trail with the client's address when a request ended it."""
        self._cache.pop(key, None)
        self._generation += 1  # a read racing the logout is neither joined nor cached
        await store.end_session(self._pool, key, reason=reason, ip=ip)

    async def end_cookie(self, cookie_value: str, *, reason: str, ip: str | None = None) -> None:
        await self.end(token_hash(cookie_value), reason=reason, ip=ip)

    async def revoke_user(self, user_id: uuid.UUID, *, min_epoch: int | None, created_before: datetime) -> int:
        """End every session of a user granted below `min_epoch` (auth-service's revocation
        count; for sessions or events without one: created at or before `created_before`, the
        revocation's occurred_at), in the database and in this replica's cache.

        The bound matters: auth-service revokes and grants a fresh session in one answer (password
        change or reset), and the event may arrive after the gateway made that new session."""
        self._evict_user(user_id, min_epoch=min_epoch, created_before=created_before)
        ended = await store.delete_user_sessions(self._pool, user_id, min_epoch=min_epoch, created_before=created_before)
        # A cache miss that read the row after the first eviction but before the delete committed
        # has cached it again (its generation matched): evict once more now the row is gone.
        self._evict_user(user_id, min_epoch=min_epoch, created_before=created_before)
        return ended

    def _evict_user(self, user_id: uuid.UUID, *, min_epoch: int | None, created_before: datetime) -> None:
        self._evict(lambda r: r.user_id == user_id and r.revoked_by(min_epoch=min_epoch, before=created_before))

    def _evict(self, ended_row: Callable[[SessionRow], bool]) -> None:
        self._generation += 1  # a read in flight is neither joined nor cached
        for key, s in list(self._cache.items()):
            if ended_row(s.row):
                del self._cache[key]

    async def purge(self, now: datetime) -> int:
        for key in [k for k, s in self._cache.items() if ended(self._policy, created_at=s.row.created_at, last_seen_at=s.last_seen_at, now=now)]:
            del self._cache[key]
        # Rows idle past the limit as far as the database knows; a replica holding newer
        # activity for a row has written it within touch_every, so the margin keeps it.
        await store.forget_revocations(self._pool, older_than=REVOCATION_MEMORY)
        return await store.purge_expired(
            self._pool,
            idle_cutoff=now - self._policy.idle - self._policy.touch_every,
            absolute_cutoff=now - self._policy.absolute,
        )
