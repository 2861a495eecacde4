"""A local Stripe-compatible server: the subset of Stripe's REST API billing-service uses,
in Stripe's wire shapes, so the official `stripe` SDK talks to it unchanged in dev and tests.

Speaks: form-encoded bodies with bracket notation (`metadata[k]=v`, `items[0][price]=...`),
Bearer API-key auth (401 with Stripe's error JSON otherwise), Idempotency-Key on POST (same
key + same parameters -> the stored response replayed; different parameters -> 400
idempotency_error; keys kept 24 h), id prefixes and `object` fields, list objects, and
signed webhooks (`Stripe-Signature: t=...,v1=HMAC-SHA256("t.payload")`) for
customer.subscription.created/deleted, invoice.paid, payment_method.attached/detached and
customer.updated (with `data.previous_attributes`, only when something changed), delivered
in order with retries.

Endpoints: customers (create, retrieve with `expand[]=invoice_settings.default_payment_method`,
update), payment_methods (create from a test token, retrieve, attach, detach), prices (create,
retrieve, list by lookup_keys), subscriptions (create, retrieve, cancel), invoices (list,
retrieve; a paid invoice is made with each subscription), events (list, retrieve); plus an
unauthenticated GET /healthz of its own.

The Stripe Dashboard drives this same API: the PBHS Billing Dept. putting a card on a
customer is payment_methods create (from a test token here) + attach + customers update
`invoice_settings[default_payment_method]`, each announced by its webhook as Stripe does.

Test cards: tok_visa / pm_card_visa (4242), tok_mastercard / pm_card_mastercard (4444),
tok_amex / pm_card_amex (8431), tok_chargeDeclined / pm_card_chargeDeclined (0002: attaches,
then every charge is declined with a 402 card_error). Raw card numbers are refused.

Run: `python -m msp_billing.stripe_local` (MSP_STRIPE_LOCAL_PORT, default 12111)."""
from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

log = logging.getLogger(__name__)

DEV_API_KEY = "sk_test_msp_local"
DEV_WEBHOOK_SECRET = "whsec_msp_local_dev"
IDEMPOTENCY_TTL = 24 * 3600

TEST_CARDS: dict[str, dict[str, Any]] = {
    "visa": {"brand": "visa", "last4": "4242", "funding": "credit"},
    "mastercard": {"brand": "mastercard", "last4": "4444", "funding": "credit"},
    "amex": {"brand": "amex", "last4": "8431", "funding": "credit"},
    "chargeDeclined": {"brand": "visa", "last4": "0002", "funding": "credit", "declines": True},
}
_BRACKET = re.compile(r"\[([^\]]*)\]")


class StripeError(Exception):
    def __init__(self, status: int, type_: str, message: str, *, code: str | None = None, param: str | None = None,
                 decline_code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.type, self.message = status, type_, message
        self.code, self.param, self.decline_code = code, param, decline_code

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"type": self.type, "message": self.message}
        for key in ("code", "param", "decline_code"):
            if getattr(self, key):
                err[key] = getattr(self, key)
        return {"error": err}


def _missing(kind: str, oid: str, param: str = "id") -> StripeError:
    return StripeError(404, "invalid_request_error", f"No such {kind}: '{oid}'", code="resource_missing", param=param)


def _new_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_urlsafe(18).replace('-', 'a').replace('_', 'b')}"


