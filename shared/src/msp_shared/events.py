"""The event envelope and the typed payloads every service shares.

Every message on the bus is an Envelope: id, type (also the routing key), version,
occurred_at, trace context and data. `data` is validated against the pydantic model
registered for (type, version); older versions are upcast by small pure functions so
consumers only ever see the current shape, and fields newer than the consumer's model are
ignored (Registry.parse), so an optional field can be added without a new version.

Payloads carry ids, not PHI: never passwords, codes, raw tokens, message bodies. Where a
consumer truly needs a secret (the address and link of an email), it travels sealed
(see seal.py)."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone
from typing import Any, Callable, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer


class EventData(BaseModel):
    """Base of every event payload. Subclasses set TYPE and VERSION."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    TYPE: ClassVar[str]
    VERSION: ClassVar[int] = 1


class Envelope(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: uuid.UUID = Field(default_factory=uuid.uuid4)
    type: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=lambda: datetime.now(timezone.utc))
    trace: dict[str, str] = Field(default_factory=dict)
    data: dict[str, Any]

    def payload(self) -> EventData:
        return REGISTRY.parse(self)


class UnknownEvent(Exception):
    pass


class Registry:
    def __init__(self) -> None:
        self._models: dict[str, type[EventData]] = {}
        self._upcasters: dict[tuple[str, int], Callable[[dict], dict]] = {}

    def register(self, model: type[EventData]) -> type[EventData]:
        self._models[model.TYPE] = model
        return model

    def upcaster(self, type_: str, from_version: int) -> Callable[[Callable[[dict], dict]], Callable[[dict], dict]]:
        def decorate(fn: Callable[[dict], dict]) -> Callable[[dict], dict]:
            self._upcasters[(type_, from_version)] = fn
            return fn

        return decorate

    def model(self, type_: str) -> type[EventData]:
        try:
            return self._models[type_]
        except KeyError:
            raise UnknownEvent(type_) from None

    def parse(self, envelope: Envelope) -> EventData:
        model = self.model(envelope.type)
        data, version = dict(envelope.data), envelope.version
        while version < model.VERSION:
            data = self._upcasters[(envelope.type, version)](data)
            version += 1
        # A tolerant reader: fields this model does not know are ignored, not refused. A field
        # added to an event (optional, same version) is then safe to publish while replicas
        # still running the older model consume, as in a rolling deploy. Producers stay
        # strict: building a payload with an unknown field raises (extra="forbid").
        if not data.keys() <= model.model_fields.keys():
            data = {k: v for k, v in data.items() if k in model.model_fields}
        return model.model_validate(data)

    def types(self) -> list[str]:
        return sorted(self._models)


REGISTRY = Registry()
event = REGISTRY.register


def make_envelope(data: EventData, *, occurred_at: datetime | None = None, trace: dict[str, str] | None = None) -> Envelope:
    return Envelope(
        type=data.TYPE,
        version=data.VERSION,
        occurred_at=occurred_at or datetime.now(timezone.utc),
        trace=trace or {},
        data=data.model_dump(mode="json"),
    )


# ---- the catalogue: every event type that crosses a service boundary -------------------

@event
class EmailRequested(EventData):
    """A command to mail-service: send one templated email. `sealed` holds the recipient
    address and any secret template values (links with tokens), sealed with the bus key."""

    TYPE = "mail.email.requested"
    template: str
    sealed: str
    params: dict[str, str] = Field(default_factory=dict)  # non-secret values only
    requested_by: str  # service name, for the audit of who asked


@event
class EmailSent(EventData):
    TYPE = "mail.email.sent"
    request_id: uuid.UUID
    template: str


@event
class SessionsRevoked(EventData):
    """auth-service: every session of this user granted before now must end (password
    change/reset, lock, role change, account disabled). `epoch`: the user's revocation count
    after this one; sessions granted at a lower epoch end (None from releases before epochs:
    then those created before the event occurred)."""

    TYPE = "auth.sessions.revoked"
    user_id: uuid.UUID
    reason: str
    epoch: int | None = Field(None, ge=1)


@event
class SessionEnded(EventData):
    """gateway: a session ended by its user (logout, or signing in again over it) or by the
    clock (idle or absolute limit), for the audit trail: ids, times and the client's address.
    Sessions ended by a revocation are not announced: auth-service audits the cause itself."""

    TYPE = "gateway.session.ended"
    user_id: uuid.UUID
    session_id: uuid.UUID
    reason: str  # "logout", "replaced", "idle" or "absolute"
    ip: str | None = None  # the client's address, when a request ended it
    last_seen_at: datetime | None = None  # the last activity recorded (written every few minutes)


