"""Which service owns which part of /api/v1, and which routes carry large bodies.

The gateway maps `/api/v1/<area>/rest` to `<service>/<area>/rest`: services have no /api/v1
prefix. `admin` is split by its second segment (admin/messages belongs to mail-service,
admin/billing to billing-service, the rest of admin to auth-service)."""
from __future__ import annotations

import re

PREFIX = "/api/v1"

AREAS = {
    "session": "auth",
    "password": "auth",
    "invitations": "auth",
    "registrations": "auth",
    "terms": "auth",
    "me": "auth",
    "practice": "auth",
    "admin": "auth",
    "verifications": "verify",
    "messages": "mail",
    "cases": "mail",
    "billing": "billing",
}
ADMIN_AREAS = {"messages": "mail", "billing": "billing"}

# Routes whose bodies are streamed with the upload limit instead of buffered with the JSON one.
_UPLOADS = re.compile(r"^/(messages|messages/[^/]+/replies|cases/[^/]+/files(/.*)?)$")
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def service_for(upstream_path: str) -> str | None:
    """The service owning an upstream path ('/messages/1'), or None for no such area.
    Dot segments are refused so a path cannot climb into another area."""
    segments = upstream_path.split("/")[1:]
    if not segments or "" in segments[:2] or "." in segments or ".." in segments:
        return None
    area = segments[0]
    if area == "admin" and len(segments) > 1 and segments[1] in ADMIN_AREAS:
        return ADMIN_AREAS[segments[1]]
    return AREAS.get(area)


def is_upload(method: str, upstream_path: str) -> bool:
    return method in ("POST", "PUT") and bool(_UPLOADS.match(upstream_path))