def decode_form(pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """Stripe's bracket notation to nested dicts and lists: `items[0][price]=p` ->
    {"items": [{"price": "p"}]}; `expand[]=x` appends."""
    root: dict[str, Any] = {}
    for key, value in pairs:
        head = key.split("[", 1)[0]
        path = [head, *_BRACKET.findall(key[len(head):])]
        node: Any = root
        for i, part in enumerate(path):
            last = i == len(path) - 1
            if part == "":  # `expand[]`: append to a list
                part = str(len(node))
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
    return _listify(root)


def _listify(node: Any) -> Any:
    if isinstance(node, dict):
        node = {k: _listify(v) for k, v in node.items()}
        if node and all(k.isdigit() for k in node):
            return [node[k] for k in sorted(node, key=int)]
    return node


def _list(data: list[dict], url: str) -> dict[str, Any]:
    return {"object": "list", "data": data, "has_more": False, "url": url}


@dataclass
class _Stored:
    fingerprint: str
    status: int
    body: dict[str, Any]
    at: float


@dataclass
class StripeState:
    api_key: str = DEV_API_KEY
    webhook_secret: str = DEV_WEBHOOK_SECRET
    webhook_url: str | None = None
    now: Callable[[], float] = time.time
    api_version: str = "2025-01-01"
    objects: dict[str, dict[str, dict[str, Any]]] = field(default_factory=lambda: {
        k: {} for k in ("customer", "payment_method", "price", "subscription", "invoice", "event")
    })
    idempotency: dict[tuple[str, str], _Stored] = field(default_factory=dict)
    deliveries: asyncio.Queue | None = None
    delivered: list[str] = field(default_factory=list)  # event ids acknowledged by the endpoint
    invoice_seq: int = 0

    def get(self, kind: str, oid: str, param: str = "id") -> dict[str, Any]:
        obj = self.objects[kind].get(oid)
        if obj is None:
            raise _missing(kind, oid, param)
        return obj

    def emit(self, type_: str, obj: dict[str, Any], idempotency_key: str | None,
             previous: dict[str, Any] | None = None) -> dict[str, Any]:
        data: dict[str, Any] = {"object": json.loads(json.dumps(_public(obj)))}
        if previous is not None:  # Stripe's *.updated (and detached): the changed fields' old values
            data["previous_attributes"] = json.loads(json.dumps(previous))
        event = {
            "id": _new_id("evt"),
            "object": "event",
            "api_version": self.api_version,
            "created": int(self.now()),
            "data": data,
            "livemode": False,
            "pending_webhooks": 1 if self.webhook_url else 0,
            "request": {"id": _new_id("req"), "idempotency_key": idempotency_key},
            "type": type_,
        }
        self.objects["event"][event["id"]] = event
        if self.webhook_url and self.deliveries is not None:
            self.deliveries.put_nowait(event)
        return event


def sign_payload(payload: str, secret: str, timestamp: int) -> str:
    """Stripe's signature scheme: v1 = hex HMAC-SHA256 of "{t}.{payload}"."""
    mac = hmac.new(secret.encode(), f"{timestamp}.{payload}".encode(), hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


# ---- resources ----------------------------------------------------------------------------

def _card_from_token(token: str) -> dict[str, Any]:
    name = token.removeprefix("tok_").removeprefix("pm_card_")
    card = TEST_CARDS.get(name)
    if card is None or not (token.startswith("tok_") or token.startswith("pm_card_")):
        raise StripeError(400, "invalid_request_error", f"No such token: '{token}'", code="resource_missing",
                          param="card[token]")
    return card


def _payment_method(state: StripeState, card: dict[str, Any]) -> dict[str, Any]:
    year = time.gmtime(state.now()).tm_year + 3
    pm = {
        "id": _new_id("pm"), "object": "payment_method", "type": "card", "created": int(state.now()),
        "customer": None, "livemode": False, "metadata": {},
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "card": {"brand": card["brand"], "last4": card["last4"], "exp_month": 12, "exp_year": year,
                 "funding": card["funding"], "country": "US"},
        "_declines": bool(card.get("declines")),
    }
    state.objects["payment_method"][pm["id"]] = pm
    return pm


def _public(obj: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in obj.items() if not k.startswith("_")}


def create_customer(state: StripeState, p: dict[str, Any]) -> dict[str, Any]:
    cus = {
        "id": _new_id("cus"), "object": "customer", "created": int(state.now()), "livemode": False,
        "email": p.get("email"), "name": p.get("name"), "description": p.get("description"),
        "metadata": p.get("metadata") or {},
        "invoice_settings": {"custom_fields": None, "default_payment_method": None, "footer": None,
                             "rendering_options": None},
    }
    state.objects["customer"][cus["id"]] = cus
    return cus


def update_customer(state: StripeState, cid: str, p: dict[str, Any], idempotency_key: str | None = None,
                    ) -> dict[str, Any]:
    """Stripe's customer update; a change (only a change) is announced as customer.updated
    with the old values in previous_attributes. `invoice_settings[default_payment_method]=`
    (empty) unsets the default."""
    cus = state.get("customer", cid)
    previous: dict[str, Any] = {}
    default_pm = (p.get("invoice_settings") or {}).get("default_payment_method")
    if default_pm:  # checked before anything changes: a refused update changes nothing
        pm = state.get("payment_method", default_pm, "invoice_settings[default_payment_method]")
        if pm["customer"] != cid:
            raise StripeError(400, "invalid_request_error",
                              f"The payment method '{default_pm}' must be attached to the customer.",
                              param="invoice_settings[default_payment_method]")
    for key in ("email", "name", "description"):
        if key in p and cus[key] != (p[key] or None):
            previous[key] = cus[key]
            cus[key] = p[key] or None
    if "metadata" in p:
        changed = {k: cus["metadata"].get(k) for k, v in (p["metadata"] or {}).items() if cus["metadata"].get(k) != v}
        if changed:
            previous["metadata"] = changed
            cus["metadata"].update(p["metadata"] or {})
    if default_pm is not None:
        old = cus["invoice_settings"]["default_payment_method"]
        if old != (default_pm or None):
            previous["invoice_settings"] = {"default_payment_method": old}
            cus["invoice_settings"]["default_payment_method"] = default_pm or None
    if previous:
        state.emit("customer.updated", cus, idempotency_key, previous)
    return cus


def create_payment_method(state: StripeState, p: dict[str, Any]) -> dict[str, Any]:
    if p.get("type") != "card":
        raise StripeError(400, "invalid_request_error", "Only type=card is supported here.", param="type")
    card = p.get("card") or {}
    if "number" in card:
        raise StripeError(402, "card_error",
                          "Sending credit card numbers directly to the Stripe API is generally unsafe.",
                          code="unsafe_raw_card_data", param="card[number]")
    return _payment_method(state, _card_from_token(str(card.get("token", ""))))


def attach_payment_method(state: StripeState, pid: str, p: dict[str, Any], idempotency_key: str | None = None,
                          ) -> dict[str, Any]:
    """Attach (announced as payment_method.attached). Attaching does not make the card the
    customer's default: that is a customer update, as in Stripe."""
    cid = p.get("customer")
    if not cid:
        raise StripeError(400, "invalid_request_error", "Missing required param: customer.", param="customer")
    state.get("customer", cid, "customer")
    if pid.startswith("pm_card_"):  # a test PaymentMethod: Stripe attaches a fresh copy
        pm = _payment_method(state, _card_from_token(pid))
    else:
        pm = state.get("payment_method", pid)
        if pm["customer"] not in (None, cid):
            raise StripeError(400, "invalid_request_error",
                              "The payment method you provided has already been attached to a customer.")
    if pm["customer"] != cid:
        pm["customer"] = cid
        state.emit("payment_method.attached", pm, idempotency_key)
    return pm


def detach_payment_method(state: StripeState, pid: str, idempotency_key: str | None = None) -> dict[str, Any]:
    """Detach (announced as payment_method.detached, the customer in previous_attributes); a
    customer whose default it was is left without a default, as in Stripe."""
    pm = state.get("payment_method", pid)
    cid = pm["customer"]
    if cid is None:
        raise StripeError(400, "invalid_request_error",
                          f"The payment method {pid} is not attached to a customer.")
    pm["customer"] = None
    cus = state.objects["customer"].get(cid)
    if cus is not None and cus["invoice_settings"]["default_payment_method"] == pid:
        cus["invoice_settings"]["default_payment_method"] = None
    state.emit("payment_method.detached", pm, idempotency_key, {"customer": cid})
    return pm


def create_price(state: StripeState, p: dict[str, Any]) -> dict[str, Any]:
    try:
        amount = int(p["unit_amount"])
    except (KeyError, ValueError):
        raise StripeError(400, "invalid_request_error", "Missing required param: unit_amount.",
                          param="unit_amount") from None
    if not p.get("currency"):
        raise StripeError(400, "invalid_request_error", "Missing required param: currency.", param="currency")
    recurring = p.get("recurring")
    lookup_key = p.get("lookup_key")
    if lookup_key:
        for other in state.objects["price"].values():
            if other["lookup_key"] == lookup_key:
                raise StripeError(400, "invalid_request_error",
                                  f"A price (`{other['id']}`) already uses that lookup key.", param="lookup_key")
    price = {
        "id": _new_id("price"), "object": "price", "active": True, "created": int(state.now()),
        "currency": p["currency"].lower(), "unit_amount": amount, "livemode": False,
        "lookup_key": lookup_key, "metadata": p.get("metadata") or {}, "nickname": p.get("nickname"),
        "product": p.get("product") or _new_id("prod"),
        "recurring": {"interval": recurring.get("interval", "month"), "interval_count": int(recurring.get("interval_count", 1)),
                      "usage_type": "licensed"} if recurring else None,
        "type": "recurring" if recurring else "one_time",
    }
    state.objects["price"][price["id"]] = price
    return price


def create_subscription(state: StripeState, p: dict[str, Any], idempotency_key: str | None) -> dict[str, Any]:
    cid = p.get("customer")
    if not cid:
        raise StripeError(400, "invalid_request_error", "Missing required param: customer.", param="customer")
    cus = state.get("customer", cid, "customer")
    items = p.get("items") or []
    if not isinstance(items, list) or not items:
        raise StripeError(400, "invalid_request_error", "Missing required param: items.", param="items")
    pm_id = p.get("default_payment_method") or cus["invoice_settings"]["default_payment_method"]
    if not pm_id:
        raise StripeError(400, "invalid_request_error",
                          "This customer has no attached payment source or default payment method.")
    pm = state.get("payment_method", pm_id, "default_payment_method")
    now = int(state.now())
    sub_id = _new_id("sub")
    sub_items, total, currency = [], 0, None
    for i, item in enumerate(items):
        price = state.get("price", str(item.get("price", "")), f"items[{i}][price]")
        quantity = int(item.get("quantity", 1))
        total += price["unit_amount"] * quantity
        currency = price["currency"]
        sub_items.append({"id": _new_id("si"), "object": "subscription_item", "price": price, "quantity": quantity,
                          "subscription": sub_id, "created": now, "metadata": {}})
    if pm["_declines"]:
        raise StripeError(402, "card_error", "Your card was declined.", code="card_declined",
                          decline_code="generic_decline")
    period_end = now + 30 * 86400
    metadata = p.get("metadata") or {}
    sub = {
        "id": sub_id, "object": "subscription", "customer": cid, "status": "active", "created": now,
        "currency": currency, "metadata": metadata, "livemode": False, "cancel_at_period_end": False,
        # Stripe's: set only when given; otherwise the customer's default pays each invoice.
        "canceled_at": None, "ended_at": None, "start_date": now,
        "default_payment_method": p.get("default_payment_method") or None,
        "items": _list(sub_items, f"/v1/subscription_items?subscription={sub_id}"),
        "latest_invoice": None,
    }
    state.invoice_seq += 1
    invoice = {
        "id": _new_id("in"), "object": "invoice", "customer": cid, "status": "paid", "created": now,
        "currency": currency, "amount_due": total, "amount_paid": total, "amount_remaining": 0, "total": total,
        "subtotal": total, "number": f"MSP-{state.invoice_seq:06d}", "livemode": False, "metadata": {},
        "billing_reason": "subscription_create", "collection_method": "charge_automatically",
        "period_start": now, "period_end": period_end, "status_transitions": {"paid_at": now},
        "parent": {"type": "subscription_details", "quote_details": None,
                   "subscription_details": {"subscription": sub_id, "metadata": metadata}},
        "lines": _list([{"id": _new_id("il"), "object": "line_item", "amount": total, "currency": currency,
                         "description": f"{sub_items[0]['quantity']} × subscription",
                         "period": {"start": now, "end": period_end}}], "/v1/invoices/lines"),
    }
    sub["latest_invoice"] = invoice["id"]
    state.objects["subscription"][sub_id] = sub
    state.objects["invoice"][invoice["id"]] = invoice
    state.emit("customer.subscription.created", sub, idempotency_key)
    state.emit("invoice.paid", invoice, idempotency_key)
    return sub


def cancel_subscription(state: StripeState, sid: str, idempotency_key: str | None) -> dict[str, Any]:
    sub = state.get("subscription", sid)
    if sub["status"] == "canceled":
        raise _missing("subscription", sid)
    now = int(state.now())
    sub.update(status="canceled", canceled_at=now, ended_at=now)
    state.emit("customer.subscription.deleted", sub, idempotency_key)
    return sub


def _expand(state: StripeState, obj: dict[str, Any], expand: list[str]) -> dict[str, Any]:
    out = json.loads(json.dumps(_public(obj)))
    for path in expand:
        if path == "latest_invoice" and out.get("latest_invoice"):
            out["latest_invoice"] = _public(state.objects["invoice"][out["latest_invoice"]])
        elif path == "default_payment_method" and out.get("default_payment_method"):
            out["default_payment_method"] = _public(state.objects["payment_method"][out["default_payment_method"]])
        elif path == "invoice_settings.default_payment_method" and (out.get("invoice_settings") or {}).get(
                "default_payment_method"):
            settings = out["invoice_settings"]
            settings["default_payment_method"] = _public(state.objects["payment_method"][settings["default_payment_method"]])
    return out


# ---- HTTP ---------------------------------------------------------------------------------

STATE = web.AppKey("stripe_state", StripeState)


def _json(body: dict[str, Any], status: int = 200, **headers: str) -> web.Response:
    return web.json_response(body, status=status, headers={"Request-Id": _new_id("req"), **headers})


@web.middleware
async def _errors_and_auth(request: web.Request, handler: Callable) -> web.StreamResponse:
    state = request.app[STATE]
    if request.path == "/healthz":  # not Stripe's: for the up script and compose health checks
        return await handler(request)
    auth = request.headers.get("Authorization", "")
    key = auth[7:] if auth.startswith("Bearer ") else ""
    if not key:
        return _json(StripeError(401, "invalid_request_error",
                                 "You did not provide an API key. You need to provide your API key in the "
                                 "Authorization header, using Bearer auth.").body(), 401)
    if not hmac.compare_digest(key.encode(), state.api_key.encode()):
        masked = key[:7] + "*" * max(0, len(key) - 11) + key[-4:]
        return _json(StripeError(401, "invalid_request_error", f"Invalid API Key provided: {masked}").body(), 401)
    try:
        return await handler(request)
    except StripeError as exc:
        return _json(exc.body(), exc.status)
    except web.HTTPNotFound:
        return _json(StripeError(404, "invalid_request_error",
                                 f"Unrecognized request URL ({request.method}: {request.path}).").body(), 404)


async def _params(request: web.Request) -> dict[str, Any]:
    pairs = list(request.query.items())
    if request.method == "POST":
        pairs += [(k, v) for k, v in (await request.post()).items() if isinstance(v, str)]
    return decode_form(pairs)


def _idempotent(op: Callable[[StripeState, web.Request, dict[str, Any], str | None], dict[str, Any]]) -> Callable:
    """Replays the first response for a reused Idempotency-Key with the same parameters,
    refuses the key with different ones."""

    async def handler(request: web.Request) -> web.Response:
        state = request.app[STATE]
        params = await _params(request)
        key = request.headers.get("Idempotency-Key")
        if key is None:
            return _json(op(state, request, params, None))
        now = state.now()
        for stored_key in [k for k, v in state.idempotency.items() if now - v.at > IDEMPOTENCY_TTL]:
            del state.idempotency[stored_key]
        fingerprint = hashlib.sha256(
            json.dumps([request.method, request.path, params], sort_keys=True).encode()
        ).hexdigest()
        scope = (state.api_key, key)
        stored = state.idempotency.get(scope)
        if stored is not None:
            if stored.fingerprint != fingerprint:
                raise StripeError(400, "idempotency_error",
                                  "Keys for idempotent requests can only be used with the same parameters they "
                                  f"were first used with. Try using a key other than '{key}' if you meant to "
                                  "execute a different request.")
            return _json(stored.body, stored.status, **{"Idempotent-Replayed": "true", "Idempotency-Key": key})
        try:
            body, status = op(state, request, params, key), 200
        except StripeError as exc:
            if exc.status >= 500:
                raise
            body, status = exc.body(), exc.status  # Stripe stores 4xx results under the key too
        state.idempotency[scope] = _Stored(fingerprint, status, body, now)
        return _json(body, status, **{"Idempotency-Key": key})

    return handler


def _expand_list(params: dict[str, Any]) -> list[str]:
    expand = params.get("expand") or []
    return expand if isinstance(expand, list) else [expand]


def _routes(app: web.Application) -> None:
    r = app.router

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "service": "stripe-local"})

    r.add_get("/healthz", healthz)

    async def get(kind: str, request: web.Request) -> web.Response:
        state = request.app[STATE]
        obj = state.get(kind, request.match_info["id"])
        return _json(_expand(state, obj, _expand_list(await _params(request))))

    def getter(kind: str) -> Callable:
        async def handler(request: web.Request) -> web.Response:
            return await get(kind, request)
        return handler

    def listing(kind: str, filters: Callable[[dict[str, Any], dict[str, Any]], bool]) -> Callable:
        async def handler(request: web.Request) -> web.Response:
            state = request.app[STATE]
            params = await _params(request)
            limit = max(1, min(int(params.get("limit", 10)), 100))
            found = [o for o in state.objects[kind].values() if filters(o, params)]
            found.sort(key=lambda o: o["created"], reverse=True)
            data = [_public(o) for o in found[:limit]]
            body = _list(data, f"/v1/{kind}s")
            body["has_more"] = len(found) > limit
            return _json(body)
        return handler

    def invoice_filter(inv: dict[str, Any], p: dict[str, Any]) -> bool:
        sub = inv["parent"]["subscription_details"]["subscription"] if inv.get("parent") else None
        return (not p.get("customer") or inv["customer"] == p["customer"]) and (
            not p.get("subscription") or sub == p["subscription"]) and (
            not p.get("status") or inv["status"] == p["status"])

    def price_filter(price: dict[str, Any], p: dict[str, Any]) -> bool:
        keys = p.get("lookup_keys")
        keys = keys if isinstance(keys, list) else ([keys] if keys else None)
        return keys is None or price["lookup_key"] in keys

    def event_filter(ev: dict[str, Any], p: dict[str, Any]) -> bool:
        return not p.get("type") or ev["type"] == p["type"]

    r.add_post("/v1/customers", _idempotent(lambda s, rq, p, k: _public(create_customer(s, p))))
    r.add_get("/v1/customers/{id}", getter("customer"))
    r.add_post("/v1/customers/{id}", _idempotent(
        lambda s, rq, p, k: _expand(s, update_customer(s, rq.match_info["id"], p, k), _expand_list(p))))
    r.add_post("/v1/payment_methods", _idempotent(lambda s, rq, p, k: _public(create_payment_method(s, p))))
    r.add_get("/v1/payment_methods/{id}", getter("payment_method"))
    r.add_post("/v1/payment_methods/{id}/attach",
               _idempotent(lambda s, rq, p, k: _public(attach_payment_method(s, rq.match_info["id"], p, k))))
    r.add_post("/v1/payment_methods/{id}/detach",
               _idempotent(lambda s, rq, p, k: _public(detach_payment_method(s, rq.match_info["id"], k))))
    r.add_post("/v1/prices", _idempotent(lambda s, rq, p, k: _public(create_price(s, p))))
    r.add_get("/v1/prices", listing("price", price_filter))
    r.add_get("/v1/prices/{id}", getter("price"))
    r.add_post("/v1/subscriptions", _idempotent(
        lambda s, rq, p, k: _expand(s, create_subscription(s, p, k), _expand_list(p))))
    r.add_get("/v1/subscriptions/{id}", getter("subscription"))
    r.add_delete("/v1/subscriptions/{id}", _idempotent(
        lambda s, rq, p, k: _public(cancel_subscription(s, rq.match_info["id"], k))))
    r.add_get("/v1/invoices", listing("invoice", invoice_filter))
    r.add_get("/v1/invoices/{id}", getter("invoice"))
    r.add_get("/v1/events", listing("event", event_filter))
    r.add_get("/v1/events/{id}", getter("event"))


