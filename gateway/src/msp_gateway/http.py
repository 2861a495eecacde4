"""The gateway's HTTP side: the session middleware (cookie → session, CSRF, cross-site
checks), the session endpoints it answers itself, the generic /api/v1 forwarder with rate
limits and body limits, security headers, and the web app's files."""
from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from yarl import URL

from msp_shared import identity, telemetry
from msp_shared.clock import Clock
from msp_shared.errors import ApiError, slow_down, too_large
from msp_shared.web import exception_response

from . import csrf, openapi, proxy, ratelimit
from .client_ip import Network, client_ip
from .config import GatewaySettings
from .routing import PREFIX, UNSAFE_METHODS, is_upload, service_for
from .session_rules import SessionPolicy, idle_expires_at
from .sessions import BadGrant, Session, SessionManager

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
GRANT_BODY_LIMIT = 1024 * 1024

# Request keys.
SESSION = web.RequestKey("msp.gw.session", Session | None)  # the live session, or None
COOKIE = web.RequestKey("msp.gw.cookie", str | None)  # its cookie value (None when signed out)
CLIENT_IP = web.RequestKey("msp.gw.client_ip", str)
ENDED = web.RequestKey("msp.gw.ended", str)  # why the presented cookie no longer works
CLEAR_COOKIE = web.RequestKey("msp.gw.clear_cookie", bool)

# Upstream paths a browser with a dead cookie may still use, signed out: signing in again and
# the flows that lead there.
_ANONYMOUS_OK = (
    "/session", "/password/forgot", "/password/reset", "/registrations", "/invitations", "/verifications", "/openapi.json",
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), payment=(), usb=(), interest-cohort=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
HSTS = "max-age=31536000; includeSubDomains"


@dataclass
class Gateway:
    """Everything the handlers share; built by create_app, completed by its cleanup context."""

    settings: GatewaySettings
    clock: Clock
    policy: SessionPolicy
    secure: bool
    upstreams: dict[str, str]
    proxies: tuple[Network, ...]
    allowed_origins: frozenset[str]
    rules: tuple[ratelimit.Rule, ...]
    identity_secret: bytes
    csrf_key: bytes
    sessions: SessionManager | None = None
    client: aiohttp.ClientSession | None = None
    rate_store: Any = None
    timeouts: dict[str, aiohttp.ClientTimeout] = field(default_factory=dict)


GATEWAY = web.AppKey("gateway", Gateway)


# ---- middleware and response headers -----------------------------------------------------

def _anonymous_ok(upstream_path: str) -> bool:
    return any(upstream_path == p or upstream_path.startswith(p + "/") for p in _ANONYMOUS_OK)


