"""Small signed, expiring claims passed between services through the client, e.g. the
verification ticket auth-service gives a user (which phone may be sent a code) and the proof
verify-service gives back after a right code. HMAC-SHA256 with a purpose label, so a token
minted for one purpose is refused for another. Single use is the receiver's job (it records
the token's `jti`)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets


class InvalidToken(Exception):
    pass


def same_text(given: str, expected: str) -> bool:
    """Constant-time equality of a client-supplied string and the expected one. Bytes, because
    hmac.compare_digest refuses str with non-ASCII characters (a crafted token would be a 500);
    "surrogatepass" because aiohttp hands undecodable header bytes over as lone surrogates."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode("utf-8", "surrogatepass"))


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, purpose: str, payload: str) -> str:
    return b64encode(hmac.new(secret, f"{purpose}\n{payload}".encode("utf-8", "surrogatepass"), hashlib.sha256).digest())


def sign_claims(claims: dict, *, purpose: str, secret: bytes, now: float, ttl: int) -> str:
    body = {**claims, "exp": int(now) + ttl, "jti": claims.get("jti") or secrets.token_hex(12)}
    payload = b64encode(json.dumps(body, separators=(",", ":"), sort_keys=True).encode())
    return f"{payload}.{_mac(secret, purpose, payload)}"


def verify_claims(token: str, *, purpose: str, secret: bytes, now: float) -> dict:
    payload, sep, signature = (token or "").partition(".")
    if not sep or not same_text(signature, _mac(secret, purpose, payload)):
        raise InvalidToken("signature does not match")
    try:
        claims = json.loads(b64decode(payload))
    except ValueError as exc:
        raise InvalidToken("malformed") from exc
    if int(claims.get("exp", 0)) < now:
        raise InvalidToken("expired")
    return claims
