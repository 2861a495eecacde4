-- How many times the user's sessions have been revoked (password change or reset, lock, role
-- change). Raised under the user's row lock by every revocation and read under it by every
-- grant: a grant carries the epoch it was made at and the revocation event the new one, so the
-- gateway ends exactly the sessions granted before a revocation, whatever the clocks say and
-- in whatever order the grant and the event reach it (gateway migration 0005).
ALTER TABLE users ADD COLUMN session_epoch bigint NOT NULL DEFAULT 0;