@web.middleware
async def gateway_middleware(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    """The gateway's one middleware: tracing, errors in the API's shape, the session step
    and the security headers, folded into one layer (each aiohttp layer costs per request).
    A SERVER span (or an incoming trace context) goes through the shared tracing middleware."""
    if telemetry.spans_wanted() or "traceparent" in request.headers:
        return await telemetry.tracing_middleware(request, partial(_guarded, handler=handler))
    return await _guarded(request, handler)


async def _guarded(request: web.Request, handler) -> web.StreamResponse:  # noqa: ANN001
    try:
        if request.path.startswith("/api/"):
            await _session_step(request)
        response = await handler(request)
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        error = exception_response(request, exc)
        if error is None:  # a redirect (HTTPException below 400) propagates, with its headers
            if isinstance(exc, web.HTTPException):
                security_headers(request, exc)
            raise
        response = error
    if not response.prepared:  # a streamed answer got its headers before it was prepared
        security_headers(request, response)
    return response


async def _session_step(request: web.Request) -> None:
    """Cookie → session, cross-site and CSRF checks, for every /api/ request."""
    gw = request.app[GATEWAY]
    assert gw.sessions is not None
    request[CLIENT_IP] = client_ip(request.remote, request.headers.get("X-Forwarded-For"), gw.proxies)
    cookie = request.cookies.get(gw.settings.session_cookie_name)
    session: Session | None = None
    if cookie:
        session, why = await gw.sessions.resolve(cookie, gw.clock.now())
        if session is None:
            request[ENDED] = why
            request[CLEAR_COOKIE] = True
    request[SESSION] = session
    request[COOKIE] = cookie if session else None

    if request.method in UNSAFE_METHODS:
        # Allowed: the public URL's origin, configured extras, and the origin the browser
        # itself addressed (Host cannot be set by a page, so a foreign page never matches it).
        allowed = gw.allowed_origins | {f"{request.scheme}://{request.host}".lower()}
        if csrf.cross_site(request.headers.get("Origin"), request.headers.get("Sec-Fetch-Site"), allowed):
            raise ApiError(403, "cross_site_request", "Requests from other sites are not accepted.")
        # Signing in again (as someone else) needs no token: it is guarded like every
        # signed-out request, by JSON and the origin checks, and rotates the session.
        signing_in = request.method == "POST" and request.path == f"{PREFIX}/session"
        if session is not None and not signing_in:
            assert cookie is not None
            if not csrf.token_ok(request.headers.get(csrf.HEADER), csrf.token_for(cookie, gw.csrf_key)):
                raise ApiError(403, "csrf_failed", "The request is missing its security token; reload the page.")
        elif request.body_exists and not csrf.is_json(request.headers.get("Content-Type")):
            raise ApiError(415, "json_required", "This request must be sent as JSON.")

    if cookie and session is None and not _anonymous_ok(request.path[len(PREFIX):]):
        raise ApiError(401, "session_expired", "Your session has ended. Please sign in again.")


_CSP = "Content-Security-Policy"
_FIXED_HEADERS = {k: v for k, v in SECURITY_HEADERS.items() if k != _CSP}
_FIXED_HEADERS_HSTS = {**_FIXED_HEADERS, "Strict-Transport-Security": HSTS}


def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security and cache headers on every answer, set before it is prepared."""
    gw = request.app[GATEWAY]
    headers = response.headers
    if _CSP not in headers:  # a service may send a stricter one (attachments)
        headers[_CSP] = SECURITY_HEADERS[_CSP]
    headers.update(_FIXED_HEADERS_HSTS if gw.secure else _FIXED_HEADERS)
    if request.path.startswith("/api/"):
        headers["Cache-Control"] = "no-store"
    elif "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-cache"
    if request.get(CLEAR_COOKIE):
        # A raw header: the response's own cookies (none when clearing) are added at prepare.
        secure = "; Secure" if gw.secure else ""
        response.headers.add(
            "Set-Cookie",
            f"{gw.settings.session_cookie_name}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/"
            f"; HttpOnly; SameSite={gw.settings.session_cookie_samesite}{secure}",
        )


# ---- session endpoints -----------------------------------------------------------------------

def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def session_state(gw: Gateway, cookie: str, session: Session) -> dict[str, Any]:
    row = session.row
    return {
        "csrf_token": csrf.token_for(cookie, gw.csrf_key),
        "restriction": row.restriction,
        "idle_expires_at": _iso(idle_expires_at(gw.policy, created_at=row.created_at, last_seen_at=session.last_seen_at)),
        "expires_at": _iso(row.created_at + gw.policy.absolute),
    }


async def get_session(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    session = request[SESSION]
    if session is None:
        if request.get(ENDED):
            raise ApiError(401, "session_expired", "Your session has ended. Please sign in again.")
        raise ApiError(401, "not_signed_in", "Please sign in.")
    row = session.row
    body = {
        "user": {
            "id": str(row.user_id),
            "practice_id": str(row.practice_id) if row.practice_id else None,
            "roles": list(row.roles),
        },
        **session_state(gw, request[COOKIE], session),
    }
    return web.json_response(body)


async def delete_session(request: web.Request) -> web.Response:
    """Logout. Idempotent: without a live session it only clears the cookie."""
    gw = request.app[GATEWAY]
    assert gw.sessions is not None
    if request[SESSION] is not None:
        await gw.sessions.end_cookie(request[COOKIE])
    request[CLEAR_COOKIE] = True
    return web.Response(status=204)


async def _sign_in(request: web.Request, gw: Gateway, status: int, data: dict[str, Any]) -> web.Response:
    """auth-service granted a session (login, registration, password reset): rotate any
    previous session, create the new one, answer without the grant, set the cookie."""
    assert gw.sessions is not None
    if request[SESSION] is not None:
        await gw.sessions.end_cookie(request[COOKIE])
    try:
        cookie, session = await gw.sessions.create(
            data["grant"], gw.clock.now(), client_ip=request[CLIENT_IP], user_agent=request.headers.get("User-Agent")
        )
    except BadGrant:
        log.error("auth-service sent an unusable grant", extra={"path": request.path})
        raise ApiError(502, "service_unavailable", "The sign-in service answered unexpectedly.")
    body = {k: v for k, v in data.items() if k != "grant"}
    body.update(session_state(gw, cookie, session))
    response = web.json_response(body, status=status)
    request[CLEAR_COOKIE] = False
    response.set_cookie(
        gw.settings.session_cookie_name, cookie, path="/", secure=gw.secure, httponly=True,
        samesite=gw.settings.session_cookie_samesite,
    )
    return response


# ---- rate limits and bodies --------------------------------------------------------------

async def _enforce(gw: Gateway, request: web.Request, rule: ratelimit.Rule, body: bytes | None) -> None:
    now = gw.clock.now()
    window = timedelta(seconds=gw.settings.rate_limit_window_seconds)
    wait = await gw.rate_store.hit(f"{rule.name}:ip:{request[CLIENT_IP]}", limit=rule.per_ip, window=window, now=now)
    if not wait:
        # The account a request is about: the email it names (login, forgot password), else
        # the signed-in user.
        account = None
        if rule.account_field and body:
            try:
                value = json.loads(body).get(rule.account_field)
            except (ValueError, AttributeError):
                value = None
            if isinstance(value, str) and value.strip():
                account = f"acct:{ratelimit.account_key(value)}"
        session = request[SESSION]
        if account is None and session is not None:
            account = f"user:{session.user_id}"
        if account:
            wait = await gw.rate_store.hit(f"{rule.name}:{account}", limit=rule.per_account, window=window, now=now)
    if wait:
        raise slow_down(retry_after=wait)


async def _read_limited(request: web.Request, limit: int) -> bytes:
    parts, size = [], 0
    async for chunk in request.content.iter_chunked(proxy.CHUNK):
        size += len(chunk)
        if size > limit:
            raise too_large("The request body is too large.", limit=limit)
        parts.append(chunk)
    return b"".join(parts)


# ---- the forwarder -------------------------------------------------------------------------

def _not_found() -> ApiError:
    return ApiError(404, "not_found", "No such API endpoint.")


def _unavailable(status: int) -> ApiError:
    return ApiError(status, "service_unavailable", "The service is temporarily unavailable; please try again.")


async def api(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    assert gw.client is not None
    raw_path = request.raw_path
    if not raw_path.startswith(PREFIX + "/"):
        raise _not_found()
    upstream_path = request.path[len(PREFIX):]
    service = service_for(upstream_path)
    if service is None:
        raise _not_found()
    method = request.method
    session: Session | None = request[SESSION]

    upload = is_upload(method, upstream_path)
    limit = gw.settings.upload_body_limit_bytes if upload else gw.settings.json_body_limit_bytes
    if request.content_length is not None and request.content_length > limit:
        raise too_large("The request body is too large.", limit=limit)
    body: bytes | None = None
    budget: proxy.BodyBudget | None = None
    data: Any = None
    if upload:
        budget = proxy.BodyBudget(limit)
        data = budget.stream(request.content)
    elif request.body_exists:
        body = data = await _read_limited(request, limit)

    rule = ratelimit.rule_for(gw.rules, method, upstream_path)
    if rule is not None:
        await _enforce(gw, request, rule, body)

    signed = identity.sign_payload(
        _identity_payload(gw, session, request[CLIENT_IP]), secret=gw.identity_secret, method=method, path=upstream_path
    )
    headers = proxy.request_headers(request, signed)
    if upload and request.content_length is not None:
        headers["Content-Length"] = str(request.content_length)  # known size: no chunking
    url = URL(gw.upstreams[service] + raw_path[len(PREFIX):], encoded=True)

    try:
        upstream = await gw.client.request(
            method, url, headers=headers, data=data, allow_redirects=False,
            timeout=gw.timeouts["upload" if upload else "default"],
        )
    except aiohttp.ClientConnectorError:
        log.warning("upstream unreachable", extra={"service": service})
        raise _unavailable(503)
    except (aiohttp.ClientError, asyncio.TimeoutError, proxy.BodyTooLarge) as exc:
        if budget is not None and budget.exceeded:
            raise too_large("The request body is too large.", limit=limit)
        log.warning("upstream failed", extra={"service": service, "error": type(exc).__name__})
        raise _unavailable(502)

    async with upstream:
        if service == "auth" and method in UNSAFE_METHODS and upstream.status in (200, 201) \
                and csrf.is_json(upstream.headers.get("Content-Type")):
            return await _maybe_sign_in(request, gw, upstream)
        return await proxy.stream_back(request, upstream, before_prepare=security_headers)


def _identity_payload(gw: Gateway, session: Session | None, ip: str) -> str:
    """The identity header's payload. A session's is encoded once per second of expiry and
    client address and reused (the MAC, per request, binds it to the method and path)."""
    exp = int(gw.clock.now().timestamp()) + gw.settings.identity_ttl_seconds
    if session is None:
        return identity.encode(identity.Identity(user_id=None, ip=ip), exp=exp)
    cached = session.signed_payload
    if cached is not None and cached[0] == exp and cached[1] == ip:
        return cached[2]
    row = session.row
    who = identity.Identity(
        user_id=str(row.user_id),
        practice_id=str(row.practice_id) if row.practice_id else None,
        roles=row.roles,
        session_id=str(row.id),
        ip=ip,
        extra={"restriction": row.restriction} if row.restriction else {},
    )
    payload = identity.encode(who, exp=exp)
    session.signed_payload = (exp, ip, payload)
    return payload


async def _maybe_sign_in(request: web.Request, gw: Gateway, upstream: aiohttp.ClientResponse) -> web.StreamResponse:
    """An auth-service answer with a top-level "grant" signs the user in; any other answer
    passes through unchanged (read whole only up to GRANT_BODY_LIMIT, streamed beyond)."""
    head, complete = await proxy.read_up_to(upstream, GRANT_BODY_LIMIT)
    if not complete:
        return await proxy.stream_back(request, upstream, prefix=head, before_prepare=security_headers)
    try:
        parsed = json.loads(head)
    except ValueError:
        parsed = None
    if isinstance(parsed, dict) and isinstance(parsed.get("grant"), dict):
        return await _sign_in(request, gw, upstream.status, parsed)
    return web.Response(status=upstream.status, body=head, headers=proxy.response_headers(upstream))


# ---- the web app -------------------------------------------------------------------------

async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")


async def spa_fallback(request: web.Request) -> web.StreamResponse:
    """Pages of the single-page app (/login, /reset, /register...) all load index.html."""
    if request.path.startswith("/api/") or "." in request.path.rsplit("/", 1)[-1]:
        raise ApiError(404, "not_found", "Not found.")
    return web.FileResponse(STATIC_DIR / "index.html")


def add_routes(app: web.Application) -> None:
    app.router.add_get(f"{PREFIX}/session", get_session)
    app.router.add_delete(f"{PREFIX}/session", delete_session)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi.openapi_json)  # public: the API's description
    app.router.add_route("*", PREFIX + "/{tail:.*}", api)
    app.router.add_get("/", index)
    app.router.add_static("/assets/", STATIC_DIR, show_index=False, follow_symlinks=False)
    app.router.add_get("/{tail:.*}", spa_fallback)
