"""CSRF rules, free of I/O.

Cookie-authenticated state changes carry `X-CSRF-Token`. The token is an HMAC of the session
cookie under a gateway key, so nothing extra is stored and a database reader cannot derive
it; compared in constant time. Requests without a session (login, registration, reset) are
protected by requiring JSON (a cross-site form cannot send it without a CORS preflight, which
the gateway never grants) and by refusing browser requests whose Origin or Sec-Fetch-Site says
they come from another site."""
from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlsplit

from msp_shared.signed import same_text

HEADER = "X-CSRF-Token"


def token_for(cookie_value: str, key: bytes) -> str:
    return hmac.new(key, b"csrf\n" + cookie_value.encode(), hashlib.sha256).hexdigest()


def token_ok(sent: str | None, expected: str) -> bool:
    return bool(sent) and same_text(sent, expected)


def origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}".lower()


def cross_site(origin: str | None, fetch_site: str | None, allowed: frozenset[str]) -> bool:
    """True when a browser tells us the request was made by another site."""
    if fetch_site and fetch_site.lower() not in ("same-origin", "none"):
        return True
    if origin and origin.lower() not in allowed:
        return True
    return False


def is_json(content_type: str | None) -> bool:
    media = (content_type or "").split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))
