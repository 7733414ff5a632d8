-- The data lifecycle (README, "Data lifecycle"): erasure of a person (`etl forget`), subject
-- access (`etl export`), retention (`etl retention`) and quarantine replay and purge.
-- Valid on PostgreSQL 10 to 18.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_privacy') THEN
        BEGIN
            CREATE ROLE etl_privacy NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Lookups by user, by mask and by date. Hash indexes for the equality probes: an entry is a
-- 4-byte hash code and a row pointer, not the 64-character mask, so they stay small and cheap to
-- insert into (WAL-logged and crash-safe since PostgreSQL 10). The date index is what retention
-- deletes by; dates arrive mostly in order, so its inserts land on the rightmost page.
-- On a large existing table, create them first with CREATE INDEX CONCURRENTLY under these names
-- (this migration then skips them) to avoid blocking ingest while they build.
CREATE INDEX IF NOT EXISTS user_logins_user_id_idx ON user_logins USING hash (user_id);
CREATE INDEX IF NOT EXISTS user_logins_masked_ip_idx ON user_logins USING hash (masked_ip);
CREATE INDEX IF NOT EXISTS user_logins_masked_device_id_idx
    ON user_logins USING hash (masked_device_id);
CREATE INDEX IF NOT EXISTS user_logins_create_date_idx ON user_logins (create_date);

------------------------------------------------------------------------------------------------
-- The vault epoch: one counter that every deletion of vault entries (and every erasure) raises,
-- in the same transaction, while holding its row exclusively. Ingest commits each batch holding
-- the row shared (etl.hold_vault_epoch) and compares the epoch with the one its batch was prepared
-- under; a batch prepared before a deletion is prepared again (its vault entries inserted again,
-- the suppression list read again) instead of committing a row whose mask may no longer have a
-- vault entry. The lock also makes each deletion wait for batches in flight, so it sees their rows.
CREATE TABLE IF NOT EXISTS etl.vault_epoch (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    epoch      bigint  NOT NULL DEFAULT 1
);
INSERT INTO etl.vault_epoch DEFAULT VALUES ON CONFLICT DO NOTHING;

-- A SECURITY DEFINER function, so that ingest can take the shared lock without UPDATE on the row
-- (which row locks otherwise require) and no other role can take it at all.
CREATE OR REPLACE FUNCTION etl.hold_vault_epoch()
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch FROM etl.vault_epoch v WHERE v.singleton FOR SHARE
$fn$;

CREATE OR REPLACE FUNCTION etl.vault_epoch()
RETURNS bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch FROM etl.vault_epoch v WHERE v.singleton
$fn$;

-- Held until the caller's transaction ends; a caller that deletes vault entries or adds to the
-- suppression list raises the epoch before it commits.
CREATE OR REPLACE FUNCTION etl.lock_vault_epoch()
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch FROM etl.vault_epoch v WHERE v.singleton FOR UPDATE
$fn$;

CREATE OR REPLACE FUNCTION etl.raise_vault_epoch()
RETURNS bigint
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    UPDATE etl.vault_epoch v SET epoch = v.epoch + 1 WHERE v.singleton RETURNING v.epoch
$fn$;

------------------------------------------------------------------------------------------------
-- The suppression list: keyed hashes (HMAC-SHA256 under a subkey of the mask key version named)
-- of forgotten user ids. Ingest drops their events before any write. Never the raw id.
CREATE TABLE IF NOT EXISTS etl.forgotten_users (
    id                bigserial    PRIMARY KEY,
    user_hash         bytea        NOT NULL UNIQUE CHECK (octet_length(user_hash) = 32),
    mask_key_version  integer      NOT NULL,
    forgotten_at      timestamptz  NOT NULL DEFAULT now()
);

-- Quarantined messages of a user, found by the same keyed hash when the body yields a user id.
ALTER TABLE etl.quarantine ADD COLUMN IF NOT EXISTS user_hash bytea;
CREATE INDEX IF NOT EXISTS quarantine_user_hash_idx ON etl.quarantine (user_hash)
    WHERE user_hash IS NOT NULL;
