-- Rate-limit hits and new sessions are soft state: their commits need not wait for the WAL
-- to reach the disk. On this kind of VM that wait (an fdatasync per commit) cost ~80 µs of
-- database CPU per statement, two of the three commits of every login.
--
-- What a database crash can then lose: the hits and the new sessions of its last ~0.6 s
-- (three times wal_writer_delay). A lost hit returns one attempt to a client's budget; a
-- lost session signs its user out (fail closed). Nothing else changes: an asynchronous commit
-- is visible to other transactions at once (so a hit counted under the key's lock is seen by
-- the next holder, exactly as before), and WAL is replayed in order, so any later durable
-- commit (a logout, a revocation) makes every earlier one durable too. Deletes of sessions,
-- the audit trail and everything security-relevant keep synchronous commits.
--
-- set_config(..., true) is SET LOCAL: it lasts until the end of the caller's transaction, the
-- implicit one of the single statement that calls these functions.

CREATE OR REPLACE FUNCTION rate_hits(p_keys text[], p_limits bigint[], p_since timestamptz, p_now timestamptz)
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    lock_id bigint;
    n bigint;
    oldest timestamptz;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
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

CREATE FUNCTION insert_session(
    p_token_hash bytea, p_id uuid, p_user_id uuid, p_practice_id uuid, p_roles text[], p_restriction text,
    p_created_at timestamptz, p_last_seen_at timestamptz, p_client_ip text, p_user_agent text
) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    wall timestamptz;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    INSERT INTO sessions (token_hash, id, user_id, practice_id, roles, restriction, created_at, last_seen_at,
                          client_ip, user_agent)
    VALUES (p_token_hash, p_id, p_user_id, p_practice_id, p_roles, p_restriction, p_created_at, p_last_seen_at,
            p_client_ip, p_user_agent)
    RETURNING created_wall INTO wall;
    RETURN wall;
END
$$;
