-- The recovery service (`etl recovery-service`, SECURITY.md "Recovery"): keys never reach a
-- person. A recoverer's request is committed to the audit log together with a one-time X25519
-- public key of the client; a service, the only principal besides ingest that unwraps vault and
-- quarantine keys, claims it (FOR UPDATE SKIP LOCKED, so several services open each request
-- once), commits an audit row of the opening before it decrypts anything, seals each value to the
-- client's key (HPKE) and stores the sealed replies, which only the requesting database user can
-- read (row level security). Recoverers no longer see ciphertexts or wrapped keys.
-- Valid on PostgreSQL 10 to 18.

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_opener') THEN
        BEGIN
            CREATE ROLE etl_opener NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

-- One row per request of the new kind; its subjects and outcomes are the request's audit rows.
CREATE TABLE IF NOT EXISTS recovery.requests (
    id          bigint       PRIMARY KEY,
    kind        text         NOT NULL CHECK (kind IN ('recover', 'quarantine_open')),
    field       text,
    requester   text         NOT NULL,
    -- The client's one-time X25519 public key: replies are sealed to it.
    public_key  bytea        NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz  NOT NULL DEFAULT now(),
    opened_at   timestamptz
);
CREATE INDEX IF NOT EXISTS requests_unopened_idx ON recovery.requests (id) WHERE opened_at IS NULL;

-- Sealed values, one row per subject of a request, until the requester collects them (or a TTL
-- passes). Only the requesting database user sees its rows.
CREATE TABLE IF NOT EXISTS recovery.replies (
    request_id  bigint       NOT NULL REFERENCES recovery.requests (id) ON DELETE CASCADE,
    ord         integer      NOT NULL,
    requester   text         NOT NULL,
    subject     text         NOT NULL,
    outcome     text         NOT NULL,
    detail      text,
    sealed      bytea,
    created_at  timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, ord)
);
ALTER TABLE recovery.replies ENABLE ROW LEVEL SECURITY;
ALTER TABLE recovery.replies FORCE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS owner_all ON recovery.replies;
CREATE POLICY owner_all ON recovery.replies TO CURRENT_USER USING (true) WITH CHECK (true);
DROP POLICY IF EXISTS requester_collects ON recovery.replies;
CREATE POLICY requester_collects ON recovery.replies FOR SELECT TO etl_recoverer
    USING (requester = session_user);
DROP POLICY IF EXISTS requester_deletes ON recovery.replies;
CREATE POLICY requester_deletes ON recovery.replies FOR DELETE TO etl_recoverer
    USING (requester = session_user);

------------------------------------------------------------------------------------------------
-- Clients: the request, with the public key to seal the replies to. The audit rows are as
-- before; the notification wakes a service when the request commits.
DROP FUNCTION IF EXISTS recovery.fetch(bigint);
DROP FUNCTION IF EXISTS recovery.fetch_quarantine(bigint);
DROP FUNCTION IF EXISTS recovery.request(text, text[], text, text);
DROP FUNCTION IF EXISTS recovery.request_quarantine(text[], text, text);
DROP FUNCTION IF EXISTS recovery.check_committed(bigint, text);

CREATE OR REPLACE FUNCTION recovery.check_public_key(p_public_key bytea)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF p_public_key IS NULL OR octet_length(p_public_key) <> 32 THEN
        RAISE EXCEPTION 'a recovery request needs the 32-byte X25519 public key of its client'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.request(p_field text, p_masks text[], p_reason text,
                                            p_ticket text, p_public_key bytea)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- A request waits at most this long for another one that holds the chain (an idle transaction).
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request bigint := nextval('recovery.request_ids');
    v_masks text[] := coalesce(p_masks, ARRAY[]::text[]);
    v_refusal text;
