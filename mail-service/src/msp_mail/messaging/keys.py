"""Typed app keys of secure messages and Collaborator (the shared ones are in msp_shared.web)."""
from __future__ import annotations

from typing import Any

import aiohttp
from aiohttp import web

from msp_shared.seal import Sealer

from ..crypto import MasterKeys

BLOBS = web.AppKey("attachment_blobs", Any)  # msp_mail.blobstore.BlobStore
MASTER_KEYS = web.AppKey("attachment_master_keys", MasterKeys)
SEALER = web.AppKey("messaging_sealer", Sealer)
HTTP = web.AppKey("messaging_http", aiohttp.ClientSession)  # calls to auth-service
SWEEPER = web.AppKey("messaging_sweeper", Any)  # msp_mail.messaging.tasks.Sweeper
