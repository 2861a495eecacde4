"""billing-service HTTP handlers (the gateway maps /api/v1/billing/... and
/api/v1/admin/billing/... here).

Authorisation on every request from the gateway's verified identity: only User Managers use
billing, they pay with their own card for users of their own practice (purchase_rules.py);
only Support uses /admin/billing (the PBHS Billing Dept. looking a User Manager up to put
their card on file in Stripe, see cards.py).

The card on file: the web app has no card form (the help page sends users to the Billing
Dept.). The Billing Dept. enters the card in Stripe and billing learns it by Stripe's webhook
(cards.py). `PUT /billing/card` stays for a client with Stripe.js (a token, never a number).

Where invoice emails go: `POST /billing/invoices/email` takes no address (a body naming one is
refused). It mails the invoices of the caller's own account only, whoever paid them, to the
address the caller signs in with, which billing asks of auth-service at that moment
(accounts.py: billing stores no copy that could go stale). The billing email given with the
first card (`PUT /billing/card {"payment_method_token", "email"}`) is only set on the Stripe
customer, for Stripe's receipts."""
from __future__ import annotations

import hashlib
import logging
import uuid
from typing import Any

import stripe
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from msp_shared.errors import ApiError
from msp_shared.identity import Identity
from msp_shared.mailer import ADDRESS, request_email
from msp_shared.web import CLOCK, POOL, SETTINGS, read_model, require_user

from . import accounting, accounts, cards, purchase_rules, store
from .keys import PAYMENTS, SEALER

log = logging.getLogger(__name__)



class CardIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    payment_method_token: str = Field(min_length=4, max_length=255, pattern=r"^(tok|pm)_[A-Za-z0-9_]+$")
    email: str | None = Field(None, max_length=254, pattern=ADDRESS.pattern)


class PurchaseIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    user_id: uuid.UUID


class InvoicesEmailIn(BaseModel):
    """Nothing: the recipient is never the client's to choose (any field is refused)."""
    model_config = ConfigDict(extra="forbid")


def _check_manager(ident: Identity) -> Identity:
    restriction = ident.extra.get("restriction")
    if restriction:
        raise ApiError(403, "session_restricted", "Finish signing in before using billing.",
                       {"restriction": restriction})
    purchase_rules.require_user_manager(ident.roles, ident.practice_id)
    return ident


def _manager(request: web.Request) -> Identity:
    return _check_manager(require_user(request))


async def _audit(request: web.Request, ident: Identity, action: str, outcome: str,
                 subject: str | None = None, **details: Any) -> None:
    await store.audit(
        request.app[POOL], at=request.app[CLOCK].now(), actor=ident.user_id, subject=subject,
        action=action, outcome=outcome, ip=ident.ip, details=details,
    )


async def _guarded(request: web.Request, action: str, subject: str | None = None) -> Identity:
    """The caller as a User Manager; a refusal is audited (purchases are security events)."""
    ident = require_user(request)
    try:
        return _check_manager(ident)
    except ApiError as exc:
        await _audit(request, ident, action, f"denied:{exc.code}", subject)
        raise


def _card_view(row: Any) -> dict[str, Any]:
    return {"brand": row["card_brand"], "last4": row["card_last4"],
            "exp_month": row["card_exp_month"], "exp_year": row["card_exp_year"]}


def _stripe_failure(exc: stripe.StripeError) -> ApiError:
    if isinstance(exc, stripe.CardError):
        return ApiError(422, "card_declined", "The card was declined.", {"decline_code": exc.code or "declined"})
    if isinstance(exc, stripe.InvalidRequestError):
        return ApiError(422, "card_invalid", "The card could not be used.", {"param": exc.param or ""})
    log.error("stripe call failed", extra={"error": type(exc).__name__})
    return ApiError(502, "payment_provider_unavailable", "The payment provider is not answering; try again.")


# ---- card ----------------------------------------------------------------------------------

async def get_card(request: web.Request) -> web.Response:
    ident = _manager(request)
    row = await store.payer(request.app[POOL], ident.user_id)
    if row is None or row["payment_method_id"] is None:
        raise ApiError(404, "no_card", "No credit card on file.")
    return web.json_response({"card": _card_view(row)})


