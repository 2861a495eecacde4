-- A login granted just before a revocation must not leave a session behind.
--
-- auth-service dates every grant (`granted_at`: when the request that granted it arrived,
-- before it read the account) and dates every revocation after locking the user row, so a
-- grant made on the state a revocation replaced is always older than the revocation. But the
-- revocation event can reach the gateway before the grant does (the login's answer is still
-- on its way while the event is delivered): deleting the user's rows then finds nothing, and
-- the session inserted a moment later would live on. So each revocation is remembered per
-- user, and a session is inserted only if no revocation newer than its grant is known. Both
-- take the same per-user advisory lock, so an insert and a revocation running at once cannot
-- both miss each other.
--
-- Sessions from before this migration (and grants from an auth-service without granted_at,
-- during a rolling update) are dated by created_wall, as before.

ALTER TABLE sessions ADD COLUMN granted_at timestamptz;

CREATE TABLE session_revocations (
    user_id uuid PRIMARY KEY,
    revoked_before timestamptz NOT NULL  -- sessions granted at or before this time are ended
);
CREATE INDEX session_revocations_revoked_before ON session_revocations (revoked_before);

-- Returns the row's created_wall, or NULL when a revocation newer than the grant is known
-- (nothing is inserted then). The old 10-argument insert_session stays for replicas of the
-- previous release until a rolling update has replaced them all.
CREATE FUNCTION insert_session(
    p_token_hash bytea, p_id uuid, p_user_id uuid, p_practice_id uuid, p_roles text[], p_restriction text,
    p_created_at timestamptz, p_last_seen_at timestamptz, p_client_ip text, p_user_agent text,
    p_granted_at timestamptz
) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    wall timestamptz;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);  -- soft state, see 0004
    PERFORM pg_advisory_xact_lock(hashtextextended('session-revocation:' || p_user_id::text, 0));
    IF EXISTS (SELECT 1 FROM session_revocations
               WHERE user_id = p_user_id AND revoked_before >= coalesce(p_granted_at, clock_timestamp())) THEN
        RETURN NULL;
    END IF;
    INSERT INTO sessions (token_hash, id, user_id, practice_id, roles, restriction, created_at, last_seen_at,
                          client_ip, user_agent, granted_at)
    VALUES (p_token_hash, p_id, p_user_id, p_practice_id, p_roles, p_restriction, p_created_at, p_last_seen_at,
            p_client_ip, p_user_agent, p_granted_at)
    RETURNING created_wall INTO wall;
    RETURN wall;
END
$$;

-- Ends the user's sessions granted at or before p_before and remembers the revocation; returns
-- how many rows it deleted. A synchronous commit: this is a security decision, not soft state.
CREATE FUNCTION revoke_user_sessions(p_user_id uuid, p_before timestamptz) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('session-revocation:' || p_user_id::text, 0));
    INSERT INTO session_revocations (user_id, revoked_before) VALUES (p_user_id, p_before)
    ON CONFLICT (user_id) DO UPDATE
        SET revoked_before = greatest(session_revocations.revoked_before, EXCLUDED.revoked_before);
    DELETE FROM sessions WHERE user_id = p_user_id AND coalesce(granted_at, created_wall) <= p_before;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
