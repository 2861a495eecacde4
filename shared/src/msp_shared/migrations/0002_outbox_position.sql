-- Events leave in the order they were written, within one transaction too: created_at is the
-- transaction's start (the same for all its rows) and the id is random.
-- Written to be quick on a big outbox: adding a column with no default rewrites nothing;
-- only rows still owed are numbered (in the order the relay used before), and published
-- rows, never claimed again, keep no position.
ALTER TABLE outbox ADD COLUMN position bigint;
CREATE SEQUENCE outbox_position_seq OWNED BY outbox.position;
UPDATE outbox SET position = owed.n
  FROM (SELECT id, row_number() OVER (ORDER BY created_at, id) AS n FROM outbox WHERE published_at IS NULL) AS owed
 WHERE outbox.id = owed.id;
SELECT setval('outbox_position_seq', coalesce((SELECT max(position) FROM outbox), 0) + 1, false);
ALTER TABLE outbox ALTER COLUMN position SET DEFAULT nextval('outbox_position_seq');
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
