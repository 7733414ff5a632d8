-- A key of its own for user-id hashes and backfilled lines' digests (issue 22): purpose `user`.
-- Derived from the mask key before, they kept every mask key version in use for ever, since the
-- suppression list keeps no ids to hash again; now `etl keys retire --purpose mask` retires a
-- version once the re-mask has moved every mask off it. `etl keys init` creates the user key: a
-- deployment that already holds hashes gets user key version N made of the two subkeys mask key
-- version N derived, so what is stored stays valid with no rewrite, and the version numbers
-- below (suppression rows, quarantined rows' hashes) now name user key versions.

ALTER TABLE keyring.data_keys DROP CONSTRAINT IF EXISTS data_keys_purpose_check;
ALTER TABLE keyring.data_keys ADD CONSTRAINT data_keys_purpose_check
    CHECK (purpose IN ('mask', 'vault', 'quarantine', 'user'));

-- A digest under the user key version (never the key): `etl.forget` refuses hashes made with any
-- other key.
ALTER TABLE keyring.data_keys ADD COLUMN IF NOT EXISTS key_check bytea;
ALTER TABLE keyring.data_keys DROP CONSTRAINT IF EXISTS data_keys_key_check_check;
ALTER TABLE keyring.data_keys ADD CONSTRAINT data_keys_key_check_check
    CHECK ((purpose = 'user') = (key_check IS NOT NULL)
           AND (key_check IS NULL OR octet_length(key_check) = 32));

-- Ingest hashes user ids and digests lines; a privacy officer hashes the ids to forget, and
-- needs the user key alone: no longer the mask key, with which every mask could be tested.
DROP POLICY IF EXISTS ingest_read ON keyring.data_keys;
CREATE POLICY ingest_read ON keyring.data_keys FOR SELECT TO etl_ingest
    USING (purpose IN ('mask', 'vault', 'user'));
DROP POLICY IF EXISTS privacy_read ON keyring.data_keys;
CREATE POLICY privacy_read ON keyring.data_keys FOR SELECT TO etl_privacy
    USING (purpose = 'user');

ALTER TABLE etl.forgotten_users RENAME COLUMN mask_key_version TO user_key_version;
-- NULL meant the lowest mask key version: say it, as the user key version it now names.
UPDATE etl.quarantine
SET user_hash_key_version = (SELECT min(k.version) FROM keyring.data_keys k
                             WHERE k.purpose = 'mask')
WHERE user_hash IS NOT NULL AND user_hash_key_version IS NULL;

-- What ingest compares its keys with: the newest user key version joins them, so a running
-- ingest hashes with a rotated user key without a restart.
DROP FUNCTION IF EXISTS etl.key_state();
CREATE FUNCTION etl.key_state()
RETURNS TABLE (epoch bigint, mask_key_version integer, vault_key_version integer,
               min_vault_key_version integer, quarantine_key_version integer,
               min_quarantine_key_version integer, user_key_version integer)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch, keyring.active_mask_key_version(),
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'vault'),
           s.min_vault_key_version,
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'quarantine'),
           s.min_quarantine_key_version,
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'user')
    FROM etl.vault_epoch v, keyring.key_settings s
    WHERE v.singleton AND s.singleton
$fn$;
REVOKE ALL ON FUNCTION etl.key_state() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.key_state() TO etl_ingest;

-- Erasure, as in migration forget_across_mask_versions, with hashes under the newest user key
-- version (SQLSTATE ET001 after a rotation: `etl forget` hashes again) and that version's key
-- check: a hash made with any other key, or by a caller without the key, is refused. The
-- quarantine is searched under every version given, since its rows keep the version they were
-- hashed with.
DROP FUNCTION etl.forget(text[], bytea[], integer, text, text, bytea[], integer[]);

CREATE FUNCTION etl.forget(p_user_ids text[], p_user_hashes bytea[],
                           p_user_key_version integer, p_key_check bytea,
                           p_reason text, p_ticket text,
                           p_earlier_hashes bytea[], p_earlier_users integer[])
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
    v_hashes bytea[];
    v_logins bigint;
    v_vault bigint;
    v_vault_devices bigint;
    v_quarantined bigint;
    v_new bigint;
    v_already boolean;
    v_ips text[];
    v_devices text[];
    v_changed boolean := false;
