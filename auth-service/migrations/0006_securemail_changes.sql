-- users.securemail_paid derived from every SecureMail grant and revoke seen for the user, by
-- the same rule as mail-service (msp_shared.securemail: by subscription when the event names
-- it, else by billing's time), instead of by time alone (0005), so the two services agree.
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

ALTER TABLE users DROP COLUMN securemail_changed_at;
