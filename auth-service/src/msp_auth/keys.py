"""auth-service's typed app keys (the shared ones are in msp_shared.web)."""
from __future__ import annotations

from aiohttp import web

from msp_shared.seal import Sealer

from .config import AuthSettings
from .hashing import Hasher

AUTH_SETTINGS = web.AppKey("auth_settings", AuthSettings)
HASHER = web.AppKey("hasher", Hasher)
SEALER = web.AppKey("sealer", Sealer)
BLOCKLIST = web.AppKey("blocklist", frozenset)