CREATE INDEX IF NOT EXISTS quarantine_received_at_idx ON etl.quarantine (received_at);

-- A message of a forgotten user is claimed as such, so a redelivery is a duplicate; a replayed
-- quarantined message becomes `written`.
ALTER TABLE etl.processed_messages DROP CONSTRAINT IF EXISTS processed_messages_outcome_check;
ALTER TABLE etl.processed_messages ADD CONSTRAINT processed_messages_outcome_check
    CHECK (outcome IN ('written', 'quarantined', 'forgotten'));
CREATE INDEX IF NOT EXISTS file_batches_committed_at_idx ON etl.file_batches (committed_at);

-- Audit rows of the lifecycle: an erasure receipt per user, a retention pass, a purge, a replay.
ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay'));

------------------------------------------------------------------------------------------------
-- Erasure. For each user (ids and their keyed hashes, in the same order): delete the user's rows,
-- then the vault entries of their masks that no remaining row refers to, then their quarantined
-- messages; add the hash to the suppression list; append an erasure receipt (hash, counts,
-- reason, ticket; the trigger adds who and when) unless nothing changed. All under the vault
-- epoch's exclusive lock, so no ingest batch commits in between (see etl.vault_epoch).
CREATE OR REPLACE FUNCTION etl.forget(p_user_ids text[], p_user_hashes bytea[],
                                      p_mask_key_version integer, p_reason text, p_ticket text)
RETURNS TABLE (user_hash bytea, logins bigint, vault_entries bigint, quarantined bigint,
               newly_suppressed boolean)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
#variable_conflict use_column
DECLARE
    v_hash bytea;
    v_logins bigint;
    v_vault bigint;
    v_vault_devices bigint;
    v_quarantined bigint;
    v_new bigint;
    v_ips text[];
    v_devices text[];
    v_changed boolean := false;
BEGIN
    IF btrim(coalesce(p_reason, '')) = '' THEN
        RAISE EXCEPTION 'a reason is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_user_ids) IS DISTINCT FROM cardinality(p_user_hashes) THEN
        RAISE EXCEPTION 'one hash per user id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM etl.lock_vault_epoch();
    FOR i IN 1 .. coalesce(cardinality(p_user_ids), 0) LOOP
        v_hash := p_user_hashes[i];
        WITH gone AS (
            DELETE FROM public.user_logins u WHERE u.user_id = p_user_ids[i]
            RETURNING u.masked_ip, u.masked_device_id
        )
        SELECT count(*), array_agg(DISTINCT g.masked_ip), array_agg(DISTINCT g.masked_device_id)
        INTO v_logins, v_ips, v_devices
        FROM gone g;
        -- Masks not written by etl (not 64 hex characters) have no vault entry to look for.
        DELETE FROM vault.entries e
        USING unnest(v_ips) AS m(mask)
        WHERE m.mask ~ '^[0-9a-f]{64}$' AND e.field = 'ip' AND e.mask = decode(m.mask, 'hex')
          AND NOT EXISTS (SELECT 1 FROM public.user_logins u WHERE u.masked_ip = m.mask);
        GET DIAGNOSTICS v_vault = ROW_COUNT;
        DELETE FROM vault.entries e
        USING unnest(v_devices) AS m(mask)
        WHERE m.mask ~ '^[0-9a-f]{64}$' AND e.field = 'device_id'
          AND e.mask = decode(m.mask, 'hex')
          AND NOT EXISTS (SELECT 1 FROM public.user_logins u WHERE u.masked_device_id = m.mask);
        GET DIAGNOSTICS v_vault_devices = ROW_COUNT;
        v_vault := v_vault + v_vault_devices;
        DELETE FROM etl.quarantine q WHERE q.user_hash = v_hash;
        GET DIAGNOSTICS v_quarantined = ROW_COUNT;
        INSERT INTO etl.forgotten_users (user_hash, mask_key_version)
        VALUES (v_hash, p_mask_key_version)
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS v_new = ROW_COUNT;
        IF v_logins + v_vault + v_quarantined + v_new > 0 THEN
            v_changed := true;
            INSERT INTO recovery.audit_log (kind, subject, reason, ticket, outcome, detail)
            VALUES ('erasure', encode(v_hash, 'hex'), p_reason, nullif(btrim(p_ticket), ''),
                    CASE WHEN v_logins + v_vault + v_quarantined > 0 THEN 'erased'
                         ELSE 'suppressed' END,
                    format('user_logins=%s vault_entries=%s quarantine=%s suppressed=%s',
                           v_logins, v_vault, v_quarantined,
                           CASE WHEN v_new > 0 THEN 'new' ELSE 'already' END));
        END IF;
        user_hash := v_hash;
        logins := v_logins;
        vault_entries := v_vault;
        quarantined := v_quarantined;
        newly_suppressed := v_new > 0;
        RETURN NEXT;
    END LOOP;
    -- When nothing was deleted or added, ingest keeps its caches.
    IF v_changed THEN
        PERFORM etl.raise_vault_epoch();
    END IF;
