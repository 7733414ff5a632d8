-- No message lost to a quarantine key retirement (issue 22). The quarantine key is guarded as the
-- vault key is: `etl keys rotate --purpose quarantine` raises the lowest version ingest may seal
-- to, ingest's quarantine insert checks it (a process that still holds an older version gets
-- SQLSTATE ET001, reloads its keys and prepares the batch again, without a restart), and
-- `etl keys retire` refuses a version at or above it. So no body is sealed to a version after
-- its retirement, when SQS has already deleted the message.

ALTER TABLE keyring.key_settings ADD COLUMN IF NOT EXISTS min_quarantine_key_version integer;
-- Every process seals to the newest public key it loaded: from now on, only that one may be.
UPDATE keyring.key_settings
SET min_quarantine_key_version = (SELECT max(version) FROM keyring.data_keys
                                  WHERE purpose = 'quarantine')
WHERE singleton;

DROP FUNCTION IF EXISTS etl.key_state();
CREATE FUNCTION etl.key_state()
RETURNS TABLE (epoch bigint, mask_key_version integer, vault_key_version integer,
               min_vault_key_version integer, quarantine_key_version integer,
               min_quarantine_key_version integer)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT v.epoch, keyring.active_mask_key_version(),
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'vault'),
           s.min_vault_key_version,
           (SELECT max(k.version) FROM keyring.data_keys k WHERE k.purpose = 'quarantine'),
           s.min_quarantine_key_version
    FROM etl.vault_epoch v, keyring.key_settings s
    WHERE v.singleton AND s.singleton
$fn$;

-- The guard of ingest's quarantine insert (a one-time filter of the statement).
CREATE OR REPLACE FUNCTION etl.check_quarantine_version(p_quarantine_key_version integer)
RETURNS boolean
LANGUAGE plpgsql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_min integer;
BEGIN
    SELECT s.min_quarantine_key_version INTO v_min FROM keyring.key_settings s WHERE s.singleton;
    IF p_quarantine_key_version < coalesce(v_min, 0) THEN
        RAISE EXCEPTION 'keys changed: the lowest quarantine key version to seal to is %', v_min
            USING ERRCODE = 'ET001';
    END IF;
    RETURN true;
END
$fn$;

REVOKE ALL ON FUNCTION etl.key_state(), etl.check_quarantine_version(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.key_state(), etl.check_quarantine_version(integer) TO etl_ingest;
