-- The roles auth-service last announced for a practice user (auth.user.registered with roles,
-- auth.user.roles_changed), and when: Support's look-up opens a Stripe customer only for a
-- User Manager. NULL: never announced (users registered before events carried roles).
ALTER TABLE practice_users ADD COLUMN roles text[], ADD COLUMN roles_at timestamptz;
