-- `etl privacy fill-networks` (issue 23): rows written before `--ip-prefix` get their network
-- from the vault's values, opened by a key job on record: a row before any entry is opened, one
-- with the figures after.
ALTER TABLE recovery.audit_log DROP CONSTRAINT IF EXISTS audit_log_kind_check;
ALTER TABLE recovery.audit_log ADD CONSTRAINT audit_log_kind_check
    CHECK (kind IN ('recover', 'quarantine_open', 'fetch', 'policy', 'erasure', 'retention',
                    'quarantine_purge', 'quarantine_replay', 'key_rotation', 'key_retirement',
                    'reseal', 'remask', 'approval', 'key_creation', 'key_rewrap',
                    'retention_setting', 'subject_access', 'domain_creation', 'network_fill'));
