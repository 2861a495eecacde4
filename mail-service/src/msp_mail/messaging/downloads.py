"""Streaming a stored attachment back: decrypted chunk by chunk in constant memory, with HTTP
Range, a safe Content-Disposition, our own Content-Type and nosniff. A chunk that fails
authentication (a tampered or corrupted file) is never served: before the first byte the
answer is an error; mid-stream the connection is cut so the client cannot take a truncated
file for a complete one."""
from __future__ import annotations

import logging

from aiohttp import web

from msp_shared.errors import ApiError

from ..attachments import StoredAttachment, read_decrypted
from ..blobstore import BlobNotFound
from ..crypto import MasterKeys, TamperedError
from .ranges import RangeNotSatisfiable, content_disposition, parse_range  # noqa: F401 - re-exported

log = logging.getLogger(__name__)

DAMAGED = ApiError(
    422, "attachment_damaged",
    "This file failed its integrity check and cannot be served. It may have been damaged in storage.",
)


def range_of(request: web.Request, size: int) -> tuple[int, int] | None:
    """Raises RangeNotSatisfiable; answer it with `unsatisfiable(size)`."""
    return parse_range(request.headers.get("Range"), size)


def unsatisfiable(size: int) -> web.Response:
    return web.json_response(
        {"error": "range_not_satisfiable", "message": "The requested range is outside the file.", "details": {"size": size}},
        status=416, headers={"Content-Range": f"bytes */{size}"},
    )


async def serve(request: web.Request, row, blobs, keys: MasterKeys, byte_range: tuple[int, int] | None) -> web.StreamResponse:  # noqa: ANN001
    """`row` has id, filename, content_type, size, sha256, wrapped_key."""
    size = row["size"]
    start, end = byte_range or (0, size)
    stored = StoredAttachment(str(row["id"]), size, row["sha256"], row["wrapped_key"])
    chunks = read_decrypted(blobs, keys, stored, start, end)
    try:
        first = await anext(chunks, b"")
    except TamperedError:
        log.error("attachment failed its integrity check", extra={"attachment_id": str(row["id"])})
        raise DAMAGED from None
    except BlobNotFound:
        log.error("attachment blob missing", extra={"attachment_id": str(row["id"])})
        raise DAMAGED from None
    response = web.StreamResponse(status=206 if byte_range else 200)
    response.content_type = row["content_type"].split(";")[0]
    if "charset=" in row["content_type"]:
        response.charset = row["content_type"].split("charset=")[1]
    response.content_length = end - start
    response.headers["Accept-Ranges"] = "bytes"
    response.headers["Content-Disposition"] = content_disposition(row["filename"])
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "private, no-store"
    response.headers["Content-Security-Policy"] = "default-src 'none'; sandbox"
    if byte_range:
        response.headers["Content-Range"] = f"bytes {start}-{end - 1}/{size}"
    await response.prepare(request)
    try:
        if first:
            await response.write(first)
        async for chunk in chunks:
            await response.write(chunk)
    except TamperedError:
        log.error("attachment failed its integrity check mid-stream", extra={"attachment_id": str(row["id"])})
        if request.transport is not None:
            request.transport.abort()
        return response
    finally:
        await chunks.aclose()
    await response.write_eof()
    return response
