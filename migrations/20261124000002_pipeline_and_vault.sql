-- Everything the product needs beside user_logins, in schemas of its own so that analysts'
-- access (public.user_logins) and the vault's can be granted separately.
-- Written for PostgreSQL 10 to 17: no generated columns, no MERGE, no newer syntax.
-- Keys are compared byte-wise (COLLATE "C"): masks are hex and message ids ASCII, so this sorts
-- as any collation would, and the primary-key checks of every insert stay cheap.

-- Wrapped data keys. Only KMS can unwrap them.
CREATE SCHEMA IF NOT EXISTS keyring;
CREATE TABLE IF NOT EXISTS keyring.data_keys (
    purpose      text        NOT NULL CHECK (purpose IN ('mask', 'vault')),
    version      integer     NOT NULL CHECK (version > 0),
    kms_key_id   text        NOT NULL,
    wrapped_key  bytea       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (purpose, version)
);

-- One row per distinct (field, mask): the deterministic AES-256-GCM-SIV ciphertext of the
-- canonical value (nonce || ciphertext || tag), sealed with associated data binding field, mask
-- and vault_key_version.
CREATE SCHEMA IF NOT EXISTS vault;
CREATE TABLE IF NOT EXISTS vault.entries (
    field              text         NOT NULL CHECK (field IN ('ip', 'device_id')),
    mask               varchar(256) COLLATE "C" NOT NULL,
    mask_key_version   integer      NOT NULL,
    vault_key_version  integer      NOT NULL,
    ciphertext         bytea        NOT NULL,
    first_seen         timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (field, mask)
);

-- Pipeline bookkeeping.
CREATE SCHEMA IF NOT EXISTS etl;

-- Every SQS message id whose outcome is committed. Redeliveries of these ids are skipped.
-- SQS keeps a message at most 14 days, so rows older than that can be pruned.
CREATE TABLE IF NOT EXISTS etl.processed_messages (
    message_id    varchar(128) COLLATE "C" PRIMARY KEY,
    outcome       text         NOT NULL CHECK (outcome IN ('written', 'quarantined')),
    processed_at  timestamptz  NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS processed_messages_processed_at_idx
    ON etl.processed_messages (processed_at);

-- Rejected messages: why, when, and the body sealed under the vault key (never in clear).
CREATE TABLE IF NOT EXISTS etl.quarantine (
    message_id         varchar(128) COLLATE "C" PRIMARY KEY,
    reason             text         NOT NULL,
    detail             text         NOT NULL,
    received_at        timestamptz  NOT NULL,
    sent_at            timestamptz,
    receive_count      integer,
    vault_key_version  integer      NOT NULL,
    body_ciphertext    bytea        NOT NULL
);

REVOKE ALL ON SCHEMA keyring, vault, etl FROM PUBLIC;
