-- No session can stall ingest, erasure or recovery (issue 22). Every wait for the vault epoch or
-- the audit chain's lock is bounded: a transaction left open by a person (a privacy officer's
-- erasure, a recoverer's request) makes the others fail and retry, never wait forever. Ingest
-- retries a lock timeout as it retries a lost connection. An administrator also bounds how long
-- a login may sit idle inside a transaction (docs/roles.md, SECURITY.md), which ends such a
-- session and releases what it holds.

-- Ingest's shared hold of the epoch, taken by every batch commit. Longer than the others: a
-- re-mask switch holds the epoch about 20 s per million rows, and a batch that times out is
-- retried (eight times, with backoff) before its messages go back to the queue.
ALTER FUNCTION etl.hold_vault_epoch() SET lock_timeout = '30s';
-- The exclusive hold taken by erasure's chunks, the vault sweep and the re-mask switch.
ALTER FUNCTION etl.lock_vault_epoch() SET lock_timeout = '10s';
-- Every append to the audit log takes the chain's lock in this trigger.
ALTER FUNCTION recovery.audit_append() SET lock_timeout = '10s';
