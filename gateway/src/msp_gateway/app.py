"""The gateway's app factory: sessions, the forwarder to the four services, the web app."""
from __future__ import annotations

import asyncio
import contextlib
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
from msp_shared.web import POOL, service_app

from . import csrf, events, ratelimit
from .client_ip import parse_networks
from .config import GatewaySettings
from .http import GATEWAY, Gateway, add_routes, gateway_middleware
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
    # one middleware of its own: tracing, errors, sessions and security headers in one layer
    app = service_app(settings, schema=SCHEMA, migrations=MIGRATIONS, clock=clock, middlewares=[gateway_middleware])
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
    )
    app.cleanup_ctx.append(_gateway_ctx)
    app.cleanup_ctx.append(bus_ctx(subscribe=events.subscribe))
    add_routes(app)
    return app


async def _gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    """The upstream connection pool, the session manager, the rate-limit store and the
    purge task (after the database pool exists; closed before it)."""
    gw = app[GATEWAY]
    settings = gw.settings
    pool = app[POOL]
    gw.sessions = SessionManager(pool, gw.policy, cache_seconds=settings.session_cache_seconds)
    gw.rate_store = PostgresRateStore(pool) if settings.rate_limit_store == "postgres" else ratelimit.MemoryStore()
    connect = settings.upstream_connect_timeout_seconds
    gw.timeouts = {
        "default": aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect,
                                         sock_read=settings.upstream_read_timeout_seconds),
        "upload": aiohttp.ClientTimeout(total=None, connect=connect, sock_connect=connect, sock_read=None),
    }
    gw.client = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=settings.upstream_pool_size, limit_per_host=0),
        auto_decompress=False,  # bytes pass through as the service encoded them
        skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )
    purge = asyncio.create_task(_purge_loop(gw))
    try:
        yield
    finally:
        purge.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await purge
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
