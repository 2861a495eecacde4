"""The gateway's signed identity header.

Services never see cookies: the gateway authenticates the session and forwards a short-lived
header `X-MSP-Identity: <payload>.<signature>` where payload is base64url JSON and the
signature an HMAC-SHA256 over the payload, the HTTP method and the path. Binding method and
path means a captured header cannot be replayed against another endpoint; the expiry bounds
replay against the same one."""
from __future__ import annotations

import base64
import hmac
import json
from dataclasses import dataclass, field

from .signed import same_text

HEADER = "X-MSP-Identity"


class IdentityError(Exception):
    """The header is missing, malformed, forged, expired, or for another request."""


@dataclass(frozen=True)
class Identity:
    user_id: str | None  # None: anonymous request that came through the gateway
    practice_id: str | None = None
    roles: tuple[str, ...] = ()
    session_id: str | None = None
    ip: str | None = None
    expires_at: int = 0
    extra: dict = field(default_factory=dict, compare=False)

    @property
    def authenticated(self) -> bool:
        return self.user_id is not None

    def has_role(self, role: str) -> bool:
        return role in self.roles


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(secret: bytes, payload: str, method: str, path: str) -> str:
    msg = f"{payload}\n{method.upper()}\n{path}".encode("utf-8", "surrogatepass")  # see same_text
    return _b64(hmac.digest(secret, msg, "sha256"))  # one-shot C path: same MAC as hmac.new


def sign(identity: Identity, *, secret: bytes, method: str, path: str, now: float, ttl: int) -> str:
    return sign_payload(encode(identity, exp=int(now) + ttl), secret=secret, method=method, path=path)


def encode(identity: Identity, *, exp: int) -> str:
    """The header's payload part. It depends on the request only through method and path,
    which the MAC binds, so a caller may reuse one payload for every request with the same
    identity and expiry (the gateway does, per session and second)."""
    claims = {
        "sub": identity.user_id,
        "pid": identity.practice_id,
        "roles": list(identity.roles),
        "sid": identity.session_id,
        "ip": identity.ip,
        "exp": exp,
    }
    if identity.extra:
        claims["x"] = identity.extra
    return _b64(json.dumps(claims, separators=(",", ":")).encode())


def sign_payload(payload: str, *, secret: bytes, method: str, path: str) -> str:
    """The full header for an encoded payload: the MAC binds it to this method and path."""
    return f"{payload}.{_mac(secret, payload, method, path)}"


def verify(header: str | None, *, secret: bytes, method: str, path: str, now: float) -> Identity:
    if not header:
        raise IdentityError("missing identity header")
    payload, sep, signature = header.partition(".")
    if not sep:
        raise IdentityError("malformed identity header")
    if not same_text(signature, _mac(secret, payload, method, path)):
        raise IdentityError("identity signature does not match this request")
    try:
        claims = json.loads(_unb64(payload))
    except ValueError as exc:
        raise IdentityError("malformed identity payload") from exc
    if int(claims.get("exp", 0)) < now:
        raise IdentityError("identity header expired")
    return Identity(
        user_id=claims.get("sub"),
        practice_id=claims.get("pid"),
        roles=tuple(claims.get("roles") or ()),
        session_id=claims.get("sid"),
        ip=claims.get("ip"),
        expires_at=int(claims["exp"]),
        extra=claims.get("x") or {},
    )
