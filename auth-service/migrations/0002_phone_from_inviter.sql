-- Whether the user's phone is the number their inviter entered. That number is the one a
-- registrant must prove (the email link plus the inviter's number identify the person), so
-- registration may not replace it; a number the user typed themselves they may still change.
-- Users already past registration but not verified count as the inviter's too: the safe side
-- (their practice can correct a wrong one in Manage Users).
ALTER TABLE users ADD COLUMN phone_from_inviter boolean NOT NULL DEFAULT false;
UPDATE users SET phone_from_inviter = true
 WHERE status IN ('invited', 'registered_unverified') AND phone IS NOT NULL AND phone_verified_at IS NULL;
