-- When billing made the SecureMail grant or revoke that users.securemail_paid shows (the
-- event's occurred_at): an older event arriving later (bus retries go through delay queues)
-- no longer overwrites a newer one.
ALTER TABLE users ADD COLUMN securemail_changed_at timestamptz;
