-- The analysts' table, exactly as its consumers defined it. IF NOT EXISTS so this also applies
-- to a database where the reference image already created it. Columns may be added, never
-- changed or dropped.
CREATE TABLE IF NOT EXISTS user_logins(
    user_id             varchar(128),
    device_type         varchar(32),
    masked_ip           varchar(256),
    masked_device_id    varchar(256),
    locale              varchar(32),
    app_version         integer,
    create_date         date
);

-- Added columns. No defaults: on PostgreSQL 10 a default would rewrite an existing table.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS app_version_text varchar(32);
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS mask_key_version integer;
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS message_id varchar(128);

COMMENT ON COLUMN user_logins.masked_ip IS
    'HMAC-SHA256 (hex) of the canonical ip under mask key version mask_key_version; equal ips have equal masks.';
COMMENT ON COLUMN user_logins.masked_device_id IS
    'HMAC-SHA256 (hex) of the trimmed device_id under mask key version mask_key_version.';
COMMENT ON COLUMN user_logins.app_version IS
    'major*1000000 + minor*1000 + patch: ordered like versions; the exact text is in app_version_text.';
COMMENT ON COLUMN user_logins.create_date IS
    'UTC date of the SQS SentTimestamp (processing date only when SQS did not send it).';
COMMENT ON COLUMN user_logins.message_id IS 'SQS message id the row came from.';
