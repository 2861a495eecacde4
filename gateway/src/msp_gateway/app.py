"""The gateway's app factory: sessions, the forwarder to the four services, the web app."""
from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import hmac
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import aiohttp
from aiohttp import web

from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock, SystemClock
from msp_shared.outbox import outbox_relay_ctx
from msp_shared.web import POOL, service_app

from . import csrf, events, ratelimit
from .client_ip import parse_networks
from .config import GatewaySettings
from .deadlines import Deadlines
from .http import GATEWAY, Gateway, add_routes
from .session_rules import SessionPolicy, cookie_secure
from .sessions import SessionManager
from .store import PostgresRateStore

log = logging.getLogger(__name__)

SCHEMA = "gateway"
MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"


def _derive(secret: bytes, label: str) -> bytes:
    """A key of its own per purpose, derived from the identity secret."""
    return hmac.new(secret, f"msp-gateway:{label}".encode(), hashlib.sha256).digest()


def create_app(settings: GatewaySettings | None = None, *, clock: Clock | None = None) -> web.Application:
    settings = settings or GatewaySettings()
    clock = clock or SystemClock()
    # No middleware at all (each is a layer per request): the routes do tracing, errors and the
    # session step themselves, a prepare hook adds the security headers (see http.add_routes).
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock, middlewares=[])
    secret = settings.identity_secret.get_secret_value().encode()
    app[GATEWAY] = Gateway(
        settings=settings,
        clock=clock,
        policy=SessionPolicy(
            idle=timedelta(minutes=settings.session_idle_minutes),
            absolute=timedelta(hours=settings.session_absolute_hours),
            touch_every=timedelta(seconds=settings.session_touch_seconds),
        ),
        secure=cookie_secure(settings.public_url, settings.session_cookie_secure),
        upstreams={
            "auth": settings.auth_url.rstrip("/"),
            "verify": settings.verify_url.rstrip("/"),
            "mail": settings.mail_url.rstrip("/"),
            "billing": settings.billing_url.rstrip("/"),
        },
        proxies=parse_networks(settings.trusted_proxies),
        allowed_origins=frozenset(csrf.origin_of(o) for o in [settings.public_url, *settings.allowed_origins]),
        rules=ratelimit.rules(settings),
        identity_secret=secret,
        csrf_key=_derive(secret, "csrf"),
        # the watchdog tick: a wait that overruns ends this late at most (read timeout / 4, 50 ms to 1 s)
        deadlines=Deadlines(tick=min(1.0, max(0.05, settings.upstream_read_timeout_seconds / 4))),
    )
    app.cleanup_ctx.append(_gateway_ctx)
    app.cleanup_ctx.append(bus_ctx(subscribe=events.subscribe))
    app.cleanup_ctx.append(outbox_relay_ctx)  # session ends, for auth-service's audit trail
    add_routes(app)
    return app


def serving_app(settings: GatewaySettings | None = None) -> web.Application:
    """The app as `python -m msp_gateway` serves it: create_app plus the process's garbage
    collector tuning (a whole-process setting, so not applied to apps built inside tests)."""
    app = create_app(settings)
    app.on_startup.append(_tune_gc)  # runs after the cleanup contexts' startup, appended before
    return app


# Young collections every GC_YOUNG_THRESHOLD tracked allocations (Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000


async def _tune_gc(app: web.Application) -> None:
    """Measured under load (gc.callbacks): the collector took ~7 µs per proxied request, about
    5 % of the gateway's CPU. Full collections walked the whole heap of long-lived aiohttp,
    pydantic and OpenTelemetry objects, and young ones ran every 700 allocations, each walking
    the live objects of every request in flight. So, once started: freeze what exists (it lives
    as long as the process) out of the collector's sight, and collect the young generation
    less often (cyclic garbage waits for at most GC_YOUNG_THRESHOLD allocations: a few MB)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream connection pool, the session manager, the rate-limit store and the
    purge task (after the database pool exists; closed before it)."""
    gw = app[GATEWAY]
    settings = gw.settings
    pool = app[POOL]
    gw.sessions = SessionManager(pool, gw.policy, cache_seconds=settings.session_cache_seconds)
    gw.rate_store = PostgresRateStore(pool) if settings.rate_limit_store == "postgres" else ratelimit.MemoryStore()
    connect = settings.upstream_connect_timeout_seconds
    # No sock_read: the forwarder sets one deadline per request itself (http.api), cheaper
    # than aiohttp's read timer re-armed on every read.
    gw.timeout = aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None)
    gw.client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream_pool_size, limit_per_host=0),
        auto_decompress=False,  # bytes pass through as the service encoded them
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    tasks = [asyncio.create_task(_purge_loop(gw)), asyncio.create_task(gw.deadlines.watch())]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await gw.client.close()


async def _purge_loop(gw: Gateway) -> None:
    window = timedelta(seconds=gw.settings.rate_limit_window_seconds)
    while True:
        await asyncio.sleep(gw.settings.session_purge_seconds)
        try:
            now = gw.clock.now()
            assert gw.sessions is not None
            await gw.sessions.purge(now)
            await gw.rate_store.purge(now, window)
        except Exception:  # a failed purge is retried next round; it must not kill the loop
            log.exception("session purge failed")
