"""Collaborator: referral cases between practices (see http.py)."""
from __future__ import annotations

from aiohttp import web


def setup(app: web.Application) -> None:
    from . import http

    http.add_routes(app)
