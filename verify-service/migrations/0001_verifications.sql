-- One row per code sent. A resend adds a row and marks the previous live one superseded, so
-- the table is also the send log the rate limits count. Only the code's HMAC is stored.
CREATE TABLE verifications (
    id          uuid        PRIMARY KEY,
    user_id     uuid        NOT NULL,
    purpose     text        NOT NULL,
    phone       text        NOT NULL,  -- E.164, needed for the proof; never logged or audited
    channel     text        NOT NULL CHECK (channel IN ('sms', 'call')),
    code_hash   bytea       NOT NULL,
    salt        bytea       NOT NULL,
    ip          text,
    created_at  timestamptz NOT NULL,
    expires_at  timestamptz NOT NULL,
    attempts    integer     NOT NULL DEFAULT 0,
    status      text        NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'superseded', 'verified', 'dead', 'failed')),
    verified_at timestamptz
);
CREATE INDEX verifications_user_purpose ON verifications (user_id, purpose, created_at DESC);
CREATE INDEX verifications_user ON verifications (user_id, created_at);
CREATE INDEX verifications_phone ON verifications (phone, created_at);
CREATE INDEX verifications_ip ON verifications (ip, created_at);

-- Append-only audit trail of every code sent, refused or checked: who, what, when, from where.
-- Never the code, never the full phone number (at most its last two digits).
CREATE TABLE audit (
    id              bigserial   PRIMARY KEY,
    at              timestamptz NOT NULL,
    actor_id        text,        -- the signed-in user making the request; NULL when anonymous
    user_id         uuid        NOT NULL,  -- whose phone is being verified
    action          text        NOT NULL CHECK (action IN ('code.sent', 'code.checked')),
    outcome         text        NOT NULL,
    verification_id uuid,
    purpose         text,
    channel         text,
    ip              text,
    phone_hint      text        CHECK (phone_hint ~ '^[0-9]{0,2}$')
);
CREATE INDEX audit_user ON audit (user_id, at);

CREATE FUNCTION audit_is_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'verify.audit is append-only';
END;
$$;
CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit
    FOR EACH ROW EXECUTE FUNCTION audit_is_append_only();