BEGIN
    PERFORM recovery.check_public_key(p_public_key);
    PERFORM recovery.lock_chain();
    v_refusal := CASE WHEN p_field IS NULL OR p_field NOT IN ('ip', 'device_id')
                      THEN 'unknown field'
                      ELSE recovery.refusal(p_reason, p_ticket, cardinality(v_masks)) END;
    INSERT INTO recovery.audit_log (kind, request_id, field, subject, reason, ticket, outcome,
                                    detail, request_txid)
    SELECT 'recover', v_request, coalesce(p_field, ''), m.mask, coalesce(p_reason, ''),
           nullif(btrim(p_ticket), ''),
           CASE
               WHEN v_refusal IS NOT NULL THEN 'refused'
               WHEN m.mask ~ '^[0-9a-f]{64}$'
                    AND EXISTS (SELECT 1 FROM vault.entries e
                                WHERE e.field = p_field AND e.mask = decode(m.mask, 'hex'))
                   THEN 'found'
               ELSE 'not_found'
           END,
           v_refusal, txid_current()
    FROM unnest(v_masks) WITH ORDINALITY AS m(mask, ord)
    ORDER BY m.ord;
    INSERT INTO recovery.requests (id, kind, field, requester, public_key)
    VALUES (v_request, 'recover', p_field, session_user, p_public_key);
    PERFORM pg_notify('etl_recovery_requests', v_request::text);
    RETURN v_request;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.request_quarantine(p_message_ids text[], p_reason text,
                                                       p_ticket text, p_public_key bytea)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request bigint := nextval('recovery.request_ids');
    v_ids text[] := coalesce(p_message_ids, ARRAY[]::text[]);
    v_refusal text;
BEGIN
    PERFORM recovery.check_public_key(p_public_key);
    PERFORM recovery.lock_chain();
    v_refusal := recovery.refusal(p_reason, p_ticket, cardinality(v_ids));
    INSERT INTO recovery.audit_log (kind, request_id, subject, reason, ticket, outcome, detail,
                                    request_txid)
    SELECT 'quarantine_open', v_request, m.id, coalesce(p_reason, ''), nullif(btrim(p_ticket), ''),
           CASE
               WHEN v_refusal IS NOT NULL THEN 'refused'
               WHEN EXISTS (SELECT 1 FROM etl.quarantine q WHERE q.message_id = m.id) THEN 'found'
               ELSE 'not_found'
           END,
           v_refusal, txid_current()
    FROM unnest(v_ids) WITH ORDINALITY AS m(id, ord)
    ORDER BY m.ord;
    INSERT INTO recovery.requests (id, kind, requester, public_key)
    VALUES (v_request, 'quarantine_open', session_user, p_public_key);
    PERFORM pg_notify('etl_recovery_requests', v_request::text);
    RETURN v_request;
END
$fn$;

------------------------------------------------------------------------------------------------
-- The service. Step 1, in the transaction that will store the replies: claim the oldest request
-- not opened yet. The row lock is held until that transaction ends, so two services never open
-- one request at once; a service that dies releases it, and the request is opened again.
CREATE OR REPLACE FUNCTION recovery.claim_request()
RETURNS TABLE (id bigint, kind text, field text, requester text, public_key bytea)
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.id, r.kind, r.field, r.requester, r.public_key
    FROM recovery.requests r
    WHERE r.opened_at IS NULL
    ORDER BY r.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
$fn$;