async def put_card(request: web.Request) -> web.Response:
    ident = await _guarded(request, "billing.card.set")
    body: CardIn = await read_model(request, CardIn)
    pool, clock, payments = request.app[POOL], request.app[CLOCK], request.app[PAYMENTS]
    existing = await store.payer(pool, ident.user_id)
    if (existing is None or existing["payment_method_id"] is None) and not body.email:
        raise ApiError(422, "email_required", "Give the billing email address for the card's Stripe receipts.",
                       {"fields": {"email": "required with the first card"}})
    # Same token and email again (a retry) -> the same Stripe calls, replayed, not repeated.
    request_digest = hashlib.sha256(f"{body.payment_method_token}\n{body.email}".encode()).hexdigest()[:24]
    try:
        payer_row, _ = await cards.ensure_customer(
            request.app, pool, user_id=ident.user_id, practice_id=ident.practice_id, at=clock.now(),
            actor=ident.user_id, ip=ident.ip, cause="billing.card.set")
        customer_id = payer_row["stripe_customer_id"]
        pm = await payments.set_card(customer_id, body.payment_method_token,
                                     f"msp-card-{ident.user_id}-{request_digest}", body.email)
    except stripe.StripeError as exc:
        await _audit(request, ident, "billing.card.set", "failed", ident.user_id, reason=type(exc).__name__)
        raise _stripe_failure(exc) from None
    card = pm.card
    async with pool.acquire() as conn, conn.transaction():
        await store.save_card(
            conn, user_id=ident.user_id, practice_id=ident.practice_id, customer_id=customer_id,
            payment_method_id=pm.id, brand=card.brand, last4=card.last4, exp_month=card.exp_month,
            exp_year=card.exp_year, at=clock.now(),
        )
        await store.audit(conn, at=clock.now(), actor=ident.user_id, subject=ident.user_id,
                          action="billing.card.set", outcome="ok", ip=ident.ip)
    row = await store.payer(pool, ident.user_id)
    return web.json_response({"card": _card_view(row)})


# ---- Support: a User Manager's billing, for the Billing Dept. --------------------------------

SUPPORT = "support"


async def admin_user(request: web.Request) -> web.Response:
    """What the Billing Dept. needs to put a User Manager's card on file in Stripe: their
    Stripe customer (made now if they have none yet: a User Manager from before customers were
    made on announcement), the card on file, and whether another User Manager pays for their
    own account (then they cannot pay for others, help page point 6)."""
    target = request.match_info["user_id"]
    ident = require_user(request)
    action = "billing.admin.user.view"
    restriction = ident.extra.get("restriction")
    if restriction or not ident.has_role(SUPPORT):
        code = "session_restricted" if restriction else "support_only"
        await _audit(request, ident, action, f"denied:{code}", target)
        if restriction:
            raise ApiError(403, code, "Finish signing in before using billing.", {"restriction": restriction})
        raise ApiError(403, code, "Only SecurePractice Support can do this.")
    not_found = ApiError(404, "user_not_found", "Billing knows no such user.")
    try:
        target = str(uuid.UUID(target))
    except ValueError:
        await _audit(request, ident, action, "denied:user_not_found")
        raise not_found from None
    pool, clock = request.app[POOL], request.app[CLOCK]
    row = await store.payer(pool, target)
    created = False
    if row is None:
        practice_id = await store.practice_of(pool, target)
        if practice_id is None:
            await _audit(request, ident, action, "denied:user_not_found", target)
            raise not_found
        roles = await store.roles_of(pool, target)
        if roles is not None and purchase_rules.USER_MANAGER not in roles:
            # A customer is for paying: never open one the Billing Dept. could put a card on by mistake.
            await _audit(request, ident, action, "denied:not_user_manager", target)
            raise ApiError(409, "not_user_manager", "This user is not a User Manager: only User Managers pay for SecureMail.")
        try:
            row, created = await cards.ensure_customer(
                request.app, pool, user_id=target, practice_id=practice_id, at=clock.now(), actor=ident.user_id,
                ip=ident.ip, cause=action)
        except stripe.StripeError as exc:
            await _audit(request, ident, action, "failed", target, reason=type(exc).__name__)
            raise _stripe_failure(exc) from None
    own = await store.active_subscription_for(pool, target)
    await _audit(request, ident, action, "ok", target, customer_id=row["stripe_customer_id"],
                 customer_created=created)
    return web.json_response({
        "user_id": target,
        "practice_id": str(row["practice_id"]),
        "customer_id": row["stripe_customer_id"],
        "card": _card_view(row) if row["payment_method_id"] is not None else None,
        "paid_by_another": own is not None and str(own["payer_id"]) != target,
    })


