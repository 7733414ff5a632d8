-- Erasure idempotent across re-masks (issue 25). A user forgotten under an earlier mask key
-- version was re-hashed by nobody: their suppression row keeps the earlier version's hash, so
-- forgetting them again hashed under the active version looked new (a second receipt). The caller
-- now passes the user's hashes under the other stored versions as well; a user suppressed under
-- any of them is "already forgotten", and with nothing left to erase gets no receipt. A user never
-- seen is still suppressed, and the receipt says that nothing was found. An empty call, which
-- would hold the vault epoch for nothing, is refused.

DROP FUNCTION etl.forget(text[], bytea[], integer, text, text);

CREATE FUNCTION etl.forget(p_user_ids text[], p_user_hashes bytea[],
                           p_mask_key_version integer, p_reason text, p_ticket text,
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
        -- Forgotten under an earlier mask key version, the user is still suppressed: ingest
        -- checks the hashes of every stored version.
        -- One array, so the lookup is index probes on user_hash (an OR with a subquery would
        -- scan the list while ingest waits for the epoch).
        v_already := EXISTS (
            SELECT 1 FROM etl.forgotten_users f
            WHERE f.user_hash = ANY (
                ARRAY(SELECT o.hash FROM unnest(p_earlier_hashes, p_earlier_users) AS o(hash, u)
                      WHERE o.u = i) || v_hash));
        v_new := 0;
        IF NOT v_already THEN
            INSERT INTO etl.forgotten_users (user_hash, mask_key_version)
            VALUES (v_hash, p_mask_key_version)
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

REVOKE ALL ON FUNCTION etl.forget(text[], bytea[], integer, text, text, bytea[], integer[])
    FROM PUBLIC;
GRANT EXECUTE ON FUNCTION etl.forget(text[], bytea[], integer, text, text, bytea[], integer[])
    TO etl_privacy;
