"""The gateway's HTTP side: the session step of every /api/ route (cookie → session, CSRF,
cross-site checks), the session endpoints it answers itself, the generic /api/v1 forwarder
with rate limits and body limits, security headers, and the web app's files."""
from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import hdrs, web
from yarl import URL

from msp_shared import identity, telemetry
from msp_shared.clock import Clock
from msp_shared.errors import ApiError, slow_down, too_large
from msp_shared.web import exception_response

from . import csrf, openapi, proxy, ratelimit
from .client_ip import Network, client_ip
from .config import GatewaySettings
from .deadlines import Deadlines
from .routing import PREFIX, UNSAFE_METHODS, is_upload, service_for
from .session_rules import SessionPolicy, idle_expires_at, seconds_left
from .sessions import BadGrant, GrantRevoked, Session, SessionManager

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
GRANT_BODY_LIMIT = 1024 * 1024
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

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
    "/terms",
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
_CSP = "Content-Security-Policy"


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
    deadlines: Deadlines
    sessions: SessionManager | None = None
    client: aiohttp.ClientSession | None = None
    rate_store: Any = None
    timeout: aiohttp.ClientTimeout | None = None  # connecting to a service; reads: see _forward()
    # The security headers set on an answer, by (an /api/ answer?, CSP still to add?): each
    # answer takes one update() of a ready dict.
    answer_headers: dict[tuple[bool, bool], dict[str, str]] = field(init=False)

    def __post_init__(self) -> None:
        fixed = {k: v for k, v in SECURITY_HEADERS.items() if k != _CSP}
        if self.secure:
            fixed["Strict-Transport-Security"] = HSTS
        api = {**fixed, "Cache-Control": "no-store"}
        csp = {_CSP: SECURITY_HEADERS[_CSP]}
        self.answer_headers = {(True, False): api, (True, True): {**csp, **api},
                               (False, False): fixed, (False, True): {**csp, **fixed}}


GATEWAY = web.AppKey("gateway", Gateway)


# ---- dispatch, the session step and response headers -----------------------------------
#
# No aiohttp middleware: each one is a layer per request (and any middleware also brings
# aiohttp's own current-app layer), which the proxy hop is too cheap to carry. Instead:
# - every /api/ route is wrapped by `_api_route` (tracing when wanted, the session step,
#   errors in the API's shape), every page route by `_page_route` (errors in that shape);
# - catch-all routes for any path and method, so the router never answers on its own;
# - security headers are added by the app's on_response_prepare hook, which runs for every
#   answer the app prepares: API, pages, files, health probes, errors and redirects alike.

def _anonymous_ok(upstream_path: str) -> bool:
    return any(upstream_path == p or upstream_path.startswith(p + "/") for p in _ANONYMOUS_OK)


def _error_answer(request: web.Request, exc: Exception) -> web.StreamResponse:
    """The API-shaped answer to an exception; a redirect (HTTPException below 400) propagates."""
    error = exception_response(request, exc)
    if error is None:
        raise exc
    return error


def _api_route(handler: Handler, *, idle_check: bool = False) -> Handler:
    """An /api/ handler behind the session step, with errors in the API's shape. A SERVER span
    (or an incoming trace context) goes through the shared tracing middleware.

    `idle_check`: the route's GET takes `?activity=none` (only GET /session: see get_session)."""

    async def route(request: web.Request, traced: bool = False) -> web.StreamResponse:
        if not traced and (telemetry.spans_wanted() or "traceparent" in request.headers):
            return await telemetry.tracing_middleware(request, partial(route, traced=True))
        try:
            await _session_step(request, idle_check)
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _error_answer(request, exc)

    return route


