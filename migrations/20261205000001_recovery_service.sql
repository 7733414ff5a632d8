-- The recovery service (`etl recovery-service`, SECURITY.md "Recovery"): keys never reach a
-- person. A recoverer's request is committed to the audit log together with a one-time X25519
-- public key of the client; a service, the only principal besides ingest that unwraps vault and
-- quarantine keys, claims it (FOR UPDATE SKIP LOCKED, so several services open each request
-- once), commits an audit row of the opening before it decrypts anything, seals each value to the
-- client's key (HPKE) and stores the sealed replies, which only the requesting database user can
-- read (row level security). Recoverers no longer see ciphertexts or wrapped keys.
-- Valid on PostgreSQL 10 to 18.

-- Approvals (Vault's control groups): with `approvals` N in the policy, a request is opened only
-- once N members of etl_approver other than the requester approved it; one of them may deny it;
-- it expires after `approval_ttl`. Break-glass skips approvals (never the ticket rule, the daily
-- limit or the audit), and each break-glass opening waits for an approver's review.
DO $$
DECLARE
    r text;
BEGIN
    FOREACH r IN ARRAY ARRAY['etl_opener', 'etl_approver'] LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = r) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', r);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;
            END;
        END IF;
    END LOOP;
END
$$;

ALTER TABLE recovery.policy
    ADD COLUMN IF NOT EXISTS approvals integer NOT NULL DEFAULT 0 CHECK (approvals BETWEEN 0 AND 3),
    ADD COLUMN IF NOT EXISTS approval_ttl interval NOT NULL DEFAULT '24 hours'
        CHECK (approval_ttl > interval '0');

ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask', 'approval'));

