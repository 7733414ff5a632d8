-- The network of a row's ip (`etl ingest --ip-prefix V4BITS,V6BITS`), for counting logins per
-- network without recovering an ip. NULL where ingest was not configured to write it. Analysts
-- read it with the rest of user_logins; SECURITY.md says what a prefix reveals.
ALTER TABLE user_logins ADD COLUMN IF NOT EXISTS ip_network cidr;

COMMENT ON COLUMN user_logins.ip_network IS
    'Network of the ip (its first V4BITS or V6BITS bits, from --ip-prefix); NULL when not configured.';