BEGIN
    IF btrim(coalesce(p_reason, '')) = '' THEN
        RAISE EXCEPTION 'a reason is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- An empty call would hold the vault epoch for nothing.
    IF coalesce(cardinality(p_user_ids), 0) = 0 THEN
        RAISE EXCEPTION 'no user id given' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF cardinality(p_user_ids) IS DISTINCT FROM cardinality(p_user_hashes)
       OR coalesce(cardinality(p_earlier_hashes), 0)
          IS DISTINCT FROM coalesce(cardinality(p_earlier_users), 0) THEN
        RAISE EXCEPTION 'one hash per user id' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (SELECT 1 FROM unnest(p_user_hashes) AS h(hash)
               WHERE h.hash IS NULL OR octet_length(h.hash) <> 32) THEN
        RAISE EXCEPTION 'a user hash is 32 bytes' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    PERFORM etl.lock_vault_epoch();
    -- A rotation that committed since the caller read the newest version (while this waited for
    -- the epoch): the caller hashes again under the new one.
    IF p_user_key_version IS DISTINCT FROM
       (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'user') THEN
        RAISE EXCEPTION 'the newest user key version is no longer %', p_user_key_version
            USING ERRCODE = 'ET001';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM keyring.data_keys k
                   WHERE k.purpose = 'user' AND k.version = p_user_key_version
                     AND k.key_check = p_key_check) THEN
        RAISE EXCEPTION 'the hashes were not made with user key version %', p_user_key_version
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. cardinality(p_user_ids) LOOP
        v_hash := p_user_hashes[i];
        -- One array, so lookups are index probes on user_hash.
        v_hashes := ARRAY(SELECT o.hash FROM unnest(p_earlier_hashes, p_earlier_users) AS o(hash, u)
                          WHERE o.u = i) || v_hash;
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
        DELETE FROM etl.quarantine q WHERE q.user_hash = ANY (v_hashes);
        GET DIAGNOSTICS v_quarantined = ROW_COUNT;
        -- Forgotten under an earlier user key version, the user is still suppressed: ingest
        -- checks the hashes of every stored version.
        v_already := EXISTS (SELECT 1 FROM etl.forgotten_users f WHERE f.user_hash = ANY (v_hashes));
        v_new := 0;
        IF NOT v_already THEN
            INSERT INTO etl.forgotten_users (user_hash, user_key_version)
            VALUES (v_hash, p_user_key_version)
            ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS v_new = ROW_COUNT;
        END IF;
        IF v_logins + v_vault + v_quarantined + v_new > 0 THEN
            v_changed := true;
            INSERT INTO recovery.audit_log (kind, subject, reason, ticket, outcome, detail)
            VALUES ('erasure', encode(v_hash, 'hex'), p_reason, nullif(btrim(p_ticket), ''),
                    CASE WHEN v_logins + v_vault + v_quarantined > 0 THEN 'erased'
                         ELSE 'suppressed' END,
                    CASE WHEN v_logins + v_vault + v_quarantined = 0
                         THEN 'nothing found; suppressed=new'
                         ELSE format('user_logins=%s vault_entries=%s quarantine=%s suppressed=%s',
                                     v_logins, v_vault, v_quarantined,
                                     CASE WHEN v_new > 0 THEN 'new' ELSE 'already' END) END);
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

REVOKE ALL ON FUNCTION etl.forget(text[], bytea[], integer, bytea, text, text, bytea[], integer[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.forget(text[], bytea[], integer, bytea, text, text, bytea[], integer[])
    TO etl_privacy;

-- The key checks are for `etl.forget` to compare, not for its callers to read: a login that could
-- read a check could pass it without holding the key.
REVOKE SELECT ON keyring.data_keys FROM etl_ingest, etl_privacy;
GRANT SELECT (purpose, version, kms_key_id, wrapped_key, created_at, public_key,
              public_key_attestation)
    ON keyring.data_keys TO etl_ingest, etl_privacy;

-- User key versions that stored hashes name but the keyring lacks (a carry-over cut short, a row
-- deleted): ingest and `etl forget` refuse to run without them, since a forgotten user hashed
-- under a missing version would no longer be recognised.
CREATE OR REPLACE FUNCTION etl.missing_user_key_versions()
RETURNS integer[]
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(array_agg(v ORDER BY v), '{}')
    FROM (SELECT f.user_key_version AS v FROM etl.forgotten_users f
          UNION
          SELECT q.user_hash_key_version FROM etl.quarantine q
          WHERE q.user_hash IS NOT NULL AND q.user_hash_key_version IS NOT NULL) used
    WHERE NOT EXISTS (SELECT 1 FROM keyring.data_keys k
                      WHERE k.purpose = 'user' AND k.version = used.v)
$fn$;
REVOKE ALL ON FUNCTION etl.missing_user_key_versions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.missing_user_key_versions() TO etl_ingest, etl_privacy;

-- A privacy officer hashed with the mask key before; no longer.
REVOKE EXECUTE ON FUNCTION keyring.active_mask_key_version() FROM etl_privacy;