# ---- SecureMail purchases ------------------------------------------------------------------

def _subscription_view(row: Any) -> dict[str, Any]:
    return {"user_id": str(row["user_id"]), "paid_by": str(row["payer_id"]), "status": row["status"],
            "subscription_id": row["stripe_subscription_id"], "amount_cents": row["amount_cents"],
            "currency": row["currency"], "created_at": row["created_at"].isoformat()}


async def purchase_securemail(request: web.Request) -> web.Response:
    ident = await _guarded(request, "billing.securemail.purchase")
    body: PurchaseIn = await read_model(request, PurchaseIn)
    target = str(body.user_id)
    app = request.app
    pool, clock, payments, settings = app[POOL], app[CLOCK], app[PAYMENTS], app[SETTINGS]
    action = "billing.securemail.purchase"

    payer = await store.payer(pool, ident.user_id)
    own = await store.active_subscription_for(pool, ident.user_id)
    facts = purchase_rules.PurchaseFacts(
        caller_id=ident.user_id,
        caller_practice_id=ident.practice_id,
        target_id=target,
        target_practice_id=ident.practice_id if target == ident.user_id else await store.practice_of(pool, target),
        has_card=payer is not None and payer["payment_method_id"] is not None,
        caller_paid_by=str(own["payer_id"]) if own else None,
    )
    try:
        purchase_rules.check_purchase(facts)
    except ApiError as exc:
        await _audit(request, ident, action, f"denied:{exc.code}", target)
        raise

    current = await store.active_subscription_for(pool, target)
    if current is not None:
        if str(current["payer_id"]) == ident.user_id:  # bought already: the same answer again
            return web.json_response({"subscription": _subscription_view(current)}, status=200)
        await _audit(request, ident, action, "denied:already_paid", target)
        raise ApiError(409, "already_paid", "SecureMail for this user is already paid for.")

    generation = await store.purchase_generation(pool, ident.user_id, target)
    key = purchase_rules.idempotency_key(ident.user_id, target, generation, payer["payment_method_id"])
    metadata = {"payer_id": ident.user_id, "user_id": target, "practice_id": ident.practice_id or ""}
    try:
        sub = await payments.subscribe(payer["stripe_customer_id"], metadata, key)
    except stripe.StripeError as exc:
        await _audit(request, ident, action, "failed", target, reason=type(exc).__name__)
        raise _stripe_failure(exc) from None

    now = clock.now()
    async with pool.acquire() as conn, conn.transaction():
        granted = await accounting.grant(
            conn, stripe_id=sub.id, payer_id=ident.user_id, user_id=target, practice_id=ident.practice_id,
            amount_cents=settings.securemail_price_cents, currency=settings.currency, at=now,
        )
        row = await store.subscription(conn, sub.id)
        if row is not None and row["status"] == "active":
            invoice = sub.latest_invoice
            if invoice is not None and not isinstance(invoice, str):
                await accounting.charge(conn, invoice.to_dict(), payer_id=ident.user_id, user_id=target, at=now)
            await store.audit(conn, at=now, actor=ident.user_id, subject=target, action=action,
                              outcome="ok" if granted else "ok:granted_by_webhook", ip=ident.ip,
                              details={"subscription_id": sub.id})
    if row is None or row["status"] != "active" or str(row["user_id"]) != target:
        # Another User Manager's purchase for the same user won the race, or Stripe already
        # reported this subscription canceled: undo ours in Stripe, report the conflict.
        if row is None:
            await payments.cancel(sub.id, f"{key}-undo")
        await _audit(request, ident, action, "denied:already_paid", target, subscription_id=sub.id)
        raise ApiError(409, "already_paid", "SecureMail for this user is already paid for.")
    # 201 when this request made the purchase, whoever recorded it first (Stripe's webhook for
    # this very subscription may have granted it a moment before us); 200 when Stripe replayed
    # an earlier request's answer for the same idempotency key (a double click).
    replayed = sub.last_response is not None and sub.last_response.headers.get("Idempotent-Replayed") == "true"
    return web.json_response({"subscription": _subscription_view(row)}, status=200 if replayed else 201)


async def list_securemail(request: web.Request) -> web.Response:
    ident = _manager(request)
    rows = await store.paid_accounts(request.app[POOL], ident.user_id)
    return web.json_response({"accounts": [_subscription_view(r) for r in rows]})


