-- The trust boundary (SECURITY.md, "Who can do what"): least privilege for ingest, quarantined
-- bodies sealed to a key ingest cannot open and opened only on record, a tamper-evident audit
-- log that nobody can change, and a recovery policy enforced where clients cannot skip it.
-- Valid on PostgreSQL 10 to 18 (on 10, the audit chain's SHA-256 comes from pgcrypto).

-- PostgreSQL 10 to 14 let every role create objects in schema public, where a function or
-- operator planted by one role can be picked up by another's unqualified name.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
DO $$
BEGIN
    -- Only the schema's owner can revoke it; where the migrating role is not, say so (etl doctor
    -- checks it too) rather than fail a migration on a managed server.
    IF has_schema_privilege('public', 'public', 'CREATE') THEN
        RAISE WARNING 'PUBLIC may still create objects in schema public: run REVOKE CREATE ON SCHEMA public FROM PUBLIC as its owner';
    END IF;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'etl_auditor') THEN
        BEGIN
            CREATE ROLE etl_auditor NOLOGIN;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$$;

------------------------------------------------------------------------------------------------
-- Ingest writes, and reads nothing it does not need. Vault inserts skip an existing key with
-- `ON CONFLICT DO NOTHING` (no conflict target), which needs INSERT only; quarantine rows are
-- inserted after the batch's claim, so they never meet an existing key.
REVOKE SELECT ON vault.entries FROM etl_ingest;
REVOKE SELECT (field, mask) ON vault.entries FROM etl_ingest;
DROP POLICY IF EXISTS ingest_conflict_check ON vault.entries;
REVOKE SELECT ON etl.quarantine FROM etl_ingest;

------------------------------------------------------------------------------------------------
-- Quarantined bodies: sealed with HPKE (RFC 9180) to the public half of a quarantine key pair.
-- Ingest holds only the public key; the private key's seed is a KMS-wrapped data key that only
-- `etl quarantine show` unwraps. The public key is stored in clear, so it is bound to KMS: its
-- attestation is a KMS ciphertext whose encryption context holds the key's SHA-256, which ingest
-- must decrypt before it seals anything to the key (a key planted in the table has none). Rows
-- written before this migration stay sealed under the vault key version they name.
ALTER TABLE keyring.data_keys DROP CONSTRAINT IF EXISTS data_keys_purpose_check;
ALTER TABLE keyring.data_keys ADD CONSTRAINT data_keys_purpose_check
    CHECK (purpose IN ('mask', 'vault', 'quarantine'));
ALTER TABLE keyring.data_keys ADD COLUMN IF NOT EXISTS public_key bytea;
ALTER TABLE keyring.data_keys ADD COLUMN IF NOT EXISTS public_key_attestation bytea;
ALTER TABLE keyring.data_keys DROP CONSTRAINT IF EXISTS data_keys_public_key_check;
ALTER TABLE keyring.data_keys ADD CONSTRAINT data_keys_public_key_check
    CHECK ((purpose = 'quarantine') = (public_key IS NOT NULL)
           AND (public_key IS NULL) = (public_key_attestation IS NULL));

-- Ingest sees the mask and vault keys, never the wrapped quarantine key.
DROP POLICY IF EXISTS ingest_read ON keyring.data_keys;
CREATE POLICY ingest_read ON keyring.data_keys FOR SELECT TO etl_ingest
    USING (purpose IN ('mask', 'vault'));

CREATE OR REPLACE FUNCTION keyring.quarantine_public_key()
RETURNS TABLE (version integer, kms_key_id text, public_key bytea, public_key_attestation bytea)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT k.version, k.kms_key_id, k.public_key, k.public_key_attestation FROM keyring.data_keys k
    WHERE k.purpose = 'quarantine' ORDER BY k.version DESC LIMIT 1
$fn$;
REVOKE ALL ON FUNCTION keyring.quarantine_public_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION keyring.quarantine_public_key() TO etl_ingest;

