-- Outbound email: one row per EmailRequested event (id = the event id), delivered by the
-- sender task. The recipient and secret values stay sealed (never stored opened) and the
-- sealed blob is dropped once the mail is sent or given up. last_error holds an error
-- class or SMTP code, never the server's text (it may quote the address).
CREATE TABLE outbound_emails (
    id              uuid        PRIMARY KEY,
    template        text        NOT NULL,
    sealed          text,
    params          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    requested_by    text        NOT NULL,
    status          text        NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL,
    locked_until    timestamptz,
    last_error      text,
    requested_at    timestamptz NOT NULL,
    finished_at     timestamptz
);
CREATE INDEX outbound_emails_due ON outbound_emails (next_attempt_at) WHERE status = 'pending';