-- One row per request of the new kind; its subjects and outcomes are the request's audit rows.
CREATE TABLE IF NOT EXISTS recovery.requests (
    id          bigint       PRIMARY KEY,
    kind        text         NOT NULL CHECK (kind IN ('recover', 'quarantine_open')),
    field       text,
    requester   text         NOT NULL,
    -- The client's one-time X25519 public key: replies are sealed to it.
    public_key  bytea        NOT NULL CHECK (octet_length(public_key) = 32),
    created_at  timestamptz  NOT NULL DEFAULT now(),
    opened_at   timestamptz,
    -- Distinct approvers it needs (the policy's `approvals` when it was made; 0 with break-glass).
    approvals_needed  integer  NOT NULL DEFAULT 0,
    break_glass       boolean  NOT NULL DEFAULT false,
    -- Unapproved after this, it is refused as expired.
    expires_at        timestamptz,
    -- Denied or expired: closed without opening.
    closed_at         timestamptz,
    reviewed_at       timestamptz,
    reviewed_by       text
);

-- Openings tried, and when the next may be: a request that keeps failing (a key KMS refuses)
-- waits longer each time and is closed as failed after a few, so it cannot block the others.
-- A table of its own: the opening row's transaction writes it while the claim holds the request.
CREATE TABLE IF NOT EXISTS recovery.attempts (
    request_id       bigint       PRIMARY KEY REFERENCES recovery.requests (id) ON DELETE CASCADE,
    attempts         integer      NOT NULL,
    next_attempt_at  timestamptz  NOT NULL
);

CREATE TABLE IF NOT EXISTS recovery.approvals (
    request_id  bigint       NOT NULL REFERENCES recovery.requests (id) ON DELETE CASCADE,
    approver    text         NOT NULL,
    approved_at timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, approver)
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

-- The request row, under the approvals the policy asks for (none for a refused request, which the
-- service answers at once, or with break-glass, which is on record and waits for a review).
CREATE OR REPLACE FUNCTION recovery.open_request(p_request bigint, p_kind text, p_field text,
                                                 p_public_key bytea, p_break_glass boolean,
                                                 p_refused boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_policy recovery.policy;
    v_needed integer;
BEGIN
    SELECT * INTO v_policy FROM recovery.policy WHERE singleton;
    v_needed := CASE WHEN p_refused OR coalesce(p_break_glass, false) THEN 0
                     ELSE coalesce(v_policy.approvals, 0) END;
    INSERT INTO recovery.requests (id, kind, field, requester, public_key, approvals_needed,
                                   break_glass, expires_at)
    VALUES (p_request, p_kind, p_field, session_user, p_public_key, v_needed,
            coalesce(p_break_glass, false) AND NOT p_refused,
            -- Unapproved requests expire with the policy's TTL; the others an hour on, by when
            -- any client has stopped waiting.
            now() + CASE WHEN v_needed > 0 THEN v_policy.approval_ttl ELSE interval '1 hour' END);
    IF p_refused THEN
        -- Answered at once, with the refusal on the request's own audit rows: no service needed.
        PERFORM recovery.close_request(p_request, 'refused', NULL, false);
        RETURN;
    END IF;
    IF coalesce(p_break_glass, false) THEN
        INSERT INTO recovery.audit_log (kind, request_id, outcome, detail)
        VALUES ('approval', p_request, 'break_glass', 'approvals skipped; a review is due');
    END IF;
    IF v_needed = 0 THEN
        PERFORM pg_notify('etl_recovery_requests', p_request::text);
    END IF;
END
$fn$;

-- One request opens at most this many values: the service holds a request's material at once.
CREATE OR REPLACE FUNCTION recovery.check_size(p_count integer)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF coalesce(p_count, 0) < 1 OR p_count > 100000 THEN
        RAISE EXCEPTION 'a recovery request names 1 to 100000 subjects, not %', coalesce(p_count, 0)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.request(p_field text, p_masks text[], p_reason text,
                                            p_ticket text, p_public_key bytea,
                                            p_break_glass boolean)
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
    PERFORM recovery.check_size(cardinality(v_masks));
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
    PERFORM recovery.open_request(v_request, 'recover', p_field, p_public_key, p_break_glass,
                                  v_refusal IS NOT NULL);
    RETURN v_request;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.request_quarantine(p_message_ids text[], p_reason text,
                                                       p_ticket text, p_public_key bytea,
                                                       p_break_glass boolean)
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
    PERFORM recovery.check_size(cardinality(v_ids));
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
    PERFORM recovery.open_request(v_request, 'quarantine_open', NULL, p_public_key, p_break_glass,
                                  v_refusal IS NOT NULL);
    RETURN v_request;
END
$fn$;

------------------------------------------------------------------------------------------------
-- Whether a request may be opened: approved as the policy asked, and (without approvals) not
-- past the hour after which no client waits for it.
CREATE OR REPLACE FUNCTION recovery.approved(r recovery.requests)
RETURNS boolean
LANGUAGE sql
STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT CASE WHEN r.approvals_needed = 0 THEN r.expires_at > now()
                ELSE (SELECT count(*) FROM recovery.approvals a WHERE a.request_id = r.id)
                     >= r.approvals_needed END
$fn$;

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
    LEFT JOIN recovery.attempts t ON t.request_id = r.id
    WHERE r.opened_at IS NULL AND r.closed_at IS NULL
      AND coalesce(t.next_attempt_at, r.created_at) <= now()
      AND recovery.approved(r)
    ORDER BY coalesce(t.next_attempt_at, r.created_at), r.id
    LIMIT 1
    -- NO KEY: the opening row's transaction may still reference the row (recovery.attempts).
    FOR NO KEY UPDATE OF r SKIP LOCKED
$fn$;

-- Step 2, in a transaction of its own, committed before anything is decrypted: the audit row of
-- this opening. No audit row, no value.
CREATE OR REPLACE FUNCTION recovery.record_opening(p_request bigint)
RETURNS boolean
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    SELECT * INTO v_request FROM recovery.requests r
    WHERE r.id = p_request AND r.opened_at IS NULL AND r.closed_at IS NULL;
    IF NOT FOUND OR NOT recovery.approved(v_request) THEN
        RAISE EXCEPTION 'recovery request % is not waiting to be opened', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- After five, the claiming transaction closes it as failed (recovery.close_failed).
    IF (SELECT t.attempts FROM recovery.attempts t WHERE t.request_id = p_request) >= 5 THEN
        RETURN false;
    END IF;
    -- Committed before anything opens: the next attempt, if this one fails, waits longer.
    INSERT INTO recovery.attempts AS t (request_id, attempts, next_attempt_at)
    VALUES (p_request, 1, now() + interval '5 seconds')
    ON CONFLICT (request_id) DO UPDATE
    SET attempts = t.attempts + 1,
        next_attempt_at = now() + interval '5 seconds' * power(2, t.attempts);
    INSERT INTO recovery.audit_log (kind, request_id, outcome, detail, request_txid)
    SELECT 'fetch', p_request, 'opening',
           format('%s of %s %s rows, for %s', count(*) FILTER (WHERE a.outcome = 'found'),
                  count(*), v_request.kind, v_request.requester),
           txid_current()
    FROM recovery.audit_log a
    WHERE a.request_id = p_request AND a.kind = v_request.kind;
    RETURN true;
END
$fn$;

-- A request that failed five openings, closed as failed by the claiming transaction.
CREATE OR REPLACE FUNCTION recovery.close_failed(p_request bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    PERFORM recovery.close_request(p_request, 'failed',
                                   'not opened after 5 attempts; the recovery service logs why',
                                   true);
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
    -- Only a request still waiting, approved, and held by this transaction's claim (NOWAIT
    -- fails while another transaction holds it).
    SELECT r.kind INTO v_kind FROM recovery.requests r
    WHERE r.id = p_request AND r.opened_at IS NULL AND r.closed_at IS NULL AND recovery.approved(r)
    FOR NO KEY UPDATE NOWAIT;
    IF v_kind IS NULL THEN
        RAISE EXCEPTION 'recovery request % is not waiting to be opened', p_request
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
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
    WHERE r.id = p_request AND r.opened_at IS NULL AND r.closed_at IS NULL
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
    WITH policy AS (SELECT p.approval_ttl FROM recovery.policy p WHERE p.singleton),
    expired AS (
        SELECT r.id, r.break_glass, r.reviewed_at FROM recovery.requests r
        WHERE coalesce(r.opened_at, r.closed_at)
              -- A requester who did not wait collects within the approval TTL.
              < now() - CASE WHEN r.approvals_needed > 0
                             THEN greatest(p_ttl, (SELECT approval_ttl FROM policy))
                             ELSE greatest(p_ttl, interval '1 second') END
    ),
    gone_replies AS (
        DELETE FROM recovery.replies p USING expired e WHERE p.request_id = e.id RETURNING 1
    ),
    -- A break-glass request stays, without its replies, until it is reviewed.
    gone AS (
        DELETE FROM recovery.requests r USING expired e
        WHERE r.id = e.id AND (NOT e.break_glass OR e.reviewed_at IS NOT NULL)
        RETURNING r.id
    )
    SELECT count(*) FROM gone
$fn$;

------------------------------------------------------------------------------------------------
-- Approvers.

-- A request closed without opening (denied or expired): one refused reply per subject, so a
-- waiting client gets its answer, and an audit row.
CREATE OR REPLACE FUNCTION recovery.close_request(p_request bigint, p_outcome text, p_detail text,
                                                  p_audit boolean)
RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    UPDATE recovery.requests r SET closed_at = now()
    WHERE r.id = p_request AND r.opened_at IS NULL AND r.closed_at IS NULL
    RETURNING * INTO v_request;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    IF p_audit THEN
        INSERT INTO recovery.audit_log (kind, request_id, outcome, detail)
        VALUES ('approval', p_request, p_outcome, p_detail);
    END IF;
    INSERT INTO recovery.replies (request_id, ord, requester, subject, outcome, detail)
    SELECT p_request, (row_number() OVER (ORDER BY a.id))::integer, v_request.requester,
           a.subject, 'refused', coalesce(p_detail, a.detail)
    FROM recovery.audit_log a
    WHERE a.request_id = p_request AND a.kind = v_request.kind;
    PERFORM pg_notify('etl_recovery_replies', p_request::text);
END
$fn$;

-- The pending request an approver acts on: not the approver's own, with a reason.
CREATE OR REPLACE FUNCTION recovery.pending_request(p_request bigint, p_reason text)
RETURNS recovery.requests
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    IF btrim(coalesce(p_reason, '')) = '' THEN
        RAISE EXCEPTION 'a reason is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_request FROM recovery.requests r
    WHERE r.id = p_request AND r.approvals_needed > 0 AND r.opened_at IS NULL
      AND r.closed_at IS NULL
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery request % is not waiting for approval', p_request
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_request.requester = session_user THEN
        RAISE EXCEPTION 'the requester of recovery request % cannot approve, deny or review it',
                        p_request
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN v_request;
END
$fn$;

-- Requests waiting for approval; expired ones are closed first.
CREATE OR REPLACE FUNCTION recovery.pending()
RETURNS TABLE (id bigint, requester text, kind text, field text, subjects bigint, reason text,
               ticket text, created_at timestamptz, approvals bigint, approvals_needed integer,
               expires_at timestamptz)
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
#variable_conflict use_column
BEGIN
    PERFORM recovery.expire_pending();
    RETURN QUERY
    SELECT r.id, r.requester, r.kind, r.field,
           s.subjects, s.reason, s.ticket,
           r.created_at,
           (SELECT count(*) FROM recovery.approvals p WHERE p.request_id = r.id),
           r.approvals_needed, r.expires_at
    FROM recovery.requests r
    -- One pass over the request's audit rows: they share its reason and ticket.
    CROSS JOIN LATERAL (SELECT count(*) AS subjects, min(a.reason) AS reason,
                               min(a.ticket) AS ticket
                        FROM recovery.audit_log a
                        WHERE a.request_id = r.id AND a.kind = r.kind) s
    WHERE r.approvals_needed > 0 AND r.opened_at IS NULL AND r.closed_at IS NULL
      AND (SELECT count(*) FROM recovery.approvals p WHERE p.request_id = r.id) < r.approvals_needed
    ORDER BY r.id;
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.approve(p_request bigint, p_reason text)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request recovery.requests;
    v_count integer;
BEGIN
    PERFORM recovery.expire_pending();
    v_request := recovery.pending_request(p_request, p_reason);
    INSERT INTO recovery.approvals (request_id, approver) VALUES (p_request, session_user)
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'you approved recovery request % already', p_request
            USING ERRCODE = 'unique_violation';
    END IF;
    SELECT count(*) INTO v_count FROM recovery.approvals a WHERE a.request_id = p_request;
    INSERT INTO recovery.audit_log (kind, request_id, reason, outcome, detail)
    VALUES ('approval', p_request, p_reason, 'approved',
            format('%s of %s approvals, for %s', v_count, v_request.approvals_needed,
                   v_request.requester));
    IF v_count >= v_request.approvals_needed THEN
        PERFORM pg_notify('etl_recovery_requests', p_request::text);
    END IF;
    RETURN greatest(v_request.approvals_needed - v_count, 0);
END
$fn$;

CREATE OR REPLACE FUNCTION recovery.deny(p_request bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
BEGIN
    PERFORM recovery.pending_request(p_request, p_reason);
    PERFORM recovery.close_request(p_request, 'denied',
                                   format('denied by %s: %s', session_user, btrim(p_reason)), true);
END
$fn$;

-- Requests whose approvals did not come within their TTL are refused as expired.
CREATE OR REPLACE FUNCTION recovery.expire_pending()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
DECLARE
    v_id bigint;
    v_count bigint := 0;
BEGIN
    FOR v_id IN
        SELECT r.id FROM recovery.requests r
        WHERE r.approvals_needed > 0 AND r.opened_at IS NULL AND r.closed_at IS NULL
          AND r.expires_at < now()
          AND (SELECT count(*) FROM recovery.approvals p WHERE p.request_id = r.id)
              < r.approvals_needed
        ORDER BY r.id
        FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM recovery.close_request(v_id, 'expired',
                                       'the request expired before its approvals', true);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$fn$;

-- A client that stops waiting withdraws its request: never opened afterwards, on record.
CREATE OR REPLACE FUNCTION recovery.cancel(p_request bigint)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM recovery.requests r
               WHERE r.id = p_request AND r.requester = session_user) THEN
        PERFORM recovery.close_request(p_request, 'cancelled', 'the client stopped waiting', true);
        DELETE FROM recovery.replies WHERE request_id = p_request;
    END IF;
END
$fn$;

-- Where a request of the caller's stands: for the client that waits, or collects later.
CREATE OR REPLACE FUNCTION recovery.request_state(p_request bigint)
RETURNS TABLE (kind text, field text, approvals bigint, approvals_needed integer,
               expires_at timestamptz, opened boolean, closed boolean)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.kind, r.field,
           (SELECT count(*) FROM recovery.approvals p WHERE p.request_id = r.id),
           r.approvals_needed, r.expires_at, r.opened_at IS NOT NULL, r.closed_at IS NOT NULL
    FROM recovery.requests r
    WHERE r.id = p_request AND r.requester = session_user
$fn$;

-- Break-glass openings no approver has reviewed yet.
CREATE OR REPLACE FUNCTION recovery.unreviewed()
RETURNS TABLE (id bigint, requester text, kind text, field text, subjects bigint, reason text,
               ticket text, created_at timestamptz, opened_at timestamptz)
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT r.id, r.requester, r.kind, r.field,
           s.subjects, s.reason, s.ticket,
           r.created_at, r.opened_at
    FROM recovery.requests r
    -- One pass over the request's audit rows: they share its reason and ticket.
    CROSS JOIN LATERAL (SELECT count(*) AS subjects, min(a.reason) AS reason,
                               min(a.ticket) AS ticket
                        FROM recovery.audit_log a
                        WHERE a.request_id = r.id AND a.kind = r.kind) s
    WHERE r.break_glass AND r.reviewed_at IS NULL
    ORDER BY r.id
$fn$;

CREATE OR REPLACE FUNCTION recovery.unreviewed_count()
RETURNS bigint
LANGUAGE sql
STABLE
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $fn$
    SELECT count(*) FROM recovery.requests r WHERE r.break_glass AND r.reviewed_at IS NULL
$fn$;

CREATE OR REPLACE FUNCTION recovery.review(p_request bigint, p_reason text)
RETURNS void
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '10s'
AS $fn$
DECLARE
    v_request recovery.requests;
BEGIN
    IF btrim(coalesce(p_reason, '')) = '' THEN
        RAISE EXCEPTION 'a reason is required' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO v_request FROM recovery.requests r
    WHERE r.id = p_request AND r.break_glass AND r.reviewed_at IS NULL
      AND (r.opened_at IS NOT NULL OR r.closed_at IS NOT NULL)
    FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'recovery request % is not a break-glass opening waiting for review',
                        p_request
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_request.requester = session_user THEN
        RAISE EXCEPTION 'the requester of recovery request % cannot approve, deny or review it',
                        p_request
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    UPDATE recovery.requests r SET reviewed_at = now(), reviewed_by = session_user
    WHERE r.id = p_request;
    INSERT INTO recovery.audit_log (kind, request_id, reason, outcome, detail)
    VALUES ('approval', p_request, p_reason, 'reviewed',
            format('break-glass opening of %s reviewed', v_request.requester));
END
$fn$;

-- The owner's way to change the policy, approvals included; the change is itself an audit row.
DROP FUNCTION IF EXISTS recovery.set_policy(boolean, integer);
CREATE OR REPLACE FUNCTION recovery.set_policy(p_require_ticket boolean, p_daily_limit integer,
                                               p_approvals integer, p_approval_ttl interval)
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
        approvals = coalesce(p_approvals, p.approvals),
        approval_ttl = coalesce(p_approval_ttl, p.approval_ttl),
        updated_at = now(), updated_by = session_user
    WHERE p.singleton
    RETURNING * INTO v_policy;
    INSERT INTO recovery.audit_log (kind, outcome, detail)
    VALUES ('policy', 'set', format('require_ticket=%s daily_limit=%s approvals=%s approval_ttl=%s',
                                    v_policy.require_ticket, v_policy.daily_limit,
                                    v_policy.approvals, v_policy.approval_ttl));
    RETURN v_policy;
END
$fn$;

------------------------------------------------------------------------------------------------
-- Grants: recoverers request and collect; the opener opens; nobody else does either.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA recovery FROM PUBLIC;
REVOKE ALL ON recovery.requests, recovery.replies FROM PUBLIC;
GRANT EXECUTE ON FUNCTION recovery.request(text, text[], text, text, bytea, boolean),
    recovery.request_quarantine(text[], text, text, bytea, boolean),
    recovery.request_state(bigint), recovery.cancel(bigint) TO etl_recoverer;
GRANT SELECT, DELETE ON recovery.replies TO etl_recoverer;
GRANT USAGE ON SCHEMA recovery TO etl_opener;
GRANT EXECUTE ON FUNCTION recovery.claim_request(), recovery.record_opening(bigint),
    recovery.opening_material(bigint), recovery.store_replies(bigint, text[], text[], bytea[]),
    recovery.expire_replies(interval), recovery.expire_pending(), recovery.unreviewed_count(),
    recovery.close_failed(bigint),
    recovery.audit_head() TO etl_opener;
GRANT USAGE ON SCHEMA recovery TO etl_approver;
GRANT EXECUTE ON FUNCTION recovery.pending(), recovery.approve(bigint, text),
    recovery.deny(bigint, text), recovery.unreviewed(), recovery.review(bigint, text)
    TO etl_approver;
