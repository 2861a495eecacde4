-- Server-side sessions. The cookie value is never stored: only its SHA-256.
CREATE TABLE sessions (
    token_hash   bytea PRIMARY KEY,
    id           uuid NOT NULL UNIQUE,          -- public session id (identity header "sid")
    user_id      uuid NOT NULL,
    practice_id  uuid,
    roles        text[] NOT NULL DEFAULT '{}',
    restriction  text,                          -- null | password_expired | verification_required
    created_at   timestamptz NOT NULL,          -- by the gateway's clock (expiry rules)
    created_wall timestamptz NOT NULL DEFAULT clock_timestamp(),  -- real time, vs. revocations
    last_seen_at timestamptz NOT NULL,          -- written at most every session_touch_seconds
    client_ip    text,
    user_agent   text
);
CREATE INDEX sessions_user_id ON sessions (user_id);
CREATE INDEX sessions_last_seen_at ON sessions (last_seen_at);
CREATE INDEX sessions_created_at ON sessions (created_at);

-- Sliding-window rate-limit log shared by all gateway replicas. Keys hold ips or hashes.
CREATE TABLE rate_hits (
    key text NOT NULL,
    at  timestamptz NOT NULL
);
CREATE INDEX rate_hits_key_at ON rate_hits (key, at);
CREATE INDEX rate_hits_at ON rate_hits (at);
