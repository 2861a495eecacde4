-- One round trip per rate-limit check (was a transaction of four statements): lock the key,
-- count its window, record the hit if allowed. In READ COMMITTED each statement of a VOLATILE
-- plpgsql function takes a fresh snapshot, so the count taken after the lock sees every hit
-- the previous holder committed: count-then-insert stays exact under concurrency. The caller
-- runs it as its own (implicit) transaction, which releases the lock at commit.
-- Returns NULL when the hit was allowed and recorded, else the oldest hit in the window.
CREATE FUNCTION rate_hit(p_key text, p_limit bigint, p_since timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
    oldest timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_key, 0));
    SELECT count(*), min(at) INTO n, oldest FROM rate_hits WHERE key = p_key AND at > p_since;
    IF n >= p_limit THEN
        RETURN oldest;
    END IF;
    INSERT INTO rate_hits (key, at) VALUES (p_key, p_now);
    RETURN NULL;
END
$$;
