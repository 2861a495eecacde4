"""The public API's OpenAPI 3.1 document, served at GET /api/v1/openapi.json.

Where it comes from: each service describes its own routes in a short, hand-written
`openapi.yaml` beside its code (msp_auth/openapi.yaml, ...; the gateway's own session
endpoints in msp_gateway/openapi.yaml). `build()` turns those into the document: it adds the
/api/v1 prefix, the path parameters (read from the path itself), the shared error shape, the
security schemes, and the request body schemas generated from the pydantic models the
handlers really read (`body: module:Model`), so those cannot drift from the code.

The gateway image holds neither the services' code nor PyYAML, so the built document is kept
in the package as `openapi.json` and served from there. After changing a route or its docs:

    uv run python -m msp_gateway.openapi      # rewrites gateway/src/msp_gateway/openapi.json

tests/gateway/test_openapi.py fails when the file is stale, when a route has no docs, or
when the docs name a route that does not exist."""
from __future__ import annotations

import copy
import importlib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from . import ratelimit
from .config import GatewaySettings
from .routing import PREFIX

DOCUMENT = "openapi.json"
# The spec sources, in document order: (package holding openapi.yaml, component prefix).
SOURCES = (
    ("msp_gateway", "gateway"),
    ("msp_auth", "auth"),
    ("msp_verify", "verify"),
    ("msp_mail", "mail"),
    ("msp_billing", "billing"),
)
METHODS = ("get", "put", "post", "patch", "delete")
UNSAFE = frozenset({"put", "post", "patch", "delete"})
_PARAM = re.compile(r"{([^}/]+)}")

ERROR_SCHEMA = {
    "type": "object",
    "description": "The one error shape of the whole API.",
    "required": ["error", "message", "details"],
    "properties": {
        "error": {"type": "string", "description": "A snake_case code, e.g. invalid_input, not_signed_in.",
                  "examples": ["invalid_input"]},
        "message": {"type": "string", "description": "A sentence to show the user."},
        "details": {"type": "object", "description": "Extra facts: per-field messages under `fields`, "
                    "`retry_after` seconds on 429, ...", "additionalProperties": True},
    },
}

BASE: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "SecurePractice API",
        "version": "1",
        "description": (
            "The public API, all under /api/v1 on the portal's address. Signed-in requests carry "
            "the `msp_session` cookie set by sign-in; state-changing ones (POST, PUT, PATCH, DELETE) "
            "also carry the `X-CSRF-Token` header with the `csrf_token` sign-in returned. Requests "
            "without a session must be JSON. Every error has the body "
            '`{"error": "snake_case_code", "message": "...", "details": {...}}`. '
            "Any request the gateway forwards may also answer 502 or 503 service_unavailable. "
            "Health probes (/healthz, /readyz) are outside the API and not listed."
        ),
    },
    "servers": [{"url": "/"}],
    "components": {
        "schemas": {"Error": ERROR_SCHEMA},
        "securitySchemes": {
            "session": {"type": "apiKey", "in": "cookie", "name": "msp_session",
                        "description": "The session cookie (HttpOnly) set by sign-in."},
            "csrf": {"type": "apiKey", "in": "header", "name": "X-CSRF-Token",
                     "description": "The session's csrf_token; required on state-changing requests."},
        },
    },
    "security": [{"session": []}],
}

ROLE_OR_RESTRICTION = "not allowed: the wrong role, or a restricted session (password_expired, verification_required)"


def _common_errors(method: str, *, public: bool, csrf: bool, has_body: bool, limited: bool) -> dict[str, str]:
    """The errors the gateway and the shared service code give on top of an operation's own."""
    errors = {}
    if has_body:
        errors["400"] = "invalid_input: a field is missing or invalid (details.fields names them)."
        errors["413"] = "too_large: the body is over the limit."
    if not public:
        errors["401"] = "not_signed_in or session_expired."
    if method in UNSAFE:
        if not public:
            errors["403"] = f"csrf_failed (missing or wrong X-CSRF-Token), cross_site_request, or {ROLE_OR_RESTRICTION}."
        elif csrf:
            errors["403"] = "cross_site_request, or csrf_failed when sent with a session but without its X-CSRF-Token."
        else:
            errors["403"] = "cross_site_request: sent from another site."
        if public and has_body:
            errors["415"] = "json_required: requests without a session must be JSON."
    elif not public:
        errors["403"] = f"cross_site_request (a signed-in request another site made), or {ROLE_OR_RESTRICTION}."
    if limited:
        errors["429"] = "rate_limited: too many attempts; details.retry_after says when to try again."
    return errors


# ---- serving -----------------------------------------------------------------------------

@lru_cache(maxsize=1)
def document_bytes() -> bytes:
    """The built document as shipped in this package."""
    return resources.files("msp_gateway").joinpath(DOCUMENT).read_bytes()


def document() -> dict[str, Any]:
    return json.loads(document_bytes())


async def openapi_json(request: web.Request) -> web.Response:
    return web.Response(body=document_bytes(), content_type="application/json")


# ---- building (development only: needs PyYAML and every service's package) ----------------