@event
class UserRegistered(EventData):
    TYPE = "auth.user.registered"
    user_id: uuid.UUID
    practice_id: uuid.UUID | None = None  # None: a recipient who belongs to no practice (a patient)
    # The user's roles as registered ("user_manager": the first user of a practice is its User
    # Manager, billing-service then opens their Stripe customer). None: the producer did not
    # say; then left out of the payload (see _omit_none).
    roles: tuple[str, ...] | None = None

    @model_serializer(mode="wrap")
    def _without_unknown_roles(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_none(handler(self), "roles")


@event
class UserRolesChanged(EventData):
    """auth-service: Support granted or revoked a role (User Manager); `roles` is the user's
    whole set now. billing-service opens a Stripe customer for a new User Manager."""

    TYPE = "auth.user.roles_changed"
    user_id: uuid.UUID
    practice_id: uuid.UUID | None
    roles: tuple[str, ...]


@event
class UserLocked(EventData):
    TYPE = "auth.user.locked"
    user_id: uuid.UUID


def _omit_none(data: dict[str, Any], *optional: str) -> dict[str, Any]:
    """A payload without the optional fields added to an event after it was first published,
    when they are not given: such events stay byte for byte what they were, and consumers
    still running the older model (extra="forbid") keep accepting them."""
    for name in optional:
        if data.get(name) is None:
            data.pop(name, None)
    return data


@event
class SecureMailGranted(EventData):
    """billing-service: `user_id` may start secure messages, paid by `paid_by`.

    Grants and revokes can reach a consumer out of order (bus retries go through delay
    queues): consumers order them by the envelope's occurred_at and, when it is given, by
    `subscription_id`, the billing subscription (Stripe's sub_...) that pays for it: a revoke
    of one subscription never ends another, and a grant of a subscription already revoked
    never takes effect. Optional, and left out of the payload when not given, so events
    without it are exactly what they were before it existed."""

    TYPE = "billing.securemail.granted"
    user_id: uuid.UUID
    paid_by: uuid.UUID
    subscription_id: str | None = Field(None, max_length=255)

    @model_serializer(mode="wrap")
    def _without_unknown_subscription(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_none(handler(self), "subscription_id")


@event
class SecureMailRevoked(EventData):
    """billing-service: `user_id` no longer has paid SecureMail, because the subscription
    `subscription_id` ended (optional, as in SecureMailGranted)."""

    TYPE = "billing.securemail.revoked"
    user_id: uuid.UUID
    subscription_id: str | None = Field(None, max_length=255)

    @model_serializer(mode="wrap")
    def _without_unknown_subscription(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        return _omit_none(handler(self), "subscription_id")


@event
class VerifyCodeSent(EventData):
    """verify-service was asked for a 2-step code, for the audit trail: ids only, never the
    code or the phone number. `outcome` is "sent", or why nothing reached the phone: a send
    limit ("resend_too_soon", "too_many_codes_for_phone", "too_many_codes_for_user",
    "too_many_codes_from_ip": refused before a code was made, so `verification_id` is None)
    or the transport ("send_failed"). `ip` is the client's address and `actor_id` the
    signed-in user who asked (None: anonymous, e.g. a password reset before signing in);
    `user_id` is whose code it is.

    `ip`, `actor_id` and `outcome` were added after the event was first published: they have
    defaults, so events already queued still parse (and Registry.parse ignores them for
    consumers still running the older model). A refused send carries `verification_id` None,
    which older consumers refuse, so their bus retries it until a current replica takes it:
    deploy auth-service (the consumer) before verify-service."""

    TYPE = "verify.code.sent"
    user_id: uuid.UUID
    verification_id: uuid.UUID | None
    purpose: str
    channel: str
    outcome: str = "sent"
    ip: str | None = None
    actor_id: uuid.UUID | None = None


@event
class VerifyCodeChecked(EventData):
    """A 2-step code was checked; outcome is "ok" or why it was refused ("wrong_code",
    "code_expired", "too_many_attempts", ..., or "not_yours": someone else tried to check
    `user_id`'s verification). `ip` and `actor_id` as in VerifyCodeSent (added later, with
    defaults)."""

    TYPE = "verify.code.checked"
    user_id: uuid.UUID
    verification_id: uuid.UUID
    purpose: str
    outcome: str
    ip: str | None = None
    actor_id: uuid.UUID | None = None


@event
class InvoicePaid(EventData):
    """billing-service: a Stripe invoice for a SecureMail account was paid (ids and amounts
    only), once per invoice, for reconciliation consumers."""

    TYPE = "billing.invoice.paid"
    invoice_id: str  # Stripe's in_...
    subscription_id: str | None  # Stripe's sub_...
    payer_id: uuid.UUID
    user_id: uuid.UUID
    amount_cents: int
    currency: str