END
$fn$;

------------------------------------------------------------------------------------------------
-- Subject access: the rows of one user as analysts see them. The masks are then recovered through
-- recovery.request and recovery.fetch, one audit row per mask.
CREATE OR REPLACE FUNCTION recovery.subject_rows(p_user_id text)
RETURNS TABLE (message_id text, user_id text, device_type text, masked_ip text,
               masked_device_id text, locale text, app_version integer, app_version_text text,
               create_date date)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT u.message_id, u.user_id, u.device_type, u.masked_ip, u.masked_device_id, u.locale,
           u.app_version, u.app_version_text, u.create_date
    FROM public.user_logins u
    WHERE u.user_id = p_user_id
    ORDER BY u.create_date, u.message_id
$fn$;

------------------------------------------------------------------------------------------------
-- Retention settings, one row, changed by the owner (`etl retention set`). NULL: keep forever.
-- Claims are what make a redelivery a duplicate: SQS keeps a message up to 14 days, so they are
-- never kept less than that.
CREATE TABLE IF NOT EXISTS etl.retention (
    singleton        boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    logins_days      integer     CHECK (logins_days > 0),
    quarantine_days  integer     CHECK (quarantine_days > 0),
    claims_days      integer     CHECK (claims_days >= 14),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    updated_by       text        NOT NULL DEFAULT session_user
);
INSERT INTO etl.retention DEFAULT VALUES ON CONFLICT DO NOTHING;

------------------------------------------------------------------------------------------------
-- Grants. etl_privacy: erasure only (and the mask key it hashes user ids with, by row level
-- security). etl_recoverer: the subject's rows. Ingest: the epoch and the suppression list.
GRANT USAGE ON SCHEMA etl, keyring TO etl_privacy;
REVOKE ALL ON FUNCTION etl.hold_vault_epoch(), etl.vault_epoch(), etl.lock_vault_epoch(),
    etl.raise_vault_epoch(),
    etl.forget(text[], bytea[], integer, text, text), recovery.subject_rows(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.forget(text[], bytea[], integer, text, text) TO etl_privacy;
GRANT SELECT ON keyring.data_keys TO etl_privacy;
DROP POLICY IF EXISTS privacy_read ON keyring.data_keys;
CREATE POLICY privacy_read ON keyring.data_keys FOR SELECT TO etl_privacy
    USING (purpose = 'mask');
GRANT EXECUTE ON FUNCTION recovery.subject_rows(text) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION etl.hold_vault_epoch(), etl.vault_epoch() TO etl_ingest;
GRANT SELECT ON etl.forgotten_users TO etl_ingest;
