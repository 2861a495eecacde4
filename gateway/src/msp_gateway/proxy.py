"""The HTTP hop to a service: header hygiene, streamed request bodies with a byte budget,
streamed responses.

Services never see the browser's cookies, its own X-MSP-Identity (the gateway's replaces it)
or hop-by-hop headers; a 300 MB upload flows through in chunks, never held in memory."""
from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict

from msp_shared import identity as identity_header
from msp_shared import telemetry
from msp_shared.errors import ApiError

from . import csrf

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


def request_headers(request: web.Request, signed_identity: str) -> CIMultiDict[str]:
    drop = _drop(DROP_REQUEST, request.headers)
    out: CIMultiDict[str] = CIMultiDict([(k, v) for k, v in request.headers.items() if k.lower() not in drop])
    out[identity_header.HEADER] = signed_identity
    telemetry.inject_http(out)
    return out


def response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    drop = _drop(DROP_RESPONSE, upstream.headers)
    return CIMultiDict([(k, v) for k, v in upstream.headers.items() if k.lower() not in drop])


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


async def read_up_to(upstream: aiohttp.ClientResponse, limit: int) -> tuple[bytes, bool]:
    """Read at most about `limit` bytes of the answer: (what was read, whether that is all)."""
    parts, size = [], 0
    try:
        async for chunk in upstream.content.iter_chunked(CHUNK):
            parts.append(chunk)
            size += len(chunk)
            if size > limit:
                return b"".join(parts), False
    except (aiohttp.ClientError, asyncio.TimeoutError):
        raise ApiError(502, "service_unavailable", "The service is temporarily unavailable; please try again.")
    return b"".join(parts), True


async def stream_back(
    request: web.Request, upstream: aiohttp.ClientResponse, *, prefix: bytes = b"",
    before_prepare: Callable[[web.Request, web.StreamResponse], None] | None = None,
) -> web.StreamResponse:
    """Pass the service's answer on: small ones whole, big ones chunk by chunk (after
    `prefix`, what was already read of it). `before_prepare` completes a streamed answer's
    headers before they go out."""
    headers = response_headers(upstream)
    length = upstream.content_length
    if not prefix and (request.method == "HEAD" or (length is not None and length <= SMALL_RESPONSE)):
        try:
            body = await upstream.read()
        except (aiohttp.ClientError, asyncio.TimeoutError):
            raise ApiError(502, "service_unavailable", "The service is temporarily unavailable; please try again.")
        return web.Response(status=upstream.status, reason=upstream.reason, body=body, headers=headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    if length is not None:
        response.content_length = length
    if before_prepare is not None:
        before_prepare(request, response)
    await response.prepare(request)
    try:
        if prefix:
            await response.write(prefix)
        async for chunk in upstream.content.iter_chunked(CHUNK):
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
