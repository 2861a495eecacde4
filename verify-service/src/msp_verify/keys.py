"""verify-service's own typed app keys (the shared ones are in msp_shared.web)."""
from __future__ import annotations

from aiohttp import web

from .transport import Transport

TRANSPORT = web.AppKey("transport", Transport)
