-- Progress of `etl ingest --from-file`: one row per committed batch of lines, written in the
-- batch's own transaction. A replay skips the lines inside these ranges after checking that they
-- are the same lines (lines_digest), so a backfill is idempotent without a row per line.
-- `source` is the input's fingerprint: the first 16 bytes of an HMAC-SHA256 of its first non-empty
-- line, under a subkey of the mask key (a body holds personal data, so its digests are keyed).
CREATE TABLE IF NOT EXISTS etl.file_batches (
    source        bytea        NOT NULL CHECK (length(source) = 16),
    first_line    bigint       NOT NULL CHECK (first_line > 0),
    last_line     bigint       NOT NULL,
    -- HMAC-SHA256 (same key) over the range's non-empty lines, each as line number (8 bytes,
    -- big-endian), length (8 bytes, big-endian) and bytes.
    lines_digest  bytea        NOT NULL CHECK (length(lines_digest) = 32),
    committed_at  timestamptz  NOT NULL DEFAULT now(),
    PRIMARY KEY (source, first_line),
    CHECK (last_line >= first_line)
);

GRANT SELECT, INSERT ON etl.file_batches TO etl_ingest;
