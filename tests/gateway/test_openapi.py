"""The public API's OpenAPI document against the real routes.

The route set is read from every service's own app factory (building an aiohttp Application
connects to nothing; the settings below point at closed ports to prove it), mapped through
the gateway's area map to public /api/v1 paths, and must equal the document's set in both
directions. The shipped openapi.json must be what the spec sources build, valid OpenAPI 3.1,
and served by the real gateway without a session."""
from __future__ import annotations

import copy
import json
import re

import aiohttp
import pytest
from aiohttp import web
from openapi_spec_validator import validate
from openapi_spec_validator.validation.exceptions import OpenAPIValidationError

from msp_auth.app import create_app as auth_app
from msp_auth.config import AuthSettings
from msp_billing.app import create_app as billing_app
from msp_billing.config import BillingSettings
from msp_gateway import http as gateway_http
from msp_gateway import openapi
from msp_gateway.app import create_app as gateway_app
from msp_gateway.config import GatewaySettings
from msp_gateway.routing import PREFIX, service_for
from msp_mail.app import create_app as mail_app
from msp_mail.config import MailSettings
from msp_verify.app import create_app as verify_app
from msp_verify.config import VerifySettings

from gateway_kit import Served

# Nothing listens here: a factory that connected at build time would fail.
NOWHERE = {"database_url": "postgresql://msp:msp@127.0.0.1:1/nowhere", "amqp_url": "amqp://guest:guest@127.0.0.1:1/"}
SERVICES = {
    "auth": (auth_app, AuthSettings),
    "verify": (verify_app, VerifySettings),
    "mail": (mail_app, MailSettings),
    "billing": (billing_app, BillingSettings),
}
PROBES = {"/healthz", "/readyz"}
METHODS = {"GET", "PUT", "POST", "PATCH", "DELETE"}
Route = tuple[str, str]  # (METHOD, public path)


def _routes(app: web.Application) -> list[tuple[str, str, object]]:
    """(method, path template, handler) of every route, without aiohttp's HEAD twins of GETs."""
    return [
        (r.method, r.resource.canonical, r.handler)
        for r in app.router.routes()
        if r.method != "HEAD" and r.resource is not None and r.resource.canonical not in PROBES
    ]


@pytest.fixture(scope="module")
def public_routes() -> tuple[set[Route], set[Route]]:
    """(routes the gateway exposes, service routes it cannot reach)."""
    exposed: set[Route] = set()
    unreachable: set[Route] = set()
    for service, (factory, settings_class) in SERVICES.items():
        routes = _routes(factory(settings_class(**NOWHERE)))
        assert routes, f"{service} has no routes?"
        for method, path, _handler in routes:
            if service_for(path) == service:
                exposed.add((method, PREFIX + path))
            else:
                unreachable.add((method, path))
    # The gateway's own /api/v1 routes, less its catch-all forwarder.
    for method, path, handler in _routes(gateway_app(GatewaySettings(**NOWHERE))):
        if path.startswith(PREFIX + "/") and handler is not gateway_http.api:
            exposed.add((method, path))
    return exposed, unreachable


def documented(doc: dict) -> set[Route]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item if m.upper() in METHODS}


def differences(routes: set[Route], doc: dict) -> list[str]:
    docs = documented(doc)
    return [f"route without docs: {m} {p}" for m, p in sorted(routes - docs)] + \
           [f"documented but no such route: {m} {p}" for m, p in sorted(docs - routes)]


# ---- the document and the routes ------------------------------------------------------------

def test_every_public_route_is_documented_and_nothing_else(public_routes: tuple[set[Route], set[Route]]) -> None:
    exposed, _ = public_routes
    # The real route tables were read (a broken collector must not pass with two empty sets).
    assert {("POST", "/api/v1/session"), ("GET", "/api/v1/session"), ("DELETE", "/api/v1/session"),
            ("POST", "/api/v1/verifications/{id}/check"), ("POST", "/api/v1/messages"),
            ("PUT", "/api/v1/billing/card"), ("GET", "/api/v1/openapi.json")} <= exposed
    problems = differences(exposed, openapi.build())
    assert not problems, "\n".join(problems) + "\n(edit the service's openapi.yaml)"


def test_the_comparison_fails_both_ways(public_routes: tuple[set[Route], set[Route]]) -> None:
    exposed, _ = public_routes
    doc = openapi.document()
    assert differences(exposed, doc) == []
    missing = copy.deepcopy(doc)
    del missing["paths"]["/api/v1/messages/{message_id}/recall"]
    assert differences(exposed, missing) == ["route without docs: POST /api/v1/messages/{message_id}/recall"]
    extra = copy.deepcopy(doc)
    extra["paths"]["/api/v1/messages/{message_id}"]["put"] = extra["paths"]["/api/v1/messages/{message_id}"]["patch"]
    assert differences(exposed, extra) == ["documented but no such route: PUT /api/v1/messages/{message_id}"]


def test_internal_routes_are_neither_reachable_nor_listed(public_routes: tuple[set[Route], set[Route]]) -> None:
    exposed, unreachable = public_routes
    # Every service route the gateway cannot forward to is an internal one, on purpose.
    assert unreachable and all(path.startswith("/internal/") for _, path in unreachable), unreachable
    assert not any("/internal" in path for path in openapi.document()["paths"])
    assert service_for("/internal/recipients") is None