ALTER TABLE etl.quarantine ALTER COLUMN vault_key_version DROP NOT NULL;
ALTER TABLE etl.quarantine ADD COLUMN IF NOT EXISTS quarantine_key_version integer;
ALTER TABLE etl.quarantine DROP CONSTRAINT IF EXISTS quarantine_one_key_check;
ALTER TABLE etl.quarantine ADD CONSTRAINT quarantine_one_key_check
    CHECK (num_nonnulls(vault_key_version, quarantine_key_version) = 1);

-- Recoverers see what is quarantined and why (to choose what to open), never the body.
GRANT USAGE ON SCHEMA etl TO etl_recoverer;
GRANT SELECT (message_id, reason, detail, received_at, sent_at, receive_count)
    ON etl.quarantine TO etl_recoverer;

------------------------------------------------------------------------------------------------
-- The recovery policy, one row, changed only by the owner through recovery.set_policy.
CREATE TABLE IF NOT EXISTS recovery.policy (
    singleton       boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    require_ticket  boolean     NOT NULL DEFAULT false,
    -- Values opened (masks and quarantined bodies) per database user per UTC day; 0: no limit.
    daily_limit     integer     NOT NULL DEFAULT 0 CHECK (daily_limit >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    updated_by      text        NOT NULL DEFAULT session_user
);
INSERT INTO recovery.policy DEFAULT VALUES ON CONFLICT DO NOTHING;

------------------------------------------------------------------------------------------------
-- The audit log, hash-chained. Every row's row_hash is SHA-256(prev_hash || payload), where
-- payload encodes the row's fields (recovery.audit_payload) and prev_hash is the row_hash of the
-- row before it (32 zero bytes for the first). Rows are appended under one lock, so ids are
-- contiguous and in chain order; triggers refuse UPDATE, DELETE and TRUNCATE for every role.
DO $$
BEGIN
    IF current_setting('server_version_num')::int >= 110000 THEN
        EXECUTE $f$CREATE OR REPLACE FUNCTION recovery.sha256(bytea) RETURNS bytea
            LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
            AS 'SELECT pg_catalog.sha256($1)'$f$;
    ELSE
        CREATE EXTENSION IF NOT EXISTS pgcrypto;
        EXECUTE format($f$CREATE OR REPLACE FUNCTION recovery.sha256(bytea) RETURNS bytea
            LANGUAGE sql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp
            AS 'SELECT %I.digest($1, ''sha256'')'$f$,
            (SELECT n.nspname FROM pg_extension e JOIN pg_namespace n ON n.oid = e.extnamespace
             WHERE e.extname = 'pgcrypto'));
    END IF;
END
$$;
REVOKE ALL ON FUNCTION recovery.sha256(bytea) FROM PUBLIC;

ALTER TABLE IF EXISTS recovery.audit_log RENAME TO audit_log_v1;
ALTER INDEX IF EXISTS recovery.audit_log_pkey RENAME TO audit_log_v1_pkey;
ALTER INDEX IF EXISTS recovery.audit_log_request_id_idx RENAME TO audit_log_v1_request_id_idx;

CREATE TABLE recovery.audit_log (
    id                bigint       PRIMARY KEY,
    -- Set by the append trigger, whatever the inserting statement says: the clock at append
    -- time, the session's user, client address and application name.
    logged_at         timestamptz  NOT NULL,
    -- recover: one mask asked for · quarantine_open: one quarantined message asked for ·
    -- fetch: a request's values handed out · policy: the recovery policy changed.
    kind              text         NOT NULL
                      CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy')),
    request_id        bigint,
    db_user           text         NOT NULL,
    client_addr       inet,
    application_name  text,
    field             text,
    -- The mask (recover) or the message id (quarantine_open).
    subject           text,
    reason            text,
    ticket            text,
    outcome           text         NOT NULL,
    -- Why a request was refused, or what a fetch or policy change did.
    detail            text,
    -- The transaction that wrote a request: fetch serves only requests committed before it.
    request_txid      bigint,
    prev_hash         bytea        NOT NULL,
    row_hash          bytea        NOT NULL
);
CREATE INDEX audit_log_request_id_idx ON recovery.audit_log (request_id);
CREATE INDEX audit_log_user_day_idx ON recovery.audit_log (db_user, logged_at);

-- One row whose lock serializes appends. A row lock, not an advisory lock: only roles that may
-- update this table (the owner) can take it, so no other role can stall the audit log.
CREATE TABLE recovery.chain_lock (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO recovery.chain_lock DEFAULT VALUES;

-- Held until the caller's transaction ends.
CREATE OR REPLACE FUNCTION recovery.lock_chain()
RETURNS void
LANGUAGE sql
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT NULL::void FROM recovery.chain_lock WHERE singleton FOR UPDATE
$fn$;

-- The bytes a row's hash covers: each field as a 4-byte big-endian length and its UTF-8 text
-- (-1 for NULL), in this order; the time as microseconds since 1970-01-01 UTC, the address as
-- text(inet). `etl audit verify` builds the same bytes itself, from the raw columns, so a
-- replaced function cannot hide a changed row.
CREATE OR REPLACE FUNCTION recovery.audit_payload(a recovery.audit_log)
RETURNS bytea
LANGUAGE sql
IMMUTABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT string_agg(
               CASE WHEN f.value IS NULL THEN '\xffffffff'::bytea
                    ELSE int4send(octet_length(convert_to(f.value, 'UTF8')))
                         || convert_to(f.value, 'UTF8')
               END, ''::bytea ORDER BY f.ord)
    FROM unnest(ARRAY[
        a.id::text,
        (extract(epoch FROM date_trunc('second', a.logged_at AT TIME ZONE 'UTC'))::bigint * 1000000
         + extract(microseconds FROM a.logged_at AT TIME ZONE 'UTC')::bigint % 1000000)::text,
        a.kind, a.request_id::text, a.db_user, text(a.client_addr), a.application_name,
        a.field, a.subject, a.reason, a.ticket, a.outcome, a.detail, a.request_txid::text
    ]) WITH ORDINALITY AS f(value, ord)
$fn$;

-- Rows of the earlier, unchained log, in the order they happened, chained here (before the
-- append trigger exists, which would overwrite their users and times); a fetch becomes a row of
-- its own.
DO $$
DECLARE
    v_row recovery.audit_log;
    v_prev bytea := '\x0000000000000000000000000000000000000000000000000000000000000000';
    v_id bigint := 0;
    r record;
BEGIN
    IF to_regclass('recovery.audit_log_v1') IS NULL THEN
        RETURN;
    END IF;
    FOR r IN
        SELECT * FROM (
            SELECT v.requested_at AS logged_at, 'recover' AS kind, v.request_id, v.db_user,
                   v.client_addr, v.application_name, v.field, v.mask AS subject, v.reason,
                   v.ticket, v.outcome, v.request_txid, v.id AS ord
            FROM recovery.audit_log_v1 v
            UNION ALL
            SELECT min(v.fetched_at), 'fetch', v.request_id, min(v.db_user), NULL, NULL, NULL,
                   NULL, NULL, NULL, 'served', NULL, max(v.id)
            FROM recovery.audit_log_v1 v WHERE v.fetched_at IS NOT NULL GROUP BY v.request_id
        ) AS old
        ORDER BY logged_at, ord
    LOOP
        v_id := v_id + 1;
        v_row := ROW(v_id, r.logged_at, r.kind, r.request_id, r.db_user, r.client_addr,
                     r.application_name, r.field, r.subject, r.reason, r.ticket, r.outcome, NULL,
                     r.request_txid, v_prev, ''::bytea);
        v_row.row_hash := recovery.sha256(v_prev || recovery.audit_payload(v_row));
        INSERT INTO recovery.audit_log SELECT v_row.*;
        v_prev := v_row.row_hash;
    END LOOP;
END
$$;
DROP TABLE IF EXISTS recovery.audit_log_v1;

CREATE OR REPLACE FUNCTION recovery.audit_append()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_last_id bigint;
    v_last_hash bytea;
BEGIN
    -- Under REPEATABLE READ the snapshot predates the lock and would miss the newest row.
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RAISE EXCEPTION 'audit rows are appended in READ COMMITTED transactions only'
            USING ERRCODE = 'invalid_transaction_state';
    END IF;
    -- One appender at a time, until commit: the next row is chained to a committed one.
    PERFORM recovery.lock_chain();
    SELECT a.id, a.row_hash INTO v_last_id, v_last_hash
    FROM recovery.audit_log a ORDER BY a.id DESC LIMIT 1;
    NEW.id := coalesce(v_last_id, 0) + 1;
    NEW.logged_at := clock_timestamp();
    NEW.db_user := session_user;
    NEW.client_addr := inet_client_addr();
    NEW.application_name := current_setting('application_name');
    NEW.prev_hash := coalesce(v_last_hash, '\x0000000000000000000000000000000000000000000000000000000000000000'::bytea);
    NEW.row_hash := recovery.sha256(NEW.prev_hash || recovery.audit_payload(NEW));
    RETURN NEW;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.audit_refuse_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    RAISE EXCEPTION 'recovery.audit_log is append-only: % is refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$fn$;

CREATE TRIGGER audit_append BEFORE INSERT ON recovery.audit_log
    FOR EACH ROW EXECUTE PROCEDURE recovery.audit_append();
CREATE TRIGGER audit_no_update_or_delete BEFORE UPDATE OR DELETE ON recovery.audit_log
    FOR EACH ROW EXECUTE PROCEDURE recovery.audit_refuse_change();
CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON recovery.audit_log
    FOR EACH STATEMENT EXECUTE PROCEDURE recovery.audit_refuse_change();

CREATE OR REPLACE FUNCTION recovery.audit_head()
RETURNS TABLE (id bigint, row_hash bytea)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT a.id, a.row_hash FROM recovery.audit_log a ORDER BY a.id DESC LIMIT 1
$fn$;

------------------------------------------------------------------------------------------------
-- Why a request must be refused, or NULL. Called with the chain lock held, so two concurrent
-- requests cannot both fit under the daily limit.
CREATE OR REPLACE FUNCTION recovery.refusal(p_reason text, p_ticket text, p_count integer)
RETURNS text
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_policy recovery.policy;
    v_used bigint;
BEGIN
    SELECT * INTO v_policy FROM recovery.policy WHERE singleton;
    IF btrim(coalesce(p_reason, '')) = '' THEN
        RETURN 'a reason is required';
    END IF;
    IF coalesce(v_policy.require_ticket, false) AND btrim(coalesce(p_ticket, '')) = '' THEN
        RETURN 'the recovery policy requires a ticket';
    END IF;
    IF coalesce(v_policy.daily_limit, 0) > 0 THEN
        SELECT count(*) INTO v_used FROM recovery.audit_log a
        WHERE a.db_user = session_user
          AND a.kind IN ('recover', 'quarantine_open')
          AND a.outcome <> 'refused'
          AND a.logged_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        IF v_used + p_count > v_policy.daily_limit THEN
            RETURN format('the recovery policy allows %s values per user per UTC day; %s used today, %s asked',
                          v_policy.daily_limit, v_used, p_count);
        END IF;
    END IF;
    RETURN NULL;
END
$fn$;

-- Step 1 of a recovery: record who asks for which masks and why, under the policy. The caller
-- commits this before step 2, so the record stands whatever the caller does afterwards.
CREATE OR REPLACE FUNCTION recovery.request(p_field text, p_masks text[], p_reason text, p_ticket text)
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
    RETURN v_request;
END
$fn$;

-- The request must be committed, by an earlier transaction of the same database user.
CREATE OR REPLACE FUNCTION recovery.check_committed(p_request bigint, p_kind text)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM recovery.audit_log a
               WHERE a.request_id = p_request AND a.kind = p_kind
                 AND a.request_txid = txid_current()) THEN
        RAISE EXCEPTION 'recovery request % must be committed before it is fetched', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    INSERT INTO recovery.audit_log (kind, request_id, outcome, detail)
    SELECT 'fetch', p_request, 'served', format('%s of %s %s rows', count(*) FILTER (WHERE a.outcome = 'found'), count(*), p_kind)
    FROM recovery.audit_log a
    WHERE a.request_id = p_request AND a.kind = p_kind AND a.db_user = session_user
    HAVING count(*) > 0;
END
$fn$;

-- Step 2: the ciphertexts of a committed request made by the same database user, with the
-- wrapped vault keys that open them. Refused and not-found masks return no ciphertext.
DROP FUNCTION IF EXISTS recovery.fetch(bigint);
CREATE FUNCTION recovery.fetch(p_request bigint)
RETURNS TABLE (mask text, outcome text, detail text, ciphertext bytea, vault_key_version integer,
               kms_key_id text, wrapped_key bytea)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
#variable_conflict use_column
BEGIN
    PERFORM recovery.check_committed(p_request, 'recover');
    RETURN QUERY
    SELECT a.subject, a.outcome, a.detail, e.ciphertext, e.vault_key_version, k.kms_key_id,
           k.wrapped_key
    FROM recovery.audit_log a
    LEFT JOIN vault.entries e
           -- Only found subjects were checked to be hex: decode nothing else.
           ON a.outcome = 'found' AND e.field = a.field
              AND e.mask = CASE WHEN a.outcome = 'found' THEN decode(a.subject, 'hex') END
    LEFT JOIN keyring.data_keys k
           ON k.purpose = 'vault' AND k.version = e.vault_key_version
    WHERE a.request_id = p_request AND a.kind = 'recover' AND a.db_user = session_user
    ORDER BY a.id;
END
$fn$;

-- Opening a quarantined message: the same two steps.
CREATE OR REPLACE FUNCTION recovery.request_quarantine(p_message_ids text[], p_reason text, p_ticket text)
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
-- A request waits at most this long for another one that holds the chain (an idle transaction).
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request bigint := nextval('recovery.request_ids');
    v_ids text[] := coalesce(p_message_ids, ARRAY[]::text[]);
    v_refusal text;
BEGIN
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
    RETURN v_request;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.fetch_quarantine(p_request bigint)
RETURNS TABLE (message_id text, outcome text, detail text, body_ciphertext bytea,
               key_purpose text, key_version integer, kms_key_id text, wrapped_key bytea)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
#variable_conflict use_column
BEGIN
    PERFORM recovery.check_committed(p_request, 'quarantine_open');
    RETURN QUERY
    SELECT a.subject, a.outcome, a.detail, q.body_ciphertext, k.purpose, k.version, k.kms_key_id,
           k.wrapped_key
    FROM recovery.audit_log a
    LEFT JOIN etl.quarantine q ON a.outcome = 'found' AND q.message_id = a.subject
    LEFT JOIN keyring.data_keys k
           ON (k.purpose = 'quarantine' AND k.version = q.quarantine_key_version)
           OR (k.purpose = 'vault' AND k.version = q.vault_key_version)
    WHERE a.request_id = p_request AND a.kind = 'quarantine_open' AND a.db_user = session_user
    ORDER BY a.id;
END
$fn$;

-- The owner's way to change the policy; the change is itself an audit row.
CREATE OR REPLACE FUNCTION recovery.set_policy(p_require_ticket boolean, p_daily_limit integer)
RETURNS recovery.policy
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_policy recovery.policy;
BEGIN
    UPDATE recovery.policy p
    SET require_ticket = coalesce(p_require_ticket, p.require_ticket),
        daily_limit = coalesce(p_daily_limit, p.daily_limit),
        updated_at = now(), updated_by = session_user
    WHERE p.singleton
    RETURNING * INTO v_policy;
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('policy', 'set', format('require_ticket=%s daily_limit=%s',
                                    v_policy.require_ticket, v_policy.daily_limit));
    RETURN v_policy;
END
$fn$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA recovery FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recovery.request(text, text[], text, text) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.fetch(bigint) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.request_quarantine(text[], text, text) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.fetch_quarantine(bigint) TO etl_recoverer;
GRANT EXECUTE ON FUNCTION recovery.audit_head() TO etl_ingest, etl_recoverer, etl_auditor;
GRANT USAGE ON SCHEMA recovery TO etl_ingest, etl_auditor;
GRANT SELECT ON recovery.audit_log TO etl_auditor;
