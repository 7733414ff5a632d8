-- Everything an owner changes is on record (issue 22): a data key created, rotated or re-wrapped,
-- and the retention settings changed, each append an audit row in the same transaction as the
-- change, from a trigger, so no command (and no hand-written statement) changes them unrecorded.
-- Disabling the triggers takes the owner's or a superuser's power, as rewriting the log does;
-- only an anchored head kept outside the database catches either (SECURITY.md).

ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask', 'approval', 'key_creation', 'key_rewrap',
                    'retention_setting'));

CREATE OR REPLACE FUNCTION keyring.record_key_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO recovery.audit_log (kind, outcome, detail)
        VALUES (CASE WHEN NEW.version = 1 THEN 'key_creation' ELSE 'key_rotation' END, 'created',
                format('purpose=%s version=%s kms_key=%s', NEW.purpose, NEW.version,
                       NEW.kms_key_id));
    ELSIF NEW.kms_key_id IS DISTINCT FROM OLD.kms_key_id
          OR NEW.wrapped_key IS DISTINCT FROM OLD.wrapped_key THEN
        INSERT INTO recovery.audit_log (kind, outcome, detail)
        VALUES ('key_rewrap', 'rewrapped',
                format('purpose=%s version=%s from_kms_key=%s to_kms_key=%s', NEW.purpose,
                       NEW.version, OLD.kms_key_id, NEW.kms_key_id));
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS data_keys_on_record ON keyring.data_keys;
CREATE TRIGGER data_keys_on_record AFTER INSERT OR UPDATE ON keyring.data_keys
    FOR EACH ROW EXECUTE PROCEDURE keyring.record_key_change();

CREATE OR REPLACE FUNCTION etl.record_retention_change()
RETURNS trigger
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF (NEW.logins_days, NEW.quarantine_days, NEW.claims_days)
       IS DISTINCT FROM (OLD.logins_days, OLD.quarantine_days, OLD.claims_days) THEN
        INSERT INTO recovery.audit_log (kind, outcome, detail)
        VALUES ('retention_setting', 'changed',
                format('logins_days=%s quarantine_days=%s claims_days=%s (0: forever)',
                       coalesce(NEW.logins_days, 0), coalesce(NEW.quarantine_days, 0),
                       coalesce(NEW.claims_days, 0)));
    END IF;
    RETURN NULL;
END
$fn$;

DROP TRIGGER IF EXISTS retention_on_record ON etl.retention;
CREATE TRIGGER retention_on_record AFTER UPDATE ON etl.retention
    FOR EACH ROW EXECUTE PROCEDURE etl.record_retention_change();

REVOKE ALL ON FUNCTION keyring.record_key_change(), etl.record_retention_change() FROM PUBLIC;