async def cancel_securemail(request: web.Request) -> web.Response:
    target = request.match_info["user_id"]
    ident = await _guarded(request, "billing.securemail.cancel", target)
    try:
        uuid.UUID(target)
    except ValueError:
        raise ApiError(404, "not_paid_by_you", "You are not paying SecureMail for this user.") from None
    pool, clock, payments = request.app[POOL], request.app[CLOCK], request.app[PAYMENTS]
    current = await store.active_subscription_for(pool, target)
    if current is None or str(current["payer_id"]) != ident.user_id:
        await _audit(request, ident, "billing.securemail.cancel", "denied:not_paid_by_you", target)
        raise ApiError(404, "not_paid_by_you", "You are not paying SecureMail for this user.")
    stripe_id = current["stripe_subscription_id"]
    try:
        await payments.cancel(stripe_id, f"msp-cancel-{stripe_id}")
    except stripe.StripeError as exc:
        raise _stripe_failure(exc) from None
    async with pool.acquire() as conn, conn.transaction():
        await accounting.revoke(conn, stripe_id=stripe_id, at=clock.now())
        await store.audit(conn, at=clock.now(), actor=ident.user_id, subject=target,
                          action="billing.securemail.cancel", outcome="ok", ip=ident.ip,
                          details={"subscription_id": stripe_id})
    return web.json_response({"subscription": _subscription_view(await store.subscription(pool, stripe_id))})


# ---- invoices ------------------------------------------------------------------------------

def _invoice_view(row: Any, caller: str) -> dict[str, Any]:
    return {
        "id": row["stripe_invoice_id"], "number": row["number"], "status": row["status"],
        "user_id": str(row["user_id"]), "own": str(row["user_id"]) == caller,
        "amount_cents": row["amount_paid_cents"], "currency": row["currency"],
        "period_start": row["period_start"].isoformat() if row["period_start"] else None,
        "period_end": row["period_end"].isoformat() if row["period_end"] else None,
        "created_at": row["created_at"].isoformat(),
    }


async def list_invoices(request: web.Request) -> web.Response:
    ident = _manager(request)
    rows = await store.invoices_visible_to(request.app[POOL], ident.user_id)
    return web.json_response({"invoices": [_invoice_view(r, ident.user_id) for r in rows]})


def _money(cents: int, currency: str) -> str:
    return f"{cents / 100:.2f} {currency.upper()}"


async def email_invoices(request: web.Request) -> web.Response:
    """Mail the invoices of the caller's own account (never of users they pay for), whoever
    paid them, to the caller's own sign-in address as auth-service has it now."""
    ident = await _guarded(request, "billing.invoices.email")
    try:
        await read_model(request, InvoicesEmailIn)
    except ApiError as exc:
        await _audit(request, ident, "billing.invoices.email", f"denied:{exc.code}", ident.user_id)
        raise
    pool, clock = request.app[POOL], request.app[CLOCK]
    rows = await store.invoices_of_user(pool, ident.user_id)
    if not rows:
        raise ApiError(422, "no_invoices", "There are no invoices for your account yet.")
    to = await accounts.sign_in_address(request.app, ident.user_id)
    lines = [
        f"Invoice {r['number'] or r['stripe_invoice_id']} — {r['created_at']:%Y-%m-%d} — "
        f"{_money(r['amount_paid_cents'], r['currency'])} — {r['status']}"
        for r in rows
    ]
    async with pool.acquire() as conn, conn.transaction():
        await request_email(
            conn, request.app[SEALER], template="generic_notice", to=to,
            # The invoice lines are personal: sealed with the address, not in clear params.
            secrets={"text": "Your SecureMail invoices:\n" + "\n".join(lines)},
            params={"title": "Your SecureMail invoices"}, requested_by="billing",
        )
        await store.audit(conn, at=clock.now(), actor=ident.user_id, subject=ident.user_id,
                          action="billing.invoices.email", outcome="ok", ip=ident.ip,
                          details={"invoices": len(rows)})
    return web.json_response({"queued": True, "invoices": len(rows)}, status=202)


def add_routes(app: web.Application) -> None:
    r = app.router
    r.add_get("/billing/card", get_card)
    r.add_put("/billing/card", put_card)
    r.add_get("/billing/securemail", list_securemail)
    r.add_post("/billing/securemail", purchase_securemail)
    r.add_delete("/billing/securemail/{user_id}", cancel_securemail)
    r.add_get("/billing/invoices", list_invoices)
    r.add_post("/billing/invoices/email", email_invoices)
    r.add_get("/admin/billing/users/{user_id}", admin_user)
