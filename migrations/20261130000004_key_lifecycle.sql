-- The key lifecycle (README, "Keys"; SECURITY.md, "Rotation"): vault re-seal and retirement, and
-- mask key rotation with a re-mask. Valid on PostgreSQL 10 to 18.

------------------------------------------------------------------------------------------------
-- Which versions ingest uses. The mask key version is chosen here, not by "newest": a new mask
-- key version is pending (nothing masks with it) until `etl keys remask` has moved every mask to
-- it and switched. The lowest vault key version ingest may seal with is raised by `etl keys
-- rotate --purpose vault` and `etl keys reseal`, so that deleting the newest keyring row makes
-- ingest refuse to start instead of sealing with an older key, and so that a process still
-- holding an older key cannot add entries under it once it is to be retired.
CREATE TABLE IF NOT EXISTS keyring.key_settings (
    singleton                boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    -- NULL: the lowest stored mask key version (the only one before this migration).
    active_mask_key_version  integer     CHECK (active_mask_key_version > 0),
    -- NULL: any version.
    min_vault_key_version    integer     CHECK (min_vault_key_version > 0),
    updated_at               timestamptz NOT NULL DEFAULT now(),
    updated_by               text        NOT NULL DEFAULT session_user
);
INSERT INTO keyring.key_settings DEFAULT VALUES ON CONFLICT DO NOTHING;

CREATE OR REPLACE FUNCTION keyring.active_mask_key_version()
RETURNS integer
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(s.active_mask_key_version,
                    (SELECT min(k.version) FROM keyring.data_keys k WHERE k.purpose = 'mask'))
    FROM keyring.key_settings s WHERE s.singleton
$fn$;

-- What ingest compares its keys with at every refresh, read with the vault epoch in one
-- snapshot: the re-mask switch changes the active mask version and raises the epoch together.
CREATE OR REPLACE FUNCTION etl.key_state()
RETURNS TABLE (epoch bigint, mask_key_version integer, vault_key_version integer,
               min_vault_key_version integer)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch, keyring.active_mask_key_version(),
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'vault'),
           s.min_vault_key_version
    FROM etl.vault_epoch v, keyring.key_settings s
    WHERE v.singleton AND s.singleton
$fn$;

-- The guard of ingest's vault inserts (a one-time filter of the statement): entries are sealed
-- only under the active mask key version and a vault key version not below the minimum. A
-- process that still holds older keys gets SQLSTATE ET001, reloads its keys and prepares the
-- batch again.
CREATE OR REPLACE FUNCTION etl.check_seal_versions(p_mask_key_version integer,
                                                   p_vault_key_version integer)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_mask integer;
    v_min integer;
BEGIN
    SELECT keyring.active_mask_key_version(), s.min_vault_key_version INTO v_mask, v_min
    FROM keyring.key_settings s WHERE s.singleton;
    IF p_mask_key_version IS DISTINCT FROM v_mask
       OR p_vault_key_version < coalesce(v_min, 0) THEN
        RAISE EXCEPTION 'keys changed: the active mask key version is %, the lowest vault key version to seal with is %',
            v_mask, coalesce(v_min, 0)
            USING ERRCODE = 'ET001';
    END IF;
    RETURN true;
END
$fn$;

------------------------------------------------------------------------------------------------
-- The mask key version a quarantined row's user_hash was computed under (NULL: the lowest mask
-- key version, the only one before this migration). The re-mask switch recomputes them.
ALTER TABLE etl.quarantine ADD COLUMN IF NOT EXISTS user_hash_key_version integer;

-- The re-mask's mapping of each vault entry's mask to its mask under the pending version. Filled
-- while ingest runs, applied to user_logins in the switch, emptied after: it links masks of the
-- old key to masks of the new one, so nobody but the owner reads it, and it does not outlive the
-- re-mask.
CREATE TABLE IF NOT EXISTS vault.remask_map (
    old_mask    bytea    NOT NULL CHECK (octet_length(old_mask) = 32),
    field       text     NOT NULL,
    new_mask    bytea    NOT NULL CHECK (octet_length(new_mask) = 32),
    to_version  integer  NOT NULL,
    PRIMARY KEY (old_mask, field)
);

-- Key lifecycle rows in the audit log: what was done to which key version, never data.
ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask'));

------------------------------------------------------------------------------------------------
-- Erasure, as in migration data_lifecycle, refusing hashes made under a mask key version that is
-- no longer the active one (SQLSTATE ET001): `etl forget` then hashes again. Same signature, so
-- the grants stay.
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
    -- The hashes were made under the version active when the caller read it; a re-mask switch
    -- that committed since (while this waited for the epoch) re-hashed the quarantine under
    -- another one. The caller reads the active version again and retries.
    IF p_mask_key_version IS DISTINCT FROM keyring.active_mask_key_version() THEN
        RAISE EXCEPTION 'the active mask key version is no longer %', p_mask_key_version
            USING ERRCODE = 'ET001';
    END IF;
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
REVOKE ALL ON FUNCTION keyring.active_mask_key_version(), etl.key_state(),
    etl.check_seal_versions(integer, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.key_state(), etl.check_seal_versions(integer, integer)
    TO etl_ingest;
-- Ingest and erasure hash user ids under the active mask key version.
GRANT EXECUTE ON FUNCTION keyring.active_mask_key_version() TO etl_ingest, etl_privacy;
