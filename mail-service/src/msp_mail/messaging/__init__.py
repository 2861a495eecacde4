"""Secure messages: compose with streamed encrypted attachments, Inbox/Sent, threads, read
receipts, recall, expiry, and the accounting of disclosures.

Wiring for the app factory: `setup(app)` (routes, storage, the auth-service client, the
sweeper) and `subscribe(app, bus)` inside the bus context's subscribe callback."""
from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from msp_shared.seal import Sealer
from msp_shared.web import SETTINGS

from ..blobstore import DiskBlobStore, S3BlobStore
from ..crypto import MasterKeys
from . import handlers, http
from .keys import BLOBS, HTTP, MASTER_KEYS, SEALER, SWEEPER
from .tasks import Sweeper, sweeper_ctx


async def storage_ctx(app: web.Application) -> AsyncIterator[None]:
    """The attachment blob store of the settings: local disk, or S3-compatible storage."""
    settings = app[SETTINGS]
    if settings.attachment_storage == "disk":
        app[BLOBS] = DiskBlobStore(settings.attachment_dir)
        yield
        return
    from aiobotocore.session import get_session

    secret = settings.s3_secret_access_key
    key_id = settings.s3_access_key_id
    async with get_session().create_client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=key_id.get_secret_value() if key_id else None,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    ) as client:
        app[BLOBS] = S3BlobStore(client, settings.s3_bucket, prefix=settings.s3_prefix)
        yield


async def http_client_ctx(app: web.Application) -> AsyncIterator[None]:
    async with aiohttp.ClientSession() as session:
        app[HTTP] = session
        yield


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[MASTER_KEYS] = MasterKeys.parse(
        settings.attachment_master_keys.get_secret_value(), settings.attachment_master_key_current
    )
    app[SEALER] = Sealer(settings.seal_key.get_secret_value())
    app.cleanup_ctx.append(storage_ctx)
    app.cleanup_ctx.append(http_client_ctx)
    app.cleanup_ctx.append(sweeper_ctx)
    http.add_routes(app)


def subscribe(app: web.Application, bus) -> None:  # noqa: ANN001 - msp_shared.bus.Bus
    handlers.subscribe(app, bus)


__all__ = ["BLOBS", "HTTP", "MASTER_KEYS", "SEALER", "SWEEPER", "Sweeper", "setup", "subscribe"]