def _page_route(handler: Handler) -> Handler:
    """A handler outside /api/ (the web app and its files), with errors in the API's shape."""

    async def route(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            return _error_answer(request, exc)

    return route


# The session cookie: aiohttp's request.cookies parses every cookie of the header into
# Morsels (a few µs). A header made only of plain name=value pairs (what browsers send for the
# gateway's own cookie, a token_urlsafe value) is split directly, with the same result: the
# last pair of that name wins, as in request.cookies. Anything else takes aiohttp's parser.
_PLAIN_COOKIES = re.compile(r"[\w.-]+=[\w.-]*(?:; ?[\w.-]+=[\w.-]*)*", re.ASCII)


def session_cookie(request: web.Request, name: str) -> str | None:
    header = request.headers.get(hdrs.COOKIE)
    if not header:
        return None
    if _PLAIN_COOKIES.fullmatch(header) is None:
        return request.cookies.get(name)
    prefix, value = name + "=", None
    for pair in header.split(";"):
        pair = pair.lstrip(" ")
        if pair.startswith(prefix):
            value = pair[len(prefix):]
    return value


def _idle_check(request: web.Request) -> bool:
    """Whether a GET of a route that allows it asks not to count as activity (?activity=none).
    Any other value is refused rather than quietly counted."""
    values = request.query.getall("activity", ())
    if not values:
        return False
    if values == ["none"]:
        return True
    raise ApiError(400, "invalid_input", "Some fields are missing or invalid.",
                   {"fields": {"activity": "The only value is none (an idle check that is not activity)."}})


async def _session_step(request: web.Request, idle_check: bool = False) -> None:
    """Cookie → session, cross-site and CSRF checks, for every /api/ request.

    Every request counts as activity (moves the session's idle expiry) except a GET of a route
    wrapped with `idle_check` (GET /session only) that carries `?activity=none`. The flag on
    any other route or method (HEAD, POST, DELETE...) is ignored: that request is activity."""
    gw = request.app[GATEWAY]
    assert gw.sessions is not None
    request[CLEAR_COOKIE] = False
    headers = request.headers
    request[CLIENT_IP] = client_ip(request.remote, headers.get("X-Forwarded-For") if gw.proxies else None, gw.proxies)
    activity = not (idle_check and request.method == "GET" and request.query_string and _idle_check(request))
    cookie = session_cookie(request, gw.settings.session_cookie_name)
    # Refused before the session is even looked at (nor its activity counted): a state change,
    # or any request carrying the session cookie, that a browser says another site made. Reads
    # have effects too (opening a message marks it opened): a link elsewhere must not set them
    # off. Allowed: the public URL's origin, configured extras, and the origin the browser
    # itself addressed (Host cannot be set by a page, so a foreign page never matches it).
    origin, fetch_site = headers.get("Origin"), headers.get("Sec-Fetch-Site")
    if (origin or fetch_site) and (cookie or request.method in UNSAFE_METHODS) and csrf.cross_site(
        origin, fetch_site, gw.allowed_origins | {f"{request.scheme}://{request.host}".lower()}
    ):
        raise ApiError(403, "cross_site_request", "Requests from other sites are not accepted.")
    session: Session | None = None
    if cookie:
        session, why = await gw.sessions.resolve(cookie, gw.clock.now(), activity=activity)
        if session is None:
            request[ENDED] = why
            request[CLEAR_COOKIE] = True
    request[SESSION] = session
    request[COOKIE] = cookie if session else None

    if request.method in UNSAFE_METHODS:
        # Signing in again (as someone else) needs no token: it is guarded like every
        # signed-out request, by JSON and the origin checks, and rotates the session.
        signing_in = request.method == "POST" and request.path == f"{PREFIX}/session"
        if session is not None and not signing_in:
            assert cookie is not None
            if not csrf.token_ok(headers.get(csrf.HEADER), csrf.token_for(cookie, gw.csrf_key)):
                raise ApiError(403, "csrf_failed", "The request is missing its security token; reload the page.")
        elif request.body_exists and not csrf.is_json(headers.get("Content-Type")):
            raise ApiError(415, "json_required", "This request must be sent as JSON.")

    if cookie and session is None and not _anonymous_ok(request.path[len(PREFIX):]):
        raise ApiError(401, "session_expired", "Your session has ended. Please sign in again.")


def security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Security and cache headers on every answer, set before it is prepared."""
    gw = request.app[GATEWAY]
    headers = response.headers
    api = request.path.startswith("/api/")
    # a service may send a stricter CSP (attachments): it stays
    headers.update(gw.answer_headers[api, _CSP not in headers])
    if not api and "Cache-Control" not in headers:
        headers["Cache-Control"] = "no-cache"
    if request.get(CLEAR_COOKIE):
        # A raw header: the response's own cookies (none when clearing) are added at prepare.
        secure = "; Secure" if gw.secure else ""
        response.headers.add(
            "Set-Cookie",
            f"{gw.settings.session_cookie_name}=; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=0; Path=/"
            f"; HttpOnly; SameSite={gw.settings.session_cookie_samesite}{secure}",
        )


async def _on_response_prepare(request: web.Request, response: web.StreamResponse) -> None:
    security_headers(request, response)


# ---- session endpoints -----------------------------------------------------------------------

def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def session_state(gw: Gateway, cookie: str, session: Session) -> dict[str, Any]:
    row = session.row
    return {
        "csrf_token": csrf.token_for(cookie, gw.csrf_key),
        "restriction": row.restriction_at(gw.clock.now()),
        "idle_expires_at": _iso(idle_expires_at(gw.policy, created_at=row.created_at, last_seen_at=session.last_seen_at)),
        "expires_at": _iso(row.created_at + gw.policy.absolute),
    }


async def get_session(request: web.Request) -> web.Response:
    """The signed-in user, the session's CSRF token, restriction and expiry times, and
    `idle_seconds_left`: whole seconds (rounded up) from this answer until the session ends
    without further activity (idle or absolute limit, the nearer one), counted on the
    gateway's clock so a client schedules its next look relative to now, not by its own clock.

    Like every request this counts as activity, unless sent as `GET /session?activity=none`:
    the web app's idle check, which only looks. It still ends a session past its idle or
    absolute limit (401 session_expired) but never moves last_seen_at, so idle tabs and
    browser clocks running ahead cannot keep a session alive. Only this GET takes the flag
    (see _session_step); another value of `activity` is refused with 400 invalid_input."""
    gw = request.app[GATEWAY]
    session = request[SESSION]
    if session is None:
        if request.get(ENDED):
            raise ApiError(401, "session_expired", "Your session has ended. Please sign in again.")
        raise ApiError(401, "not_signed_in", "Please sign in.")
    row = session.row
    left = seconds_left(gw.policy, created_at=row.created_at, last_seen_at=session.last_seen_at, now=gw.clock.now())
    body = {
        "user": {
            "id": str(row.user_id),
            "practice_id": str(row.practice_id) if row.practice_id else None,
            "roles": list(row.roles),
        },
        **session_state(gw, request[COOKIE], session),
        "idle_seconds_left": left,
    }
    return web.json_response(body)


async def delete_session(request: web.Request) -> web.Response:
    """Logout. Idempotent: without a live session it only clears the cookie."""
    gw = request.app[GATEWAY]
    assert gw.sessions is not None
    if request[SESSION] is not None:
        await gw.sessions.end_cookie(request[COOKIE], reason="logout", ip=request[CLIENT_IP])
    request[CLEAR_COOKIE] = True
    return web.Response(status=204)


async def _sign_in(request: web.Request, gw: Gateway, status: int, data: dict[str, Any]) -> web.Response:
    """auth-service granted a session (login, registration, password reset): rotate any
    previous session, create the new one, answer without the grant, set the cookie."""
    assert gw.sessions is not None
    if request[SESSION] is not None:
        await gw.sessions.end_cookie(request[COOKIE], reason="replaced", ip=request[CLIENT_IP])
    try:
        cookie, session = await gw.sessions.create(
            data["grant"], gw.clock.now(), client_ip=request[CLIENT_IP], user_agent=request.headers.get("User-Agent")
        )
    except BadGrant:
        log.error("auth-service sent an unusable grant", extra={"path": request.path})
        raise ApiError(502, "service_unavailable", "The sign-in service answered unexpectedly.")
    except GrantRevoked:
        # The account changed (password, lock, role) while this sign-in was on its way.
        log.warning("grant older than a revocation refused", extra={"path": request.path})
        raise ApiError(401, "session_expired", "Your session has ended. Please sign in again.")
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
    """The rule's limits per client IP, then per account, counted in one store call (one
    database round trip): an address over its limit does not spend the account's budget."""
    now = gw.clock.now()
    window = timedelta(seconds=gw.settings.rate_limit_window_seconds)
    checks = [(f"{rule.name}:ip:{request[CLIENT_IP]}", rule.per_ip)]
    # The account a request is about: the email it names (login, forgot password), else the
    # signed-in user.
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
        checks.append((f"{rule.name}:{account}", rule.per_account))
    wait = await gw.rate_store.hit_all(checks, window=window, now=now)
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