def _model(ref: str, prefix: str, components: dict[str, Any]) -> dict[str, Any]:
    """A `module:Class` pydantic model as a schema reference; its schema (and nested models)
    go to components/schemas as `<prefix>.<Name>`."""
    module, _, name = ref.partition(":")
    model = getattr(importlib.import_module(module), name)
    template = f"#/components/schemas/{prefix}.{{model}}"
    schema = model.model_json_schema(ref_template=template)
    defs = schema.pop("$defs", {})
    for def_name, def_schema in [*defs.items(), (model.__name__, schema)]:
        key = f"{prefix}.{def_name}"
        if key in components and components[key] != def_schema:
            raise ValueError(f"two different models are both named {key}: rename one")
        components[key] = def_schema
    return {"$ref": f"#/components/schemas/{prefix}.{model.__name__}"}


def _response(status: str, spec: Any) -> dict[str, Any]:
    if isinstance(spec, dict):  # a full OpenAPI response object (CSV, file downloads...)
        return spec
    if int(status) >= 400:
        return {"description": spec, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    if status == "204":
        return {"description": spec}
    return {"description": spec, "content": {"application/json": {"schema": {"type": "object"}}}}


def _operation(path: str, method: str, src: dict[str, Any], prefix: str, components: dict[str, Any],
               limits: tuple[ratelimit.Rule, ...]) -> dict[str, Any]:
    public = bool(src.get("public"))
    op: dict[str, Any] = {"summary": src["summary"], "operationId": src.get("id") or _operation_id(method, path),
                          "tags": [src.get("tag") or prefix]}
    if src.get("description"):
        op["description"] = src["description"]
    params = src.get("params", {})
    parameters = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string"},
         **({"description": params[name]} if name in params else {})}
        for name in _PARAM.findall(path)
    ]
    parameters += [
        {"name": name, "in": "query", "required": False, "schema": {"type": "string"}, "description": text}
        for name, text in src.get("query", {}).items()
    ]
    if parameters:
        op["parameters"] = parameters
    if "requestBody" in src:  # written out in full (a body no model describes)
        op["requestBody"] = src["requestBody"]
    elif "body" in src:
        op["requestBody"] = {"required": True, "content": {"application/json": {"schema": _model(src["body"], prefix, components)}}}
    elif "upload" in src:
        fields = _model(src["upload"], prefix, components)
        op["requestBody"] = {
            "required": True,
            "description": 'multipart/form-data, streamed: first a JSON part named "message" with the fields, then '
                           "any number of file parts (each checked by name and content; 300 MB in all). A plain "
                           "JSON body with the fields alone is accepted too.",
            "content": {
                "multipart/form-data": {
                    "schema": {"type": "object", "required": ["message"], "properties": {
                        "message": fields,
                        "file": {"type": "array", "items": {"type": "string", "contentMediaType": "application/octet-stream"}},
                    }},
                    "encoding": {"message": {"contentType": "application/json"}},
                },
                "application/json": {"schema": fields},
            },
        }
    responses = {str(k): _response(str(k), v) for k, v in src["responses"].items()}
    csrf = method in UNSAFE and src.get("csrf", True)
    common = _common_errors(method, public=public, csrf=csrf, has_body="requestBody" in op,
                            limited=ratelimit.rule_for(limits, method.upper(), path) is not None)
    for status, text in common.items():
        if status not in map(str, src.get("omit", ())):
            responses.setdefault(status, _response(status, text))
    op["responses"] = dict(sorted(responses.items()))
    if public:
        # No session needed; a browser that has one sends its CSRF token on state changes.
        op["security"] = [{}, {"session": [], "csrf": []}] if csrf else []
    elif method in UNSAFE:
        op["security"] = [{"session": [], "csrf": []}]
    return op


def _operation_id(method: str, path: str) -> str:
    words = [w.strip("{}") for w in path.split("/") if w]
    return method + "".join(w[:1].upper() + w[1:] for w in re.split(r"[_\-]", "_".join(words)))


def _load_source(package: str) -> dict[str, Any]:
    import yaml  # dev dependency: only building needs it

    return yaml.safe_load(resources.files(package).joinpath("openapi.yaml").read_text())


def build() -> dict[str, Any]:
    """The document from every service's openapi.yaml (paths there are the service's own,
    without /api/v1)."""
    doc = copy.deepcopy(BASE)
    components = doc["components"]["schemas"]
    paths: dict[str, dict[str, Any]] = {}
    tags = []
    limits = ratelimit.rules(GatewaySettings())  # which routes the gateway rate-limits (429)
    for package, prefix in SOURCES:
        source = _load_source(package)
        tags += source.get("tags", [])
        for path, item in source["paths"].items():
            public_path = PREFIX + path
            for method, src in item.items():
                if method not in METHODS:
                    raise ValueError(f"{package}/openapi.yaml: {method} {path}: unknown method")
                if method in paths.get(public_path, {}):
                    raise ValueError(f"{method.upper()} {public_path} is documented twice")
                paths.setdefault(public_path, {})[method] = _operation(path, method, src, prefix, components, limits)
    doc["tags"] = tags
    doc["paths"] = dict(sorted(paths.items()))
    doc["components"]["schemas"] = dict(sorted(components.items()))
    return doc


def write(path: Path | None = None) -> Path:
    target = path or Path(__file__).with_name(DOCUMENT)
    target.write_text(json.dumps(build(), indent=1, ensure_ascii=False) + "\n")
    return target


if __name__ == "__main__":
    print(f"wrote {write()}")
