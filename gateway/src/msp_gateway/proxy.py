"""The HTTP hop to a service: header hygiene, streamed request bodies with a byte budget,
streamed responses.

Services never see the browser's cookies, its own X-MSP-Identity (the gateway's replaces it)
or hop-by-hop headers; a 300 MB upload flows through in chunks, never held in memory."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from msp_shared import identity as identity_header
from msp_shared import telemetry
from msp_shared.errors import ApiError

from . import csrf
from .deadlines import Deadlines

log = logging.getLogger(__name__)

CHUNK = 64 * 1024
SMALL_RESPONSE = 64 * 1024  # answers this small are read whole: cheaper than streaming

HOP_BY_HOP = frozenset(
    h.lower()
    for h in (
        "Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization", "Proxy-Connection",
        "TE", "Trailer", "Trailers", "Transfer-Encoding", "Upgrade",
    )
)
# Never forwarded to a service: the session lives in the gateway, identity is the gateway's word.
DROP_REQUEST = HOP_BY_HOP | {
    "host", "cookie", "content-length", "expect", identity_header.HEADER.lower(), csrf.HEADER.lower(),
    "x-forwarded-for", "x-forwarded-host", "x-forwarded-proto", "x-real-ip", "forwarded",
    "authorization", "traceparent", "tracestate", "baggage",
}
# Never passed back: services do not set cookies, and the gateway owns the framing.
DROP_RESPONSE = HOP_BY_HOP | {"set-cookie", "content-length", "server", "date"}


def _connection_named(headers) -> set[str]:  # noqa: ANN001
    named = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        named.update(t.strip().lower() for t in value.split(",") if t.strip())
    return named


def _drop(base: frozenset[str], headers) -> frozenset[str]:  # noqa: ANN001
    # headers named in Connection are hop-by-hop too; most requests have none
    return base | _connection_named(headers) if hdrs.CONNECTION in headers else base


def request_headers(request: web.Request, signed_identity: str, *, traced: bool = True) -> CIMultiDict[str]:
    """The headers a service gets. `traced`: whether a trace context may be current (else
    there is nothing to inject and the propagator is not asked)."""
    drop = _drop(DROP_REQUEST, request.headers)
    out: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in request.headers.items() if k.lower() not in drop])
    out[identity_header.HEADER] = signed_identity
    if traced:
        telemetry.inject_http(out)
    return out


def _kept_response_headers(upstream: aiohttp.ClientResponse) -> list[tuple[str, str]]:
    drop = _drop(DROP_RESPONSE, upstream.headers)
    return [(k, v) for k, v in upstream.headers.items() if k.lower() not in drop]


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    return CIMultiDict(_kept_response_headers(upstream))


class BodyBudget:
    """Counts a streamed body and stops it at the limit (client_max_size does not apply to
    request.content)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.seen = 0
        self.exceeded = False

    async def stream(self, content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
        # uploads pass in bigger pieces than answers: fewer loop turns and chunked-encoding frames per MB
        async for chunk in content.iter_chunked(4 * CHUNK):
            self.seen += len(chunk)
            if self.seen > self.limit:
                self.exceeded = True
                raise BodyTooLarge(self.limit)
            yield chunk


class BodyTooLarge(Exception):
    pass


def _unavailable() -> ApiError:
    return ApiError(502, "service_unavailable", "The service is temporarily unavailable; please try again.")


async def _next_chunk(upstream: aiohttp.ClientResponse, deadlines: Deadlines, silence: float | None) -> bytes:
    """The next piece of a streamed answer (b"" at its end), waiting at most `silence` seconds."""
    with deadlines.after(silence):
        return await upstream.content.read(CHUNK)


def read_whole(request: web.Request, upstream: aiohttp.ClientResponse) -> bool:
    """Whether an answer is read whole (small, or a HEAD) rather than streamed."""
    length = upstream.content_length
    return request.method == "HEAD" or (length is not None and length <= SMALL_RESPONSE)


async def read_up_to(
    upstream: aiohttp.ClientResponse, limit: int, *, deadlines: Deadlines, silence: float | None,
) -> tuple[bytes, bool]:
    """Read at most about `limit` bytes of the answer: (what was read, whether that is all)."""
    parts, size = [], 0
    try:
        while chunk := await _next_chunk(upstream, deadlines, silence):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(parts), False
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raise _unavailable()
    return b"".join(parts), True


def whole_response(upstream: aiohttp.ClientResponse, body: bytes) -> web.Response:
    """A service's answer read whole, passed on (the app's prepare hook adds the security headers)."""
    # the list goes straight into the response's own header dict (no intermediate copy)
    return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=_kept_response_headers(upstream))


async def stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse, *, prefix: bytes = b"", deadlines: Deadlines,
    silence: float | None,
) -> web.StreamResponse:
    """Pass a big (or unknown-length) answer on chunk by chunk, after `prefix` (what was
    already read of it); `silence`: the longest wait for the service's next chunk."""
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=response_headers(upstream))
    if upstream.content_length is not None:
        response.content_length = upstream.content_length
    await response.prepare(request)
    try:
        if prefix:
            await response.write(prefix)
        while chunk := await _next_chunk(upstream, deadlines, silence):
            await response.write(chunk)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        # The answer broke off mid-way and our headers are out: cut the client's connection
        # so a truncated body cannot look complete (aiohttp's write_eof then sees it closed).
        log.warning("upstream broke off mid-response", extra={"error": type(exc).__name__})
        if request.transport is not None:
            request.transport.abort()
        return response
    await response.write_eof()
    return response
