-- SecureMail grants and revokes applied in the order billing made them, not the order the
-- bus delivers them in (retries go through delay queues): every one seen is kept, and
-- securemail_accounts is derived from all of a user's (see msp_mail/messaging/securemail.py).
-- A user's state from before this table existed is replaced by the first event that arrives
-- for them afterwards, as before.

CREATE TABLE securemail_changes (
    event_id        uuid PRIMARY KEY,                    -- the envelope's id
    user_id         uuid        NOT NULL,
    kind            text        NOT NULL CHECK (kind IN ('grant', 'revoke')),
    occurred_at     timestamptz NOT NULL,                -- the envelope's: when billing made it
    subscription_id text,                                -- billing's subscription, when the event names it
    paid_by         uuid,                                -- grants
    received_at     timestamptz NOT NULL
);
CREATE INDEX securemail_changes_user ON securemail_changes (user_id);

-- Which grant pays for the account now (NULL for rows written before this migration).
ALTER TABLE securemail_accounts
    ADD COLUMN subscription_id text,
    ADD COLUMN grant_event_id  uuid,
    ADD COLUMN grant_occurred_at timestamptz;