async def _forward(request: web.Request) -> web.StreamResponse:
    """The generic /api/v1 forwarder (routed as `api`, behind the session step)."""
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
    length = request.content_length
    if length is not None and length > limit:
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
    # No span or incoming trace context (see _api_route): no trace context to pass on.
    traced = telemetry.spans_wanted() or "traceparent" in request.headers
    headers = proxy.request_headers(request, signed, traced=traced)
    if upload and length is not None:
        headers["Content-Length"] = str(length)  # known size: no chunking
    url = URL(gw.upstreams[service] + raw_path[len(PREFIX):], encoded=True)

    # A service that never answers: the answer must start (and a small one be complete) within
    # the read timeout; a streamed one may then fall silent at most that long between chunks.
    # One deadline per request (deadlines.py) instead of aiohttp's sock_read, which re-arms a
    # timer on every read. Uploads have none: the service reads the whole body before it answers.
    wait = None if upload else gw.settings.upstream_read_timeout_seconds
    upstream: aiohttp.ClientResponse | None = None
    whole: bytes | None = None
    try:
        with gw.deadlines.after(wait):
            upstream = await gw.client.request(
                method, url, headers=headers, data=data, allow_redirects=False, timeout=gw.timeout,
            )
            if proxy.read_whole(request, upstream):
                whole = await upstream.read()
    except aiohttp.ClientConnectorError:
        log.warning("upstream unreachable", extra={"service": service})
        raise _unavailable(503)
    except (aiohttp.ClientError, asyncio.TimeoutError, proxy.BodyTooLarge) as exc:
        if upstream is not None:
            upstream.close()
        if budget is not None and budget.exceeded:
            raise too_large("The request body is too large.", limit=limit)
        log.warning("upstream failed", extra={"service": service, "error": type(exc).__name__})
        raise _unavailable(502)
    except BaseException:  # cancelled, or anything else: the connection must not leak
        if upstream is not None:
            upstream.close()
        raise

    async with upstream:
        if service == "auth" and method in UNSAFE_METHODS and upstream.status in (200, 201) \
                and csrf.is_json(upstream.headers.get("Content-Type")):
            return await _maybe_sign_in(request, gw, upstream, whole, wait)
        if whole is not None:
            return proxy.whole_response(upstream, whole)
        return await proxy.stream_back(request, upstream, deadlines=gw.deadlines, silence=wait)


