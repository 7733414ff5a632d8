-- The vault's primary key leads with the mask: masks are random, so comparisons in the index
-- are settled by the first column, and every insert's descent compares one memcmp-able key
-- instead of first a collated field name. Same columns, so `ON CONFLICT (field, mask)` and the
-- recovery lookups (equality on both) use it unchanged. On a vault that already holds many rows
-- this rebuilds the index under an exclusive lock: apply it while ingestion is paused.
ALTER TABLE vault.entries DROP CONSTRAINT IF EXISTS entries_pkey;
ALTER TABLE vault.entries ADD CONSTRAINT entries_pkey PRIMARY KEY (mask, field);
