"""Typed app keys of billing-service's own resources."""
from __future__ import annotations

from aiohttp import web

from msp_shared.seal import Sealer

from .payments import Payments

PAYMENTS = web.AppKey("payments", Payments)
SEALER = web.AppKey("sealer", Sealer)
