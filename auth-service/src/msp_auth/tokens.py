"""Single-use link tokens (invitation, password reset, email change): random, sent once,
stored only as a sha256 digest, compared in constant time."""
from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> tuple[str, bytes]:
    """A fresh token for the link, and the digest to store."""
    raw = secrets.token_urlsafe(32)
    return raw, digest(raw)


def digest(raw: str) -> bytes:
    return hashlib.sha256(raw.encode()).digest()


def same(stored: bytes, presented: str) -> bool:
    return hmac.compare_digest(stored, digest(presented))
