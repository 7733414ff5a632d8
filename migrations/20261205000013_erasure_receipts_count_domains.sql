-- Erasure's receipts count the pseudonymisation domains (issue 23): `etl.forget` deletes each
-- user's domain rows itself, by the hashes it is given for that user, and reports them per user
-- (a column, and `domain_rows=` in the audit row). `etl.forget_in_domains` is no longer the
-- callers' to run alone: a member of etl_privacy could delete domain rows with no receipt.
-- Otherwise as in migration vault_sweep_states.

DROP FUNCTION etl.forget(text[], bytea[], integer, bytea, text, text, bytea[], integer[]);

CREATE FUNCTION etl.forget(p_user_ids text[], p_user_hashes bytea[],
                           p_user_key_version integer, p_key_check bytea,
                           p_reason text, p_ticket text,
                           p_earlier_hashes bytea[], p_earlier_users integer[])
RETURNS TABLE (user_hash bytea, logins bigint, vault_entries bigint, quarantined bigint,
               domain_rows bigint, newly_suppressed boolean)
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
    v_ips_i text[];
    v_devices_i text[];
    v_i integer;
    v_n bigint;
    v_used_ips text[];
    v_used_devices text[];
    v_quarantined bigint;
    v_domain_rows bigint;
    v_new bigint;
    v_already boolean;
    v_ips text[] := '{}';
    v_devices text[] := '{}';
    v_ip_users integer[] := '{}';
    v_device_users integer[] := '{}';
    v_user_logins bigint[] := '{}';
    v_user_vault bigint[];
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
        WITH gone AS (
            DELETE FROM public.user_logins u WHERE u.user_id = p_user_ids[i]
            RETURNING u.masked_ip, u.masked_device_id
        ), ips AS (
            -- Masks not written by etl (not 64 hex characters) have no vault entry to look for.
            SELECT DISTINCT g.masked_ip AS mask FROM gone g WHERE g.masked_ip ~ '^[0-9a-f]{64}$'
        ), devices AS (
            SELECT DISTINCT g.masked_device_id AS mask FROM gone g
            WHERE g.masked_device_id ~ '^[0-9a-f]{64}$'
        )
        SELECT (SELECT count(*) FROM gone), ARRAY(SELECT mask FROM ips),
               ARRAY(SELECT mask FROM devices)
        INTO v_logins, v_ips_i, v_devices_i;
        v_user_logins := v_user_logins || v_logins;
        v_ips := v_ips || v_ips_i;
        v_ip_users := v_ip_users || array_fill(i, ARRAY[cardinality(v_ips_i)]);
        v_devices := v_devices || v_devices_i;
        v_device_users := v_device_users || array_fill(i, ARRAY[cardinality(v_devices_i)]);
    END LOOP;
    -- The vault entries of those masks that no remaining row uses, found by one scan of
    -- user_logins for every user of the call (no index on the masks: migration
    -- vault_sweep_states). The vault epoch is held, so no row using them can commit meanwhile.
    -- An entry two of the users shared counts for the later one, as one by one would.
    v_user_vault := array_fill(0::bigint, ARRAY[cardinality(p_user_ids)]);
    IF cardinality(v_ips) + cardinality(v_devices) > 0 THEN
        -- A read-only statement of its own, so the scan may run in parallel. IN (SELECT ...): a
        -- hashed lookup per row on every supported version.
        -- DISTINCT by hashing: a value many remaining rows share is not sorted row by row.
        WITH hits AS (
            SELECT u.masked_ip, u.masked_device_id FROM public.user_logins u
            WHERE u.masked_ip IN (SELECT unnest(v_ips))
               OR u.masked_device_id IN (SELECT unnest(v_devices))
        )
        SELECT ARRAY(SELECT DISTINCT h.masked_ip FROM hits h
                     WHERE h.masked_ip IN (SELECT unnest(v_ips))),
               ARRAY(SELECT DISTINCT h.masked_device_id FROM hits h
                     WHERE h.masked_device_id IN (SELECT unnest(v_devices)))
        INTO v_used_ips, v_used_devices;
        FOR v_i, v_n IN
            WITH released AS (
                SELECT DISTINCT ON (r.field, r.mask) r.field, r.mask, r.u
                FROM (SELECT 'ip'::text AS field, m.mask, m.u
                      FROM unnest(v_ips, v_ip_users) AS m(mask, u)
                      WHERE m.mask NOT IN (SELECT unnest(v_used_ips))
                      UNION ALL
                      SELECT 'device_id', m.mask, m.u
                      FROM unnest(v_devices, v_device_users) AS m(mask, u)
                      WHERE m.mask NOT IN (SELECT unnest(v_used_devices))) r
                ORDER BY r.field, r.mask, r.u DESC
            ), gone AS (
                DELETE FROM vault.entries e
                USING released r
                WHERE e.field = r.field AND e.mask = decode(r.mask, 'hex')
                RETURNING r.u
            )
            SELECT g.u, count(*) FROM gone g GROUP BY g.u
        LOOP
            v_user_vault[v_i] := v_n;
        END LOOP;
    END IF;
    FOR i IN 1 .. cardinality(p_user_ids) LOOP
        v_hash := p_user_hashes[i];
        -- One array, so lookups are index probes on user_hash.
        v_hashes := ARRAY(SELECT o.hash FROM unnest(p_earlier_hashes, p_earlier_users) AS o(hash, u)
                          WHERE o.u = i) || v_hash;
        v_logins := v_user_logins[i];
        v_vault := v_user_vault[i];
        DELETE FROM etl.quarantine q WHERE q.user_hash = ANY (v_hashes);
        GET DIAGNOSTICS v_quarantined = ROW_COUNT;
        -- The user's rows in every pseudonymisation domain, by the same hashes: on the receipt.
        v_domain_rows := etl.forget_in_domains(v_hashes);
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
        IF v_logins + v_vault + v_quarantined + v_domain_rows + v_new > 0 THEN
            v_changed := true;
            INSERT INTO recovery.audit_log (kind, subject, reason, ticket, outcome, detail)
            VALUES ('erasure', encode(v_hash, 'hex'), p_reason, nullif(btrim(p_ticket), ''),
                    CASE WHEN v_logins + v_vault + v_quarantined + v_domain_rows > 0 THEN 'erased'
                         ELSE 'suppressed' END,
                    CASE WHEN v_logins + v_vault + v_quarantined + v_domain_rows = 0
                         THEN 'nothing found; suppressed=new'
                         ELSE format('user_logins=%s vault_entries=%s quarantine=%s domain_rows=%s '
                                     'suppressed=%s',
                                     v_logins, v_vault, v_quarantined, v_domain_rows,
                                     CASE WHEN v_new > 0 THEN 'new' ELSE 'already' END) END);
        END IF;
        user_hash := v_hash;
        logins := v_logins;
        vault_entries := v_vault;
        quarantined := v_quarantined;
        domain_rows := v_domain_rows;
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
REVOKE EXECUTE ON FUNCTION etl.forget_in_domains(bytea[]) FROM etl_privacy;
