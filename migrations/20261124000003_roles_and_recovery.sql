-- Access control and audited recovery. Idempotent, and valid on PostgreSQL 10 to 17.
--
-- Group roles (NOLOGIN; deployments grant them to login users):
--   etl_ingest     writes user_logins, quarantine, processed ids and the vault; reads the wrapped
--                  keys; cannot read vault ciphertext.
--   etl_analyst    reads user_logins only.
--   etl_recoverer  no table privileges; may only call recovery.request and recovery.fetch.
-- The migrating owner is none of these.

-- Roles are cluster-wide: another database of the same cluster may create them concurrently.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['etl_ingest', 'etl_analyst', 'etl_recoverer'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

-- Analysts: user_logins only.
GRANT SELECT ON user_logins TO etl_analyst;

-- Ingest: insert what it produces, read the wrapped keys, nothing else.
GRANT INSERT ON user_logins TO etl_ingest;
GRANT USAGE ON SCHEMA etl, vault, keyring TO etl_ingest;
GRANT SELECT, INSERT ON etl.processed_messages TO etl_ingest;
GRANT SELECT, INSERT ON etl.quarantine TO etl_ingest;
GRANT INSERT ON vault.entries TO etl_ingest;
-- ON CONFLICT (field, mask) needs to read the conflict columns, never the ciphertext.
GRANT SELECT (field, mask) ON vault.entries TO etl_ingest;
GRANT SELECT ON keyring.data_keys TO etl_ingest;

-- Row level security on the vault and the keys, enforced even for the owner, as defence in depth
-- against a grant made by mistake: a role without a policy sees and writes nothing.
ALTER TABLE vault.entries ENABLE ROW LEVEL SECURITY;
ALTER TABLE vault.entries FORCE ROW LEVEL SECURITY;
ALTER TABLE keyring.data_keys ENABLE ROW LEVEL SECURITY;
ALTER TABLE keyring.data_keys FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS owner_all ON vault.entries;
CREATE POLICY owner_all ON vault.entries TO CURRENT_USER USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS ingest_insert ON vault.entries;
CREATE POLICY ingest_insert ON vault.entries FOR INSERT TO etl_ingest WITH CHECK (true);
-- ON CONFLICT must see existing keys to skip them; the column grant above keeps ciphertext unread.
DROP POLICY IF EXISTS ingest_conflict_check ON vault.entries;
CREATE POLICY ingest_conflict_check ON vault.entries FOR SELECT TO etl_ingest USING (true);
DROP POLICY IF EXISTS owner_all ON keyring.data_keys;
CREATE POLICY owner_all ON keyring.data_keys TO CURRENT_USER USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS ingest_read ON keyring.data_keys;
CREATE POLICY ingest_read ON keyring.data_keys FOR SELECT TO etl_ingest USING (true);

-- The audit trail of recoveries. Nobody but the owner reads or changes it.
CREATE SCHEMA IF NOT EXISTS recovery;
REVOKE ALL ON SCHEMA recovery FROM PUBLIC;
CREATE SEQUENCE IF NOT EXISTS recovery.request_ids;
CREATE TABLE IF NOT EXISTS recovery.audit_log (
    id                bigserial    PRIMARY KEY,
    request_id        bigint       NOT NULL,
    requested_at      timestamptz  NOT NULL DEFAULT now(),
    db_user           text         NOT NULL,
    client_addr       inet,
    application_name  text,
    field             text         NOT NULL,
    mask              text         NOT NULL,
    reason            text         NOT NULL,
    ticket            text,
    outcome           text         NOT NULL CHECK (outcome IN ('found', 'not_found', 'refused')),
    -- The transaction that wrote the row: fetch serves only requests committed before it.
    request_txid      bigint       NOT NULL,
    fetched_at        timestamptz
);
CREATE INDEX IF NOT EXISTS audit_log_request_id_idx ON recovery.audit_log (request_id);

-- Step 1: record who asks for which masks and why. The caller commits this before step 2, so
-- the audit row exists whatever the caller does afterwards (rolling back, aborting a statement).
-- A blank reason or an unknown field is recorded as refused and nothing can be fetched for it.
CREATE OR REPLACE FUNCTION recovery.request(p_field text, p_masks text[], p_reason text, p_ticket text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_request bigint := nextval('recovery.request_ids');
    v_reason text := btrim(coalesce(p_reason, ''));
    v_refused boolean := v_reason = '' OR p_field IS NULL OR p_field NOT IN ('ip', 'device_id');
BEGIN
    INSERT INTO recovery.audit_log (request_id, db_user, client_addr, application_name, field, mask,
                                    reason, ticket, outcome, request_txid)
    SELECT v_request, session_user, inet_client_addr(), current_setting('application_name'),
           coalesce(p_field, ''), m.mask, coalesce(p_reason, ''), nullif(btrim(p_ticket), ''),
           CASE
               WHEN v_refused THEN 'refused'
               WHEN EXISTS (SELECT 1 FROM vault.entries e WHERE e.field = p_field AND e.mask = m.mask)
                   THEN 'found'
               ELSE 'not_found'
           END,
           txid_current()
    FROM unnest(coalesce(p_masks, ARRAY[]::text[])) AS m(mask);
    RETURN v_request;
END
$fn$;

-- Step 2: the ciphertexts of a committed request made by the same database user, with the
-- wrapped vault keys that open them. Refused and not-found masks return no ciphertext.
CREATE OR REPLACE FUNCTION recovery.fetch(p_request bigint)
RETURNS TABLE (mask text, outcome text, ciphertext bytea, vault_key_version integer,
               kms_key_id text, wrapped_key bytea)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
BEGIN
    IF EXISTS (SELECT 1 FROM recovery.audit_log a
               WHERE a.request_id = p_request AND a.request_txid = txid_current()) THEN
        RAISE EXCEPTION 'recovery request % must be committed before it is fetched', p_request
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE recovery.audit_log a SET fetched_at = now()
    WHERE a.request_id = p_request AND a.db_user = session_user AND a.fetched_at IS NULL;
    RETURN QUERY
    SELECT a.mask, a.outcome, e.ciphertext, e.vault_key_version, k.kms_key_id, k.wrapped_key
    FROM recovery.audit_log a
    LEFT JOIN vault.entries e
           ON a.outcome = 'found' AND e.field = a.field AND e.mask = a.mask
    LEFT JOIN keyring.data_keys k
           ON k.purpose = 'vault' AND k.version = e.vault_key_version
    WHERE a.request_id = p_request AND a.db_user = session_user
    ORDER BY a.id;
END
$fn$;

REVOKE ALL ON FUNCTION recovery.request(text, text[], text, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION recovery.fetch(bigint) FROM PUBLIC;
GRANT USAGE ON SCHEMA recovery TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.request(text, text[], text, text) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.fetch(bigint) TO etl_recoverer;
