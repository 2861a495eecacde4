-- Events leave in the order they were written, within one transaction too: created_at is the
-- transaction's start (the same for all its rows) and the id is random.
ALTER TABLE outbox ADD COLUMN position bigint GENERATED ALWAYS AS IDENTITY;
DROP INDEX outbox_unpublished;
CREATE INDEX outbox_unpublished ON outbox (position) WHERE published_at IS NULL;
