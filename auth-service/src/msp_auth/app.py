"""The auth-service app factory: no import-time side effects, no globals; tests build the
same app with a ManualClock and a test database."""
from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

from aiohttp import web

from msp_shared.bus import bus_ctx
from msp_shared.clock import Clock
from msp_shared.errors import ApiError
from msp_shared.outbox import outbox_relay_ctx
from msp_shared.periodic import periodic_ctx
from msp_shared.seal import Sealer
from msp_shared.web import CLOCK, IDENTITY, POOL, service_app

from . import blocklist, handlers, http, manage, profile, recipients, seed, store
from .accounts import PASSWORD_EXPIRED, VERIFICATION_REQUIRED
from .config import AuthSettings
from .hashing import Argon2Params, Hasher
from .keys import AUTH_SETTINGS, BLOCKLIST, HASHER, SEALER
from .tasks import expiry_warnings_ctx

MIGRATIONS = Path(__file__).resolve().parents[2] / "migrations"

# What a restricted session may still do (the gateway forwards the session's restriction in
# Identity.extra["restriction"]); everything else answers 403 with the restriction as code.
ALLOWED_WHEN_RESTRICTED: dict[str, frozenset[tuple[str, str]]] = {
    PASSWORD_EXPIRED: frozenset({("GET", "/me"), ("POST", "/me/password")}),
    VERIFICATION_REQUIRED: frozenset({
        ("GET", "/me"), ("POST", "/me/verification"), ("POST", "/me/verification/ticket"),
        ("POST", "/registrations/verify"),
    }),
}
# Public reading, the same for everyone and open to signed-out visitors: a restricted session
# may read it too (the Terms of Use it accepted, for one).
PUBLIC_READS = ("/terms",)
# The signed-out flows never act on the session's user, so its restriction does not apply: with
# an expired password, "Forgot password" or a reset link opened in the same browser must work,
# and so must signing in (as anyone; the gateway replaces the session).
SIGNED_OUT_FLOWS = frozenset({
    ("POST", "/session"), ("POST", "/password/forgot"), ("POST", "/password/reset/verification"),
    ("POST", "/password/reset"), ("POST", "/registrations"),
})
SIGNED_OUT_READS = ("/invitations/",)
RESTRICTION_MESSAGES = {
    PASSWORD_EXPIRED: "Your password has expired. Choose a new one to continue.",
    VERIFICATION_REQUIRED: "Confirm your phone number with the code we send you to continue.",
}


@web.middleware
async def restriction_middleware(request: web.Request, handler):  # noqa: ANN001, ANN201
    ident = request.get(IDENTITY)
    restriction = ident.extra.get("restriction") if ident is not None and ident.authenticated else None
    if restriction:
        allowed = ALLOWED_WHEN_RESTRICTED.get(restriction, frozenset({("GET", "/me")}))  # unknown: fail closed
        public = request.method == "GET" and (
            any(request.path == p or request.path.startswith(p + "/") for p in PUBLIC_READS)
            or request.path.startswith(SIGNED_OUT_READS)
        )
        signed_out_flow = (request.method, request.path) in SIGNED_OUT_FLOWS
        if (request.method, request.path) not in allowed and not public and not signed_out_flow:
            raise ApiError(403, restriction, RESTRICTION_MESSAGES.get(restriction, "This session cannot do that yet."))
    return await handler(request)


async def hasher_ctx(app: web.Application) -> AsyncIterator[None]:
    """The password-hashing threads, started before the first request."""
    settings = app[AUTH_SETTINGS]
    hasher = Hasher(
        Argon2Params(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=settings.argon2_parallelism,
            hash_len=settings.argon2_hash_len,
            salt_len=settings.argon2_salt_len,
        ),
        workers=settings.hash_workers,
        nice=settings.hash_worker_nice,
    )
    try:
        await hasher.start()
        app[HASHER] = hasher
        yield
    finally:
        await asyncio.get_running_loop().run_in_executor(None, hasher.close)


async def prune_spent_secrets(app: web.Application) -> int:
    settings: AuthSettings = app[AUTH_SETTINGS]
    return await store.prune_spent_secrets(app[POOL], now=app[CLOCK].now(),
                                           token_retention=timedelta(days=settings.token_retention_days))


def create_app(settings: AuthSettings | None = None, *, clock: Clock | None = None) -> web.Application:
    settings = settings or AuthSettings()
    app = service_app(settings, schema="auth", migrations=MIGRATIONS, clock=clock)
    app[AUTH_SETTINGS] = settings
    app[SEALER] = Sealer(settings.seal_key.get_secret_value())
    app[BLOCKLIST] = blocklist.load(settings.common_passwords_file)
    app.middlewares.append(restriction_middleware)
    # Cleanup contexts run in this order and close in reverse: pool (service_app), hasher,
    # seeded Support account, bus, outbox relay, periodic expiry warnings and pruning.
    app.cleanup_ctx.append(hasher_ctx)
    app.cleanup_ctx.append(seed.seed_ctx)
    app.cleanup_ctx.append(bus_ctx(handlers.subscribe))
    app.cleanup_ctx.append(outbox_relay_ctx)
    app.cleanup_ctx.append(expiry_warnings_ctx)
    app.cleanup_ctx.append(periodic_ctx("auth-spent-secrets", prune_spent_secrets, every=3600))
    http.add_routes(app)
    profile.add_routes(app)
    manage.add_routes(app)
    recipients.add_routes(app)  # /internal/recipients, for mail-service
    return app
