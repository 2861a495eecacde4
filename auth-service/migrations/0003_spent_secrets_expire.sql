-- A used proof's jti is needed only while the proof could still be presented: until its own
-- expiry (older rows, from before this column, get a day's margin when pruned).
ALTER TABLE used_proofs ADD COLUMN expires_at timestamptz;
