-- auth-service: practices, users, roles, invitations, password resets and history,
-- used verification proofs, and the append-only audit trail.

CREATE TABLE practices (
    id          uuid PRIMARY KEY,
    name        text        NOT NULL,
    address     text        NOT NULL DEFAULT '',
    phone       text        NOT NULL DEFAULT '',
    identifiers jsonb       NOT NULL DEFAULT '{}',   -- e.g. {"ada": "...", "npi": "..."}
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

CREATE TABLE users (
    id                   uuid PRIMARY KEY,
    -- The practice the user belongs to (staff); NULL for a recipient invited by a sender
    -- who belongs to no practice here (a patient) and for Support staff.
    practice_id          uuid REFERENCES practices (id),
    -- The practice whose member or Support invited the user; its User Managers see the
    -- user in "Manage Users" until the user registers (if the user is not its staff).
    invited_by_practice  uuid REFERENCES practices (id),
    email                text        NOT NULL,
    first_name           text        NOT NULL DEFAULT '',
    last_name            text        NOT NULL DEFAULT '',
    phone                text,        -- E.164; the number 2-step codes go to
    cell_phone           text,        -- E.164
    phone_verified_at    timestamptz,
    time_zone            text        NOT NULL DEFAULT 'America/New_York',
    ada_number           text,
    specialties          text[]      NOT NULL DEFAULT '{}',
    status               text        NOT NULL DEFAULT 'invited'
                         CHECK (status IN ('invited', 'registered_unverified', 'verified')),
    roles                text[]      NOT NULL DEFAULT '{member}',
    two_step_required    boolean     NOT NULL DEFAULT true,
    securemail_paid      boolean     NOT NULL DEFAULT false,
    password_hash        text,
    password_changed_at  timestamptz,
    -- Set when someone else unlocked the account: the old password stays unusable until
    -- the user resets it.
    password_reset_required boolean  NOT NULL DEFAULT false,
    failed_logins        integer     NOT NULL DEFAULT 0,
    locked_at            timestamptz,
    expiry_warnings_sent integer[]   NOT NULL DEFAULT '{}',  -- days-before thresholds already mailed
    terms_version        text,
    terms_accepted_at    timestamptz,
    pending_email        text,        -- a new address waiting for its confirmation link
    last_login_at        timestamptz,
    last_invited_at      timestamptz,
    registered_at        timestamptz,
    created_at           timestamptz NOT NULL,
    updated_at           timestamptz NOT NULL
);
CREATE UNIQUE INDEX users_email_unique ON users (lower(email));
CREATE INDEX users_practice ON users (practice_id);
CREATE INDEX users_invited_by_practice ON users (invited_by_practice) WHERE status = 'invited';
CREATE INDEX users_password_age ON users (password_changed_at) WHERE password_hash IS NOT NULL;

-- Single-use tokens, stored only as sha256 digests: invitations, password resets and
-- email-change confirmations.
CREATE TABLE tokens (
    id          uuid PRIMARY KEY,
    kind        text        NOT NULL CHECK (kind IN ('invitation', 'password_reset', 'email_change')),
    user_id     uuid        NOT NULL REFERENCES users (id),
    digest      bytea       NOT NULL UNIQUE,
    created_by  uuid,                     -- the user who caused it (an inviter); NULL: self
    practice_id uuid,                     -- the practice an invitation came from
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    revoked_at  timestamptz
);
CREATE INDEX tokens_user_kind ON tokens (user_id, kind) WHERE used_at IS NULL AND revoked_at IS NULL;

CREATE TABLE password_history (
    id            bigserial PRIMARY KEY,   -- orders passwords set within the same instant
    user_id       uuid        NOT NULL REFERENCES users (id),
    password_hash text        NOT NULL,
    created_at    timestamptz NOT NULL
);
CREATE INDEX password_history_user ON password_history (user_id, id DESC);

-- Verification proofs from verify-service are accepted once: their jti is kept.
CREATE TABLE used_proofs (
    jti     text PRIMARY KEY,
    user_id uuid        NOT NULL,
    purpose text        NOT NULL,
    used_at timestamptz NOT NULL
);

-- The audit trail: who did what to whom, when, from where, and how it ended. Never
-- passwords, codes, tokens, message content or full addresses.
CREATE TABLE audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor_id    uuid,          -- who acted (NULL: anonymous or the system)
    subject_id  uuid,          -- whose account it is about
    practice_id uuid,          -- the subject's practice, for filtering
    action      text        NOT NULL,
    outcome     text        NOT NULL,
    ip          text,
    details     jsonb       NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_log_at ON audit_log (at);
CREATE INDEX audit_log_subject ON audit_log (subject_id, at);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP USING ERRCODE = 'insufficient_privilege';
END;
$$;
CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();
