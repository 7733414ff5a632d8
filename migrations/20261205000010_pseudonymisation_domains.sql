-- Pseudonymisation domains (issue 23; EDPB guidelines 01/2025): each domain has a mask key of its
-- own, and ingest writes every row's masks of ip, device_id and user_id under it into the
-- domain's table `domains.<name>`, which the domain's role `etl_domain_<name>` reads and no other
-- reader role does. Equal values have equal masks inside a domain and unrelated masks across
-- domains and `user_logins`, so counting and joining work inside a domain and not across. Each
-- row also carries the user key's hash of its user id, for erasure, which the domain's role may
-- not read.

CREATE SCHEMA IF NOT EXISTS domains;
REVOKE ALL ON SCHEMA domains FROM PUBLIC;
GRANT USAGE ON SCHEMA domains TO etl_ingest;

CREATE TABLE IF NOT EXISTS etl.domains (
    name        text        PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL DEFAULT session_user
);
REVOKE ALL ON etl.domains FROM PUBLIC;
GRANT SELECT ON etl.domains TO etl_ingest;

-- Each domain's mask keys, wrapped by KMS under the encryption context
-- {application, purpose: domain_mask, domain, key_version}.
CREATE TABLE IF NOT EXISTS keyring.domain_keys (
    domain       text        NOT NULL REFERENCES etl.domains (name),
    version      integer     NOT NULL CHECK (version > 0),
    kms_key_id   text        NOT NULL,
    wrapped_key  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, version)
);
REVOKE ALL ON keyring.domain_keys FROM PUBLIC;
GRANT SELECT ON keyring.domain_keys TO etl_ingest;

ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask', 'approval', 'key_creation', 'key_rewrap',
                    'retention_setting', 'subject_access', 'domain_creation'));

-- The domains and the key version ingest must write each with ("name:version,..." in byte
-- order), read with the vault epoch by ingest: a process whose domains differ reloads its keys.
CREATE OR REPLACE FUNCTION etl.domain_key_versions()
RETURNS text
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(string_agg(d.name || ':' || k.version, ',' ORDER BY d.name COLLATE "C"), '')
    FROM etl.domains d
    JOIN LATERAL (SELECT max(dk.version) AS version FROM keyring.domain_keys dk
                  WHERE dk.domain = d.name) k ON k.version IS NOT NULL
$fn$;
REVOKE ALL ON FUNCTION etl.domain_key_versions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.domain_key_versions() TO etl_ingest;

-- Creates a domain: its row, its first key, its table, its reader role; on record. Raises the
-- vault epoch, which waits for the batches committing now and makes every running ingest reload
-- its keys before its next batch commits: every row committed after this one commits has its
-- domain rows. For the schema owner (who may create roles).
CREATE OR REPLACE FUNCTION etl.add_domain(p_name text, p_kms_key_id text, p_wrapped_key bytea)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_role text := 'etl_domain_' || p_name;
BEGIN
    PERFORM etl.lock_vault_epoch();
    INSERT INTO etl.domains (name) VALUES (p_name);
    INSERT INTO keyring.domain_keys (domain, version, kms_key_id, wrapped_key)
    VALUES (p_name, 1, p_kms_key_id, p_wrapped_key);
    EXECUTE format(
        'CREATE TABLE domains.%I (masked_user_id varchar(256), device_type varchar(32), '
        'masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), '
        'app_version integer, create_date date, mask_key_version integer, user_hash bytea, '
        'user_hash_key_version integer)', p_name);
    -- Erasure finds a person's rows by user_hash, retention by create_date. The index names hold
    -- a '-', which no domain name has, so they never take a later domain's table name.
    EXECUTE format('CREATE INDEX %I ON domains.%I USING hash (user_hash)',
                   p_name || '-user-hash', p_name);
    EXECUTE format('CREATE INDEX %I ON domains.%I (create_date)',
                   p_name || '-create-date', p_name);
    EXECUTE format('REVOKE ALL ON domains.%I FROM PUBLIC', p_name);
    EXECUTE format('GRANT INSERT ON domains.%I TO etl_ingest', p_name);
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA domains TO %I', v_role);
    -- Every column but the erasure hash.
    EXECUTE format('GRANT SELECT (masked_user_id, device_type, masked_ip, masked_device_id, '
                   'locale, app_version, create_date, mask_key_version) ON domains.%I TO %I',
                   p_name, v_role);
    EXECUTE format('COMMENT ON TABLE domains.%I IS %L', p_name,
                   'Pseudonymisation domain ' || p_name || ': user_logins'' rows from its creation on, '
                   'ip and device_id masked under the domain''s own key; read by ' || v_role || '.');
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('domain_creation', 'created',
            format('domain=%s role=%s kms_key_id=%s', p_name, v_role, p_kms_key_id));
    PERFORM etl.raise_vault_epoch();
    RETURN v_role;
END
$fn$;
REVOKE ALL ON FUNCTION etl.add_domain(text, text, bytea) FROM PUBLIC;

-- Erasure in every domain: the rows of these users, by the user key's hashes of their ids under
-- every user key version (as `etl.forget` is given them). Called by `etl forget` in the
-- transaction that calls `etl.forget`; returns how many rows went.
CREATE OR REPLACE FUNCTION etl.forget_in_domains(p_user_hashes bytea[])
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_domain text;
    v_rows bigint;
    v_total bigint := 0;
BEGIN
    FOR v_domain IN SELECT d.name FROM etl.domains d ORDER BY d.name LOOP
        EXECUTE format('DELETE FROM domains.%I WHERE user_hash = ANY ($1)', v_domain)
            USING p_user_hashes;
        GET DIAGNOSTICS v_rows = ROW_COUNT;
        v_total := v_total + v_rows;
    END LOOP;
    RETURN v_total;
END
$fn$;
REVOKE ALL ON FUNCTION etl.forget_in_domains(bytea[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.forget_in_domains(bytea[]) TO etl_privacy;