async def _deliver(state: StripeState, session: aiohttp.ClientSession, event: dict[str, Any]) -> None:
    """POST one event, signed, retrying with back-off like Stripe does (much faster here)."""
    payload = json.dumps(event)
    for attempt in range(6):
        url = state.webhook_url
        if not url:
            return
        headers = {"Content-Type": "application/json; charset=utf-8",
                   "Stripe-Signature": sign_payload(payload, state.webhook_secret, int(time.time())),
                   "User-Agent": "Stripe/1.0 (+https://stripe.com/docs/webhooks)"}
        try:
            async with session.post(url, data=payload.encode(), headers=headers,
                                    timeout=aiohttp.ClientTimeout(total=10)) as resp:
                if 200 <= resp.status < 300:
                    state.delivered.append(event["id"])
                    return
                log.warning("webhook refused", extra={"event_id": event["id"], "status": resp.status})
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            log.warning("webhook delivery failed", extra={"event_id": event["id"], "error": type(exc).__name__})
        await asyncio.sleep(min(0.2 * 2 ** attempt, 5))


async def _webhook_ctx(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.deliveries = asyncio.Queue()
    session = aiohttp.ClientSession()

    async def worker() -> None:
        while True:
            event = await state.deliveries.get()
            try:
                await _deliver(state, session, event)
            finally:
                state.deliveries.task_done()

    task = asyncio.create_task(worker())
    yield
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    await session.close()


def create_app(
    *,
    api_key: str = DEV_API_KEY,
    webhook_secret: str = DEV_WEBHOOK_SECRET,
    webhook_url: str | None = None,
    now: Callable[[], float] = time.time,
) -> web.Application:
    app = web.Application(middlewares=[_errors_and_auth], client_max_size=256 * 1024)
    app[STATE] = StripeState(api_key=api_key, webhook_secret=webhook_secret, webhook_url=webhook_url, now=now)
    _routes(app)
    app.cleanup_ctx.append(_webhook_ctx)
    return app


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s stripe-local %(levelname)s %(message)s")
    port = int(os.environ.get("MSP_STRIPE_LOCAL_PORT", "12111"))
    host = os.environ.get("MSP_STRIPE_LOCAL_HOST", "127.0.0.1")
    app = create_app(
        api_key=os.environ.get("MSP_STRIPE_API_KEY", DEV_API_KEY),
        webhook_secret=os.environ.get("MSP_STRIPE_WEBHOOK_SECRET", DEV_WEBHOOK_SECRET),
        webhook_url=os.environ.get(
            "MSP_STRIPE_LOCAL_WEBHOOK_URL",
            f"http://127.0.0.1:{os.environ.get('MSP_BILLING_PORT', '8104')}/billing/webhooks/stripe",
        ) or None,
    )
    print(f"local Stripe-compatible server on http://{host}:{port}", flush=True)
    web.run_app(app, host=host, port=port, print=None, access_log=None)


if __name__ == "__main__":
    main()
