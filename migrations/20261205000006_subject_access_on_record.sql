-- Every opening on record before it happens (issue 22): reading a person's rows for a subject
-- access request (`etl export`) is under the recovery policy and needs an audit row committed
-- first (as `recovery.fetch` needs its request's), naming the person by a keyed hash of their id
-- (never the id). The key is
-- this database's own, readable by no role; the same person has the same hash in every row, so
-- an auditor can count a person's exports without learning who they are.

ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask', 'approval', 'key_creation', 'key_rewrap',
                    'retention_setting', 'subject_access'));

CREATE TABLE IF NOT EXISTS recovery.subject_key (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    key        bytea   NOT NULL CHECK (octet_length(key) = 32)
);
REVOKE ALL ON recovery.subject_key FROM PUBLIC;

-- 32 bytes from the server's strong random source: two version-4 UUIDs (244 random bits) on 13
-- and later, pgcrypto before.
DO $$
BEGIN
    IF EXISTS (SELECT 1 FROM recovery.subject_key) THEN
        RETURN;
    END IF;
    IF current_setting('server_version_num')::int >= 130000 THEN
        EXECUTE $q$INSERT INTO recovery.subject_key (key)
            SELECT decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''),
                          'hex')$q$;
    ELSE
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
        EXECUTE format('INSERT INTO recovery.subject_key (key) SELECT %I.gen_random_bytes(32)',
                       (SELECT n.nspname FROM pg_extension e
                        JOIN pg_namespace n ON n.oid = e.extnamespace
                        WHERE e.extname = 'pgcrypto'));
    END IF;
END
$$;

-- A person's name in the audit log: SHA-256 of the database's subject key and the id.
CREATE OR REPLACE FUNCTION recovery.subject_hash(p_user_id text)
RETURNS text
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT 'user:' || encode(recovery.sha256(k.key || convert_to(p_user_id, 'UTF8')), 'hex')
    FROM recovery.subject_key k WHERE k.singleton
$fn$;

-- Step 1, committed by the caller before step 2: who reads whose rows, and why, under the
-- recovery policy. A refusal is on record too; the caller gets its reason.
CREATE OR REPLACE FUNCTION recovery.subject_access(p_user_id text, p_reason text, p_ticket text,
                                                   OUT access_id bigint, OUT refusal text)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_rows bigint;
BEGIN
    -- Values are counted by the requests that open them; reading rows is counted as none.
    refusal := recovery.refusal(p_reason, p_ticket, 0);
    SELECT count(*) INTO v_rows FROM public.user_logins u WHERE u.user_id = p_user_id;
    INSERT INTO recovery.audit_log (kind, subject, reason, ticket, outcome, detail, request_txid)
    VALUES ('subject_access', recovery.subject_hash(p_user_id), coalesce(p_reason, ''),
            nullif(btrim(p_ticket), ''),
            CASE WHEN refusal IS NOT NULL THEN 'refused'
                 WHEN v_rows > 0 THEN 'found' ELSE 'not_found' END,
            coalesce(refusal, format('user_logins=%s', v_rows)), txid_current())
    RETURNING id INTO access_id;
END
$fn$;

-- Step 2: the rows, only for an access of this user's, for this person, not refused, committed
-- by an earlier transaction (so it stands whatever this one does) and at most ten minutes old.
DROP FUNCTION IF EXISTS recovery.subject_rows(text);
DROP FUNCTION IF EXISTS recovery.subject_rows(text, text, text);
CREATE FUNCTION recovery.subject_rows(p_access_id bigint, p_user_id text)
RETURNS TABLE (message_id text, user_id text, device_type text, masked_ip text,
               masked_device_id text, locale text, app_version integer, app_version_text text,
               create_date date)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM recovery.audit_log a
        WHERE a.id = p_access_id AND a.kind = 'subject_access' AND a.db_user = session_user
          AND a.outcome <> 'refused' AND a.subject = recovery.subject_hash(p_user_id)
          AND a.request_txid <> txid_current()
          AND a.logged_at > now() - interval '10 minutes') THEN
        RAISE EXCEPTION 'no committed subject access % of yours for this person', p_access_id
            USING ERRCODE = 'ET002';
    END IF;
    RETURN QUERY
        -- The table's varchar columns, as the text this function returns.
        SELECT u.message_id::text, u.user_id::text, u.device_type::text, u.masked_ip::text,
               u.masked_device_id::text, u.locale::text, u.app_version,
               u.app_version_text::text, u.create_date
        FROM public.user_logins u
        WHERE u.user_id = p_user_id
        ORDER BY u.create_date, u.message_id;
END
$fn$;

REVOKE ALL ON FUNCTION recovery.subject_hash(text),
    recovery.subject_access(text, text, text), recovery.subject_rows(bigint, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recovery.subject_access(text, text, text),
    recovery.subject_rows(bigint, text) TO etl_recoverer;
