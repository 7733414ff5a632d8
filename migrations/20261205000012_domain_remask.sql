-- Domain key rotation and re-mask (issue 23): `etl domains rotate NAME` adds a pending key
-- version, `etl domains remask NAME` moves the domain's rows to it and makes it active.
--
-- A domain row holds masks only, and no link to the `user_logins` row it came from, so a value
-- first seen while a re-mask runs could not be mapped after the fact. Instead, from the rotation
-- on, ingest writes every new row's masks under both versions: the active ones in the columns
-- the domain's role reads, the pending ones in `next_*` columns it cannot read. The re-mask then
-- maps only the rows written before the rotation, whose values the vault and `user_logins`
-- hold, and its switch copies `next_*` over in one transaction.

ALTER TABLE etl.domains ADD COLUMN IF NOT EXISTS active_version integer NOT NULL DEFAULT 1;
-- The highest key version the domain ever had: a rotation takes the next, so that no number
-- names two keys (a cancelled rotation's included). Ingest tells keys apart by their versions.
ALTER TABLE etl.domains ADD COLUMN IF NOT EXISTS last_version integer NOT NULL DEFAULT 1;

-- The columns a domain's rows carry their masks under the pending key in. Not granted to the
-- domain's role.
CREATE OR REPLACE FUNCTION etl.add_domain_next_columns(p_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format('ALTER TABLE domains.%I '
                   'ADD COLUMN IF NOT EXISTS next_masked_user_id varchar(256), '
                   'ADD COLUMN IF NOT EXISTS next_masked_ip varchar(256), '
                   'ADD COLUMN IF NOT EXISTS next_masked_device_id varchar(256), '
                   'ADD COLUMN IF NOT EXISTS next_mask_key_version integer', p_name);
END
$fn$;
REVOKE ALL ON FUNCTION etl.add_domain_next_columns(text) FROM PUBLIC;

DO $do$
DECLARE
    v_domain text;
BEGIN
    FOR v_domain IN SELECT name FROM etl.domains LOOP
        PERFORM etl.add_domain_next_columns(v_domain);
    END LOOP;
END
$do$;

-- A domain's row, first key, table (with the next columns), reader role; no epoch, no record:
-- the parts of `etl.add_domain`, which `etl domains add --backfill` also runs in its own order
-- (its rows first, then the indexes, then the record). For the schema owner.
CREATE OR REPLACE FUNCTION etl.create_domain(p_name text, p_kms_key_id text, p_wrapped_key bytea)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_role text := 'etl_domain_' || p_name;
BEGIN
    INSERT INTO etl.domains (name) VALUES (p_name);
    INSERT INTO keyring.domain_keys (domain, version, kms_key_id, wrapped_key)
    VALUES (p_name, 1, p_kms_key_id, p_wrapped_key);
    EXECUTE format(
        'CREATE TABLE domains.%I (masked_user_id varchar(256), device_type varchar(32), '
        'masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), '
        'app_version integer, create_date date, mask_key_version integer, user_hash bytea, '
        'user_hash_key_version integer)', p_name);
    PERFORM etl.add_domain_next_columns(p_name);
    EXECUTE format('REVOKE ALL ON domains.%I FROM PUBLIC', p_name);
    EXECUTE format('GRANT INSERT ON domains.%I TO etl_ingest', p_name);
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role) THEN
        EXECUTE format('CREATE ROLE %I NOLOGIN', v_role);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA domains TO %I', v_role);
    -- Every column but the erasure hash and the masks under a pending key.
    EXECUTE format('GRANT SELECT (masked_user_id, device_type, masked_ip, masked_device_id, '
                   'locale, app_version, create_date, mask_key_version) ON domains.%I TO %I',
                   p_name, v_role);
    EXECUTE format('COMMENT ON TABLE domains.%I IS %L', p_name,
                   'Pseudonymisation domain ' || p_name || ': user_logins'' rows, ip, device_id '
                   'and user_id masked under the domain''s own key; read by ' || v_role || '.');
    RETURN v_role;
END
$fn$;
REVOKE ALL ON FUNCTION etl.create_domain(text, text, bytea) FROM PUBLIC;

-- Erasure finds a person's rows by user_hash, retention by create_date. The index names hold a
-- '-', which no domain name has, so they never take a later domain's table name.
CREATE OR REPLACE FUNCTION etl.index_domain(p_name text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    EXECUTE format('CREATE INDEX %I ON domains.%I USING hash (user_hash)',
                   p_name || '-user-hash', p_name);
    EXECUTE format('CREATE INDEX %I ON domains.%I (create_date)',
                   p_name || '-create-date', p_name);
END
$fn$;
REVOKE ALL ON FUNCTION etl.index_domain(text) FROM PUBLIC;

CREATE OR REPLACE FUNCTION etl.record_domain_creation(p_name text, p_kms_key_id text)
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('domain_creation', 'created',
            format('domain=%s role=etl_domain_%s kms_key_id=%s', p_name, p_name, p_kms_key_id));
$fn$;
REVOKE ALL ON FUNCTION etl.record_domain_creation(text, text) FROM PUBLIC;

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
    v_role text;
BEGIN
    PERFORM etl.lock_vault_epoch();
    v_role := etl.create_domain(p_name, p_kms_key_id, p_wrapped_key);
    PERFORM etl.index_domain(p_name);
    PERFORM etl.record_domain_creation(p_name, p_kms_key_id);
    PERFORM etl.raise_vault_epoch();
    RETURN v_role;
END
$fn$;
REVOKE ALL ON FUNCTION etl.add_domain(text, text, bytea) FROM PUBLIC;

-- "name:active" per domain, or "name:active>pending" while a version is pending, in byte order:
-- what ingest must write each domain with, read with the vault epoch.
CREATE OR REPLACE FUNCTION etl.domain_key_versions()
RETURNS text
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT coalesce(string_agg(d.name || ':' || d.active_version
                               || coalesce('>' || p.version, ''),
                               ',' ORDER BY d.name COLLATE "C"), '')
    FROM etl.domains d
    LEFT JOIN LATERAL (SELECT max(dk.version) AS version FROM keyring.domain_keys dk
                       WHERE dk.domain = d.name AND dk.version > d.active_version) p ON true
$fn$;
REVOKE ALL ON FUNCTION etl.domain_key_versions() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.domain_key_versions() TO etl_ingest;

-- Adds a domain's next key version, pending: on record, and under the vault epoch, so every
-- running ingest reloads its keys and writes both versions' masks before its next batch commits.
-- One version may be pending at a time. For the schema owner.
CREATE OR REPLACE FUNCTION etl.rotate_domain_key(p_name text, p_version integer,
                                                 p_kms_key_id text, p_wrapped_key bytea)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_active integer;
    v_newest integer;
    v_last integer;
BEGIN
    PERFORM etl.lock_vault_epoch();
    SELECT d.active_version, d.last_version,
           (SELECT max(k.version) FROM keyring.domain_keys k WHERE k.domain = d.name)
    INTO v_active, v_last, v_newest
    FROM etl.domains d WHERE d.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no domain %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    IF v_newest > v_active THEN
        RAISE EXCEPTION 'domain % has a pending key version %', p_name, v_newest
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF p_version <> v_last + 1 THEN
        RAISE EXCEPTION 'domain %''s next key version is %, not %', p_name, v_last + 1, p_version
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO keyring.domain_keys (domain, version, kms_key_id, wrapped_key)
    VALUES (p_name, p_version, p_kms_key_id, p_wrapped_key);
    UPDATE etl.domains SET last_version = p_version WHERE name = p_name;
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('key_rotation', 'pending',
            format('domain=%s key_version=%s kms_key_id=%s', p_name, p_version, p_kms_key_id));
    PERFORM etl.raise_vault_epoch();
END
$fn$;
REVOKE ALL ON FUNCTION etl.rotate_domain_key(text, integer, text, bytea) FROM PUBLIC;

-- The re-mask's switch, in one transaction that holds the vault epoch exclusively (no ingest
-- batch commits meanwhile): every row takes its masks under the pending version at once, the
-- pending version becomes active, the older keys are deleted (no live row holds a mask of
-- theirs), and ingest reloads. Refused, changing nothing, while a row has no mask under the
-- pending version. One scan of the table. Returns how many rows moved.
CREATE OR REPLACE FUNCTION etl.switch_domain_key(p_name text, p_version integer)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_active integer;
    v_rows bigint;
    v_left bigint;
    v_keys bigint;
BEGIN
    PERFORM etl.lock_vault_epoch();
    SELECT d.active_version INTO v_active FROM etl.domains d WHERE d.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no domain %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM keyring.domain_keys k
                   WHERE k.domain = p_name AND k.version = p_version AND p_version > v_active) THEN
        RAISE EXCEPTION 'domain % has no pending key version %', p_name, p_version
            USING ERRCODE = 'no_data_found';
    END IF;
    -- A row without a next mask would take NULL masks: counted, and the exception undoes all.
    EXECUTE format('WITH moved AS (UPDATE domains.%I SET masked_user_id = next_masked_user_id, '
                   'masked_ip = next_masked_ip, masked_device_id = next_masked_device_id, '
                   'mask_key_version = next_mask_key_version, next_masked_user_id = NULL, '
                   'next_masked_ip = NULL, next_masked_device_id = NULL, '
                   'next_mask_key_version = NULL RETURNING mask_key_version) '
                   'SELECT count(*), count(*) FILTER (WHERE mask_key_version IS DISTINCT FROM $1) '
                   'FROM moved', p_name)
        INTO v_rows, v_left USING p_version;
    IF v_left > 0 THEN
        RAISE EXCEPTION '% rows of domains.% have no mask under key version %', v_left, p_name,
            p_version USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE etl.domains SET active_version = p_version WHERE name = p_name;
    DELETE FROM keyring.domain_keys WHERE domain = p_name AND version < p_version;
    GET DIAGNOSTICS v_keys = ROW_COUNT;
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('remask', 'switched',
            format('domain=%s from_key_version=%s to_key_version=%s rows=%s keys_deleted=%s',
                   p_name, v_active, p_version, v_rows, v_keys));
    PERFORM etl.raise_vault_epoch();
    RETURN v_rows;