-- Step 2, in a transaction of its own, committed before anything is decrypted: the audit row of
-- this opening. No audit row, no value.
CREATE OR REPLACE FUNCTION recovery.record_opening(p_request bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    SELECT * INTO v_request FROM recovery.requests r WHERE r.id = p_request AND r.opened_at IS NULL;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery request % is not waiting to be opened', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO recovery.audit_log (kind, request_id, outcome, detail, request_txid)
    SELECT 'fetch', p_request, 'opening',
           format('%s of %s %s rows, for %s', count(*) FILTER (WHERE a.outcome = 'found'),
                  count(*), v_request.kind, v_request.requester),
           txid_current()
    FROM recovery.audit_log a
    WHERE a.request_id = p_request AND a.kind = v_request.kind;
END
$fn$;

-- Step 3: what opens the request's found subjects, only after this service's opening row was
-- committed (by another transaction than this one).
CREATE OR REPLACE FUNCTION recovery.opening_material(p_request bigint)
RETURNS TABLE (ord integer, subject text, outcome text, detail text, sealed bytea,
               key_purpose text, key_version integer, kms_key_id text, wrapped_key bytea)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
#variable_conflict use_column
DECLARE
    v_kind text;
BEGIN
    SELECT r.kind INTO v_kind FROM recovery.requests r WHERE r.id = p_request;
    IF NOT EXISTS (SELECT 1 FROM recovery.audit_log a
                   WHERE a.request_id = p_request AND a.kind = 'fetch'
                     AND a.outcome = 'opening' AND a.db_user = session_user
                     AND a.request_txid <> txid_current()) THEN
        RAISE EXCEPTION 'recovery request % has no committed opening row of this user', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF v_kind = 'recover' THEN
        RETURN QUERY
        SELECT (row_number() OVER (ORDER BY a.id))::integer, a.subject, a.outcome, a.detail,
               e.ciphertext, k.purpose, e.vault_key_version, k.kms_key_id, k.wrapped_key
        FROM recovery.audit_log a
        LEFT JOIN vault.entries e
               ON a.outcome = 'found' AND e.field = a.field
                  AND e.mask = CASE WHEN a.outcome = 'found' THEN decode(a.subject, 'hex') END
        LEFT JOIN keyring.data_keys k ON k.purpose = 'vault' AND k.version = e.vault_key_version
        WHERE a.request_id = p_request AND a.kind = 'recover'
        ORDER BY a.id;
    ELSE
        RETURN QUERY
        SELECT (row_number() OVER (ORDER BY a.id))::integer, a.subject, a.outcome, a.detail,
               q.body_ciphertext, k.purpose, k.version, k.kms_key_id, k.wrapped_key
        FROM recovery.audit_log a
        LEFT JOIN etl.quarantine q ON a.outcome = 'found' AND q.message_id = a.subject
        LEFT JOIN keyring.data_keys k
               ON (k.purpose = 'quarantine' AND k.version = q.quarantine_key_version)
               OR (k.purpose = 'vault' AND k.version = q.vault_key_version)
        WHERE a.request_id = p_request AND a.kind = 'quarantine_open'
        ORDER BY a.id;
    END IF;
END
$fn$;

-- Step 4, in the claiming transaction: the sealed replies (NULL where nothing opens: refused,
-- not found), the request marked opened, the requester woken at commit.
CREATE OR REPLACE FUNCTION recovery.store_replies(p_request bigint, p_outcomes text[],
                                                  p_details text[], p_sealed bytea[])
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    UPDATE recovery.requests r SET opened_at = now()
    WHERE r.id = p_request AND r.opened_at IS NULL
    RETURNING * INTO v_request;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery request % is not waiting to be opened', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO recovery.replies (request_id, ord, requester, subject, outcome, detail, sealed)
    SELECT p_request, s.ord, v_request.requester, s.subject,
           coalesce(p_outcomes[s.ord], s.outcome), coalesce(p_details[s.ord], s.detail),
           p_sealed[s.ord]
    FROM (SELECT (row_number() OVER (ORDER BY a.id))::integer AS ord, a.subject, a.outcome,
                 a.detail
          FROM recovery.audit_log a
          WHERE a.request_id = p_request AND a.kind = v_request.kind) s;
    PERFORM pg_notify('etl_recovery_replies', p_request::text);
END
$fn$;

-- Replies not collected within the TTL, and requests opened before it, are deleted.
CREATE OR REPLACE FUNCTION recovery.expire_replies(p_ttl interval)
RETURNS bigint
LANGUAGE sql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    WITH gone AS (
        DELETE FROM recovery.requests r
        WHERE r.opened_at < now() - p_ttl
        RETURNING r.id
    )
    SELECT count(*) FROM gone
$fn$;

------------------------------------------------------------------------------------------------
-- Grants: recoverers request and collect; the opener opens; nobody else does either.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA recovery FROM PUBLIC;
REVOKE ALL ON recovery.requests, recovery.replies FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recovery.request(text, text[], text, text, bytea) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.request_quarantine(text[], text, text, bytea) TO etl_recoverer;
GRANT SELECT, DELETE ON recovery.replies TO etl_recoverer;
GRANT USAGE ON SCHEMA recovery TO etl_opener;
GRANT EXECUTE ON FUNCTION recovery.claim_request(), recovery.record_opening(bigint),
    recovery.opening_material(bigint), recovery.store_replies(bigint, text[], text[], bytea[]),
    recovery.expire_replies(interval), recovery.audit_head() TO etl_opener;
