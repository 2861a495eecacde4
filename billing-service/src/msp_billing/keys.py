"""Typed app keys of billing-service's own resources."""
from __future__ import annotations

import aiohttp
from aiohttp import web

from msp_shared.seal import Sealer

from .payments import Payments

PAYMENTS = web.AppKey("payments", Payments)
SEALER = web.AppKey("sealer", Sealer)
AUTH_HTTP = web.AppKey("auth_http", aiohttp.ClientSession)  # calls to auth-service (accounts.py)
