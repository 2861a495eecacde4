-- A login granted just before a revocation must not leave a session behind; a session
-- granted just before the password expires is restricted once it has.
--
-- A revocation (password change or reset, lock, role change) must end every session granted on
-- the state it replaced, including one whose grant is still on its way when the revocation
-- reaches the gateway: deleting the user's rows then finds nothing, and the session inserted a
-- moment later would live on.
--
-- auth-service counts revocations per user (users.session_epoch, raised under the user's row
-- lock; logins read it under the same lock). A grant carries the epoch it was made at, a
-- revocation event the new epoch, so "granted before the revocation" is "epoch below the
-- revocation's", with no clocks to agree on. The gateway remembers the highest epoch revoked
-- per user and inserts a session only at or above it; a grant at a higher epoch than the user's
-- other sessions ends them at once (a password change through the gateway ends the others even
-- while the bus is down). Inserts and revocations of one user take the same advisory lock, so
-- neither can miss the other.
--
-- Sessions and events from before epochs (a rolling update) compare times as before:
-- created_wall against the revocation event's occurred_at. The 10-argument insert_session of
-- 0004 stays for gateway replicas of the previous release until the rollout is complete.

ALTER TABLE sessions ADD COLUMN epoch bigint;  -- auth-service's session epoch of the grant
-- When the user's password expires: from then on the session is restricted to changing it,
-- however long ago it was granted (NULL: no expiry, or a grant from before this migration).
ALTER TABLE sessions ADD COLUMN password_expires_at timestamptz;

CREATE TABLE session_revocations (
    user_id uuid PRIMARY KEY,
    min_epoch bigint NOT NULL,  -- sessions granted at a lower epoch are ended
    recorded_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX session_revocations_recorded_at ON session_revocations (recorded_at);

-- Remember that sessions below p_epoch are ended (never lowers what is known).
CREATE FUNCTION remember_revocation(p_user_id uuid, p_epoch bigint) RETURNS void
LANGUAGE sql VOLATILE AS $$
    INSERT INTO session_revocations (user_id, min_epoch) VALUES (p_user_id, p_epoch)
    ON CONFLICT (user_id) DO UPDATE SET min_epoch = EXCLUDED.min_epoch, recorded_at = clock_timestamp()
        WHERE session_revocations.min_epoch < EXCLUDED.min_epoch;
$$;

-- wall: the row's created_wall, or NULL (nothing inserted) when the grant's epoch has been
-- revoked already; ended_older: whether it ended the user's sessions of older epochs (so that
-- the replica drops its cached copies only then).
CREATE FUNCTION insert_session(
    p_token_hash bytea, p_id uuid, p_user_id uuid, p_practice_id uuid, p_roles text[], p_restriction text,
    p_created_at timestamptz, p_last_seen_at timestamptz, p_client_ip text, p_user_agent text, p_epoch bigint,
    p_password_expires_at timestamptz, OUT wall timestamptz, OUT ended_older boolean
)
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    known bigint;
BEGIN
    ended_older := false;
    IF p_epoch IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('session-epoch:' || p_user_id::text, 0));
        SELECT min_epoch INTO known FROM session_revocations WHERE user_id = p_user_id;
        IF known > p_epoch THEN
            RETURN;  -- wall stays NULL
        END IF;
        IF p_epoch > coalesce(known, 0) THEN
            -- A revocation this gateway has not heard of yet: end the older sessions (those from
            -- before epochs too), with a synchronous commit like every revocation.
            PERFORM remember_revocation(p_user_id, p_epoch);
            DELETE FROM sessions WHERE user_id = p_user_id AND (epoch < p_epoch OR epoch IS NULL);
            ended_older := true;
        ELSE
            PERFORM set_config('synchronous_commit', 'off', true);  -- only a new row: soft state, see 0004
        END IF;
    ELSE
        PERFORM set_config('synchronous_commit', 'off', true);
    END IF;
    INSERT INTO sessions (token_hash, id, user_id, practice_id, roles, restriction, created_at, last_seen_at,
                          client_ip, user_agent, epoch, password_expires_at)
    VALUES (p_token_hash, p_id, p_user_id, p_practice_id, p_roles, p_restriction, p_created_at, p_last_seen_at,
            p_client_ip, p_user_agent, p_epoch, p_password_expires_at)
    RETURNING created_wall INTO wall;
END
$$;

-- Ends the user's sessions below p_min_epoch (those without an epoch, or all of them for an
-- event without one: by time, created at or before p_before) and remembers the epoch; returns
-- how many rows it deleted. A synchronous commit: a security decision, not soft state.
CREATE FUNCTION revoke_user_sessions(p_user_id uuid, p_before timestamptz, p_min_epoch bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    n bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('session-epoch:' || p_user_id::text, 0));
    IF p_min_epoch IS NOT NULL THEN
        PERFORM remember_revocation(p_user_id, p_min_epoch);
    END IF;
    DELETE FROM sessions WHERE user_id = p_user_id AND CASE
        WHEN epoch IS NOT NULL AND p_min_epoch IS NOT NULL THEN epoch < p_min_epoch
        ELSE created_wall <= p_before END;
    GET DIAGNOSTICS n = ROW_COUNT;
    RETURN n;
END
$$;