api = _api_route(_forward)


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
        extra={"restriction": restriction} if (restriction := row.restriction_at(gw.clock.now())) else {},
    )
    payload = identity.encode(who, exp=exp)
    session.signed_payload = (exp, ip, payload)
    return payload


async def _maybe_sign_in(
    request: web.Request, gw: Gateway, upstream: aiohttp.ClientResponse, whole: bytes | None, silence: float | None,
) -> web.StreamResponse:
    """An auth-service answer with a top-level "grant" signs the user in; any other answer
    passes through unchanged (read whole only up to GRANT_BODY_LIMIT, streamed beyond)."""
    if whole is not None:
        head = whole
    else:
        head, complete = await proxy.read_up_to(upstream, GRANT_BODY_LIMIT, deadlines=gw.deadlines, silence=silence)
        if not complete:
            return await proxy.stream_back(request, upstream, prefix=head, deadlines=gw.deadlines, silence=silence)
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


def _asset_files() -> dict[str, Path]:
    """The web app's files by their path under /assets/: regular files only (no symlinks),
    listed once at start. Serving from this list cannot reach outside the directory."""
    return {
        path.relative_to(STATIC_DIR).as_posix(): path
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and not path.is_symlink()
    }


def _asset_handler(files: dict[str, Path]) -> Handler:
    async def asset(request: web.Request) -> web.FileResponse:
        path = files.get(request.match_info["name"])
        if path is None:
            raise ApiError(404, "not_found", "Not found.")
        return web.FileResponse(path)

    return asset


async def _not_api_v1(request: web.Request) -> web.StreamResponse:
    """/api/ paths outside /api/v1/: after the session step like any /api/ path, nothing."""
    if request.method in ("GET", "HEAD"):
        raise ApiError(404, "not_found", "Not found.")
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])


async def _no_route(request: web.Request) -> web.StreamResponse:
    """Every path has a GET route: anything reaching this is a method the path does not take."""
    raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"])


def add_routes(app: web.Application) -> None:
    app.on_response_prepare.append(_on_response_prepare)
    app.router.add_get(f"{PREFIX}/session", _api_route(get_session, idle_check=True))
    app.router.add_delete(f"{PREFIX}/session", _api_route(delete_session))
    app.router.add_get(f"{PREFIX}/openapi.json", _api_route(openapi.openapi_json))  # public: the API's description
    app.router.add_route("*", PREFIX + "/{tail:.*}", api)
    app.router.add_route("*", "/api/{tail:.*}", _api_route(_not_api_v1))
    app.router.add_get("/", _page_route(index))
    app.router.add_get("/assets/{name:.+}", _page_route(_asset_handler(_asset_files())))
    app.router.add_get("/{tail:.*}", _page_route(spa_fallback))
    app.router.add_route("*", "/{tail:.*}", _page_route(_no_route))
