-- Whether the user's phone is the number their inviter entered. That number is the one a
-- registrant must prove (the email link plus the inviter's number identify the person), so
-- registration may not replace it; a number the user typed themselves they may still change.
ALTER TABLE users ADD COLUMN phone_from_inviter boolean NOT NULL DEFAULT false;
UPDATE users SET phone_from_inviter = true WHERE status = 'invited' AND phone IS NOT NULL;
