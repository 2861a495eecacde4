-- billing-service: payers (Stripe customers with a card), paid SecureMail subscriptions,
-- invoices, the reconciliation ledger, processed Stripe webhook events and the audit trail.

-- Users and their practice, from auth.user.registered (auth-service owns them): lets billing
-- check that a purchase targets a user of the caller's own practice.
CREATE TABLE practice_users (
    user_id       uuid PRIMARY KEY,
    practice_id   uuid        NOT NULL,
    registered_at timestamptz NOT NULL
);

-- A User Manager who set a card: their Stripe customer and a display-only copy of the card
-- (brand, last 4, expiry: never the number). email_sealed: the address invoices are mailed
-- to, AES-GCM sealed (see http.py for why billing holds it).
CREATE TABLE payers (
    user_id            uuid PRIMARY KEY,
    practice_id        uuid        NOT NULL,
    stripe_customer_id text        NOT NULL UNIQUE,
    payment_method_id  text,
    card_brand         text,
    card_last4         text,
    card_exp_month     integer,
    card_exp_year      integer,
    email_sealed       text,
    created_at         timestamptz NOT NULL,
    updated_at         timestamptz NOT NULL
);

-- One row per Stripe subscription we know of. 'canceled' is terminal: a late or replayed
-- "created" never revives it, and a "deleted" that arrives first leaves a canceled row.
CREATE TABLE subscriptions (
    stripe_subscription_id text PRIMARY KEY,
    payer_id               uuid        NOT NULL,
    user_id                uuid        NOT NULL,
    practice_id            uuid,
    status                 text        NOT NULL CHECK (status IN ('active', 'canceled')),
    amount_cents           integer     NOT NULL,
    currency               text        NOT NULL,
    created_at             timestamptz NOT NULL,
    canceled_at            timestamptz
);
-- At most one paid SecureMail subscription per user at a time.
CREATE UNIQUE INDEX subscriptions_one_active_per_user ON subscriptions (user_id) WHERE status = 'active';
CREATE INDEX subscriptions_payer ON subscriptions (payer_id, user_id);

CREATE TABLE invoices (
    stripe_invoice_id      text PRIMARY KEY,
    stripe_subscription_id text,
    payer_id               uuid        NOT NULL,
    user_id                uuid        NOT NULL,
    number                 text,
    status                 text        NOT NULL,
    amount_paid_cents      integer     NOT NULL,
    currency               text        NOT NULL,
    period_start           timestamptz,
    period_end             timestamptz,
    created_at             timestamptz NOT NULL
);
CREATE INDEX invoices_payer ON invoices (payer_id, created_at DESC);

-- Every grant, charge and revoke, once each (unique per kind and Stripe object), for
-- reconciliation consumers. Ids and amounts only.
CREATE TABLE ledger (
    id           bigserial PRIMARY KEY,
    kind         text        NOT NULL CHECK (kind IN ('grant', 'charge', 'revoke')),
    stripe_ref   text        NOT NULL,
    payer_id     uuid        NOT NULL,
    user_id      uuid        NOT NULL,
    amount_cents integer     NOT NULL DEFAULT 0,
    currency     text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    UNIQUE (kind, stripe_ref)
);

-- Stripe webhook events already applied (Stripe ids are text, not the inbox's uuids).
CREATE TABLE stripe_events (
    event_id    text PRIMARY KEY,
    type        text        NOT NULL,
    created     timestamptz NOT NULL,
    received_at timestamptz NOT NULL
);

-- Append-only audit trail of security events (purchases, cancellations, card changes).
CREATE TABLE audit (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL,
    actor    uuid,
    subject  uuid,
    action   text        NOT NULL,
    outcome  text        NOT NULL,
    ip       text,
    details  jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_at ON audit (at);

CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the billing audit trail is append-only';
END $$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_append_only();
