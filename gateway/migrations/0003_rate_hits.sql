-- Every rate-limit check of one request (per client IP, then per account) in one round trip and
-- one transaction: a login paid one rate_hit() statement, commit included, per key.
-- The keys are locked first, in lock-id order, so two requests sharing keys cannot deadlock;
-- then they are counted in the order given, and the first key at its limit refuses the request:
-- its hit and those of the keys after it are not recorded (an address over its limit does not
-- spend the account's budget), the hits before it are, exactly as one rate_hit() per key in
-- turn did. As in rate_hit(), each statement of this VOLATILE function takes a fresh snapshot
-- in READ COMMITTED, so a count taken under the lock sees every hit its previous holder
-- committed. Returns NULL when every hit was allowed and recorded, else the oldest hit in the
-- refusing key's window.
CREATE FUNCTION rate_hits(p_keys text[], p_limits bigint[], p_since timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lock_id bigint;
    n bigint;
    oldest timestamptz;
BEGIN
    FOR lock_id IN SELECT DISTINCT hashtextextended(k, 0) FROM unnest(p_keys) AS k ORDER BY 1 LOOP
        PERFORM pg_advisory_xact_lock(lock_id);
    END LOOP;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        SELECT count(*), min(at) INTO n, oldest FROM rate_hits WHERE key = p_keys[i] AND at > p_since;
        IF n >= p_limits[i] THEN
            RETURN oldest;
        END IF;
        INSERT INTO rate_hits (key, at) VALUES (p_keys[i], p_now);
    END LOOP;
    RETURN NULL;
END
$$;
