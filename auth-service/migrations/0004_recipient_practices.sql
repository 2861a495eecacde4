-- Which practices have sent secure messages to an account while it was not yet fully
-- registered (recorded by /internal/recipients, recipients.py). One invited account serves
-- every sender who writes to its address, and mail-service stores all their messages against
-- its id; so once a practice other than the one editing it has written to the address, its
-- email and phones may no longer be changed in Manage Users (manage.py): that would hand the
-- other practices' messages to whoever the new address or number belongs to.
-- practice_id NULL: a sender who belongs to no practice here, or (backfill below) senders
-- auth cannot know. Needs PostgreSQL 15 (NULLS NOT DISTINCT).
CREATE TABLE recipient_practices (
    user_id     uuid        NOT NULL REFERENCES users (id),
    practice_id uuid        REFERENCES practices (id),
    first_at    timestamptz NOT NULL,
    CONSTRAINT recipient_practices_once UNIQUE NULLS NOT DISTINCT (user_id, practice_id)
);

-- Accounts waiting to register today: the practice that invited them wrote to them (or is
-- their own). Who else wrote to an invited recipient (an account of no practice) before this
-- table existed is known only to mail-service, so those get the "unknown senders" row: the
-- safe side (their details can no longer be edited in Manage Users; a message to the correct
-- address still reaches the person).
INSERT INTO recipient_practices (user_id, practice_id, first_at)
SELECT id, invited_by_practice, created_at FROM users
 WHERE status IN ('invited', 'registered_unverified') AND invited_by_practice IS NOT NULL;
INSERT INTO recipient_practices (user_id, practice_id, first_at)
SELECT id, NULL, now() FROM users
 WHERE status IN ('invited', 'registered_unverified') AND practice_id IS NULL
ON CONFLICT DO NOTHING;
