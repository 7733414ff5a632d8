-- The vault keyed by a mask's 32 bytes instead of its 64 hexadecimal characters: half the key in
-- every index entry and comparison, so each insert's descent of the primary key (the largest
-- cost of a backfill of new values, BENCHMARKS.md) touches fewer pages. `user_logins` keeps the
-- hex text the analysts use; the recovery functions decode it. On a vault that already holds
-- many rows this rewrites the table under an exclusive lock: apply it while ingestion is paused.
ALTER TABLE vault.entries DROP CONSTRAINT IF EXISTS entries_pkey;
ALTER TABLE vault.entries ALTER COLUMN mask TYPE bytea USING decode(mask, 'hex');
ALTER TABLE vault.entries DROP CONSTRAINT IF EXISTS entries_mask_length;
ALTER TABLE vault.entries ADD CONSTRAINT entries_mask_length CHECK (octet_length(mask) = 32);
ALTER TABLE vault.entries ADD CONSTRAINT entries_pkey PRIMARY KEY (mask, field);