def test_stripe_webhook_is_documented_as_reachable_without_a_session() -> None:
    """Stripe reaches billing only through the gateway (the one exposed service), so its
    webhook is public: no session, trusted by its Stripe-Signature instead."""
    assert service_for("/billing/webhooks/stripe") == "billing"
    op = openapi.document()["paths"]["/api/v1/billing/webhooks/stripe"]["post"]
    assert op["security"] == []
    assert "Stripe-Signature" in op["description"]


def test_the_shipped_document_is_the_built_one() -> None:
    assert openapi.document() == openapi.build(), \
        "gateway/src/msp_gateway/openapi.json is stale: run `uv run python -m msp_gateway.openapi`"


# ---- the document itself --------------------------------------------------------------------------

def test_the_document_is_valid_openapi_3_1() -> None:
    doc = openapi.document()
    assert doc["openapi"].startswith("3.1.")
    validate(doc)  # raises on any schema violation
    # The validator does refuse a broken document (a parameter that says not where it goes).
    broken = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"},
              "paths": {"/a/{b}": {"get": {"parameters": [{"name": "b", "required": True}], "responses": {}}}}}
    with pytest.raises(OpenAPIValidationError):
        validate(broken)


def test_every_operation_is_described_with_its_parameters_errors_and_security() -> None:
    doc = openapi.document()
    error_ref = {"$ref": "#/components/schemas/Error"}
    assert set(doc["components"]["schemas"]["Error"]["required"]) == {"error", "message", "details"}
    schemes = doc["components"]["securitySchemes"]
    assert schemes["session"] == {**schemes["session"], "type": "apiKey", "in": "cookie", "name": "msp_session"}
    assert schemes["csrf"] == {**schemes["csrf"], "type": "apiKey", "in": "header", "name": "X-CSRF-Token"}
    for path, item in doc["paths"].items():
        assert path.startswith(PREFIX + "/")
        for method, op in item.items():
            where = f"{method.upper()} {path}"
            assert op["summary"].strip(), where
            in_path = {p["name"] for p in op.get("parameters", []) if p["in"] == "path"}
            assert in_path == set(re.findall(r"{([^}]+)}", path)), where
            assert any(s.startswith("2") for s in op["responses"]), where
            for status, response in op["responses"].items():
                if int(status) >= 400 and "content" in response:
                    assert response["content"]["application/json"]["schema"] == error_ref, where
            security = op.get("security", doc["security"])
            public = security == [] or {} in security
            if not public and where != "DELETE /api/v1/session":  # signing out without a session is fine
                assert "401" in op["responses"], where
            if method != "get" and not public:
                assert security == [{"session": [], "csrf": []}], where
            if public:
                # A flow open without a session must also be open to a browser whose cookie died.
                upstream = path[len(PREFIX):]
                assert gateway_http._anonymous_ok(upstream) or upstream == "/billing/webhooks/stripe", where
    # The anonymous flows are public, everything else needs the session (and CSRF to change things).
    paths = doc["paths"]
    assert doc["security"] == [{"session": []}] and "security" not in paths["/api/v1/me"]["get"]
    assert paths["/api/v1/me"]["patch"]["security"] == [{"session": [], "csrf": []}]
    assert paths["/api/v1/session"]["post"]["security"] == []  # signing in needs no token
    assert paths["/api/v1/verifications"]["post"]["security"] == [{}, {"session": [], "csrf": []}]
    assert paths["/api/v1/billing/webhooks/stripe"]["post"]["security"] == []


def test_request_bodies_come_from_the_handlers_models() -> None:
    from msp_auth.http import LoginIn
    from msp_mail.messaging.http import ComposeIn

    doc = openapi.document()
    login = doc["paths"]["/api/v1/session"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert login == {"$ref": "#/components/schemas/auth.LoginIn"}
    assert doc["components"]["schemas"]["auth.LoginIn"] == LoginIn.model_json_schema()
    upload = doc["paths"]["/api/v1/messages"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["properties"]["message"] == {"$ref": "#/components/schemas/mail.ComposeIn"}
    assert doc["components"]["schemas"]["mail.ComposeIn"]["required"] == ComposeIn.model_json_schema()["required"]


# ---- served by the gateway ----------------------------------------------------------------------

async def test_the_gateway_serves_the_document_without_a_session(gateway: Served) -> None:
    url = gateway.url + "/api/v1/openapi.json"
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as resp:
            assert resp.status == 200
            assert resp.content_type == "application/json"
            assert resp.headers["Cache-Control"] == "no-store"
            assert await resp.json() == openapi.document()
        # A dead or forged session cookie does not block it either.
        async with http.get(url, headers={"Cookie": "msp_session=forged-or-expired"}) as resp:
            assert resp.status == 200
            assert json.loads(await resp.read()) == openapi.document()
        # The internal routes stay unreachable through the gateway.
        async with http.post(gateway.url + "/api/v1/internal/recipients", json={}) as resp:
            assert resp.status == 404
            assert (await resp.json())["error"] == "not_found"