END
$fn$;
REVOKE ALL ON FUNCTION etl.switch_domain_key(text, integer) FROM PUBLIC;

-- Cancels a domain's pending key version (`etl domains rotate NAME --cancel`): its masks leave the
-- rows, its key is deleted, and ingest, reloading at the raised epoch, writes the active version
-- only again. For a rotation made by mistake, or whose re-mask cannot finish. On record. Returns
-- the version cancelled.
CREATE OR REPLACE FUNCTION etl.cancel_domain_rotation(p_name text)
RETURNS integer
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_active integer;
    v_pending integer;
    v_rows bigint;
BEGIN
    PERFORM etl.lock_vault_epoch();
    SELECT d.active_version INTO v_active FROM etl.domains d WHERE d.name = p_name FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no domain %', p_name USING ERRCODE = 'no_data_found';
    END IF;
    SELECT max(k.version) INTO v_pending FROM keyring.domain_keys k
    WHERE k.domain = p_name AND k.version > v_active;
    IF v_pending IS NULL THEN
        RAISE EXCEPTION 'domain % has no pending key version', p_name
            USING ERRCODE = 'no_data_found';
    END IF;
    EXECUTE format('UPDATE domains.%I SET next_masked_user_id = NULL, next_masked_ip = NULL, '
                   'next_masked_device_id = NULL, next_mask_key_version = NULL '
                   'WHERE next_mask_key_version IS NOT NULL', p_name);
    GET DIAGNOSTICS v_rows = ROW_COUNT;
    DELETE FROM keyring.domain_keys WHERE domain = p_name AND version > v_active;
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('key_rotation', 'cancelled',
            format('domain=%s key_version=%s rows=%s', p_name, v_pending, v_rows));
    PERFORM etl.raise_vault_epoch();
    RETURN v_pending;
END
$fn$;
REVOKE ALL ON FUNCTION etl.cancel_domain_rotation(text) FROM PUBLIC;
