"""The Terms of Use a registering user accepts: one plain-text file per version, shipped in
this package as data/terms/<version>.txt (e.g. data/terms/2026-01.txt). Registration keeps
the version accepted (users.terms_version); these routes show its text.

Safety of the version in the URL: it must match VERSION exactly (YYYY-MM, ASCII digits), and
is then only looked up in the set of texts read from the package at start. It never becomes
part of a file path, so "../", encoded slashes or odd characters can name nothing but 404.

A new version: add data/terms/<YYYY-MM>.txt, then set MSP_TERMS_VERSION to it. The app
refuses to start when the configured version has no text (require(), from add_routes)."""
from __future__ import annotations

import re
from functools import lru_cache
from importlib import resources

from aiohttp import web

from msp_shared.errors import ApiError

from .keys import AUTH_SETTINGS

VERSION = re.compile(r"[0-9]{4}-[0-9]{2}", re.ASCII)
MAX_VERSION_LENGTH = 7  # "YYYY-MM": anything longer is refused before the pattern runs
TERMS_NOT_FOUND = ApiError(404, "terms_not_found", "There are no Terms of Use with this version.")


def valid_version(version: str) -> bool:
    return len(version) <= MAX_VERSION_LENGTH and VERSION.fullmatch(version) is not None


@lru_cache(maxsize=1)
def texts() -> dict[str, str]:
    """Every shipped version and its text, read once from the package (also from a wheel:
    importlib.resources, not a path beside the source)."""
    folder = resources.files("msp_auth").joinpath("data/terms")
    found = {}
    for entry in folder.iterdir():
        version, dot, ext = entry.name.partition(".")
        if dot and ext == "txt" and valid_version(version):
            found[version] = entry.read_text(encoding="utf-8")
    return found


def text(version: str) -> str | None:
    """The text of `version`, or None for an unknown or malformed version."""
    if not valid_version(version):
        return None
    return texts().get(version)


def require(version: str) -> None:
    """At start: the version registration asks users to accept must have its text."""
    if text(version) is None:
        raise ValueError(f"terms_version {version!r} has no text: add msp_auth/data/terms/{version}.txt "
                         f"(shipped: {', '.join(sorted(texts())) or 'none'})")


def _answer(version: str, current: str) -> web.Response:
    body = text(version)
    if body is None:
        raise TERMS_NOT_FOUND
    return web.json_response({"version": version, "current": version == current, "text": body})


async def current_terms(request: web.Request) -> web.Response:
    """GET /terms (public): the version registration asks for, and its text."""
    current = request.app[AUTH_SETTINGS].terms_version
    return _answer(current, current)


async def terms_version(request: web.Request) -> web.Response:
    """GET /terms/{version} (public): that version's text; 404 for any other input."""
    return _answer(request.match_info["version"], request.app[AUTH_SETTINGS].terms_version)
