//! The PostgreSQL sink: writing a batch of the pipeline's contract (`pipeline::batch`). New vault
//! entries first, then one transaction with the claim, the
//! `user_logins` rows and the quarantine rows, committed only if the vault epoch is still the one
//! the batch was prepared under (see `pipeline::vault_state`).
//!
//! Claims make every write idempotent, in the same transaction as the rows:
//! - SQS messages: `etl.processed_messages` has the message id as primary key. The batch claims
//!   its ids with `INSERT ... ON CONFLICT DO NOTHING RETURNING`, and only claimed messages get a
//!   row or a quarantine entry. A redelivered message whose id is committed makes nothing new; one
//!   still being written by another consumer blocks on the key until that transaction ends, then
//!   is skipped.
//! - File lines: one `etl.file_batches` row per batch, keyed by source and first line; the file
//!   source skips committed ranges on replay (see `sources::file`).
//!
//! `user_logins` rows go in with a binary `COPY`: no per-row statement work, no parameter arrays
//! to decode. Vault entries go in first, committed on their own, with set-based statements over
//! UNNEST-ed arrays (`COPY` is refused on tables with row level security).

use std::collections::{BTreeMap, HashSet};

use sqlx::{PgConnection, PgPool};

use super::copy::BinaryCopy;
use crate::pipeline::batch::{Claim, QuarantineRow, VaultEntry, WriteBatch, WriteOutcome, Written};

const CLAIM_MESSAGES: &str = "\
INSERT INTO etl.processed_messages (message_id, outcome)
SELECT m.message_id, m.outcome
FROM UNNEST($1::text[], $2::text[]) AS m(message_id, outcome)
ORDER BY m.message_id
ON CONFLICT (message_id) DO NOTHING
RETURNING message_id";

const CLAIM_LINES: &str = "\
INSERT INTO etl.file_batches (source, first_line, last_line, lines_digest)
VALUES ($1, $2, $3, $4)
ON CONFLICT (source, first_line) DO NOTHING
RETURNING first_line";

/// The vault insert; the fallback adds only its `ON CONFLICT` clause.
macro_rules! insert_vault_sql {
    () => {
        "INSERT INTO vault.entries (field, mask, mask_key_version, vault_key_version, ciphertext)
SELECT v.field, v.mask, $1, $2, v.ciphertext
FROM UNNEST($3::text[], $4::bytea[], $5::bytea[]) AS v(field, mask, ciphertext)
WHERE etl.check_seal_versions($1, $2)
ORDER BY v.mask, v.field COLLATE \"C\""
    };
}

const INSERT_VAULT: &str = insert_vault_sql!();

const INSERT_VAULT_SKIPPING_EXISTING: &str = concat!(
    insert_vault_sql!(),
    // No conflict target: with one, PostgreSQL requires SELECT on the key columns, and the
    // ingest role reads nothing of the vault.
    "\nON CONFLICT DO NOTHING"
);

const KEEP_VAULT_ENTRIES: &str = "SELECT etl.keep_vault_entries($1)";

/// SQLSTATE unique_violation.
const UNIQUE_VIOLATION: &str = "23505";

/// SQLSTATE of `etl.check_seal_versions` and `etl.check_quarantine_version`: the batch was
/// sealed with keys no longer active.
const KEYS_CHANGED: &str = "ET001";

const COPY_LOGINS: &str = "\
COPY user_logins (user_id, device_type, masked_ip, masked_device_id, locale, app_version,
                  create_date, app_version_text, mask_key_version, message_id, ip_network)
FROM STDIN (FORMAT binary)";

const INSERT_QUARANTINE: &str = "\
INSERT INTO etl.quarantine (message_id, reason, detail, received_at, sent_at, receive_count,
                            quarantine_key_version, body_ciphertext, user_hash,
                            user_hash_key_version)
SELECT q.message_id, q.reason, q.detail, now(), q.sent_at, q.receive_count, $1, q.body, q.user_hash,
       CASE WHEN q.user_hash IS NOT NULL THEN $9::int4 END
FROM UNNEST($2::text[], $3::text[], $4::text[], $5::timestamptz[], $6::int4[], $7::bytea[],
            $8::bytea[])
     AS q(message_id, reason, detail, sent_at, receive_count, body, user_hash)
WHERE etl.check_quarantine_version($1)";

/// Held (shared) until the batch's transaction ends: no erasure or vault deletion commits
/// in between, and none that committed before is missed.
const HOLD_VAULT_EPOCH: &str = "SELECT etl.hold_vault_epoch(), etl.domain_key_versions()";

/// A replayed message's claim: its quarantine row goes, its outcome changes.
const CLAIM_REPLAYED: &str = "\
WITH replayed AS (
    DELETE FROM etl.quarantine q
    USING UNNEST($1::text[], $2::text[]) AS m(message_id, outcome)
    WHERE q.message_id = m.message_id
    RETURNING q.message_id, m.outcome
), claimed AS (
    UPDATE etl.processed_messages p SET outcome = r.outcome, processed_at = now()
    FROM replayed r WHERE p.message_id = r.message_id
)
SELECT message_id FROM replayed";

/// Writes one batch: its new vault entries, then one transaction with the claim, the rows and the
/// quarantine rows. The caller must not list a message id twice.
pub async fn write_batch(pool: &PgPool, batch: &WriteBatch) -> Result<Written, sqlx::Error> {
    match insert_vault(pool, batch).await {
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some(KEYS_CHANGED) => {
            return Ok(Written::KeysChanged)
        }
        other => other?,
    }
    let mut tx = pool.begin().await?;
    let (epoch, domains): (i64, String) =
        sqlx::query_as(HOLD_VAULT_EPOCH).fetch_one(&mut *tx).await?;
    if batch.vault_epoch != Some(epoch) {
        tx.rollback().await?;
        return Ok(Written::Stale { epoch });
    }
    // Prepared with the keys of before a domain was added (another writer reloaded them since):
    // again, with every domain.
    if domains != batch.domain_key_versions() {
        tx.rollback().await?;
        return Ok(Written::KeysChanged);
    }
    let claimed = claim(&mut tx, batch).await?;
    let mut outcome = WriteOutcome::default();
    if !claimed.is_none() {
        outcome.written = copy_logins(&mut tx, batch, &claimed).await?;
        copy_domains(&mut tx, batch, &claimed).await?;
        outcome.quarantined = match insert_quarantine(&mut tx, batch, &claimed).await {
            // Sealed to a quarantine key version below the lowest allowed: a rotation committed.
            Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some(KEYS_CHANGED) => {
                tx.rollback().await?;
                return Ok(Written::KeysChanged);
            }
            other => other?,
        };
        outcome.forgotten_skipped = batch
            .forgotten
            .iter()
            .filter(|id| claimed.contains(id))
            .count() as u64;
    }
    tx.commit().await?;
    let done =
        outcome.written + outcome.quarantined.values().sum::<u64>() + outcome.forgotten_skipped;
    outcome.duplicates_skipped = (batch.received as u64).saturating_sub(done);
    Ok(Written::Committed(outcome))
}

/// Which of the batch's messages this transaction may write.
enum Claimed {
    All,
    None,
    Ids(HashSet<String>),
}

impl Claimed {
    fn is_none(&self) -> bool {
        match self {
            Self::None => true,
            Self::Ids(ids) => ids.is_empty(),
            Self::All => false,
        }
    }

    fn contains(&self, message_id: &str) -> bool {
        match self {
            Self::All => true,
            Self::None => false,
            Self::Ids(ids) => ids.contains(message_id),
        }
    }
}

async fn claim(conn: &mut PgConnection, batch: &WriteBatch) -> Result<Claimed, sqlx::Error> {
    match &batch.claim {
        Claim::FileLines(range) => {
            let claimed: Option<i64> = sqlx::query_scalar(CLAIM_LINES)
                .bind(range.source.as_slice())
                .bind(range.first)
                .bind(range.last)
                .bind(range.digest.as_slice())
                .fetch_optional(&mut *conn)
                .await?;
            Ok(if claimed.is_some() {
                Claimed::All
            } else {
                Claimed::None
            })
        }
        Claim::MessageIds | Claim::Replay => {
            let written = batch.logins.iter().map(|r| (&r.message_id, "written"));
            let forgotten = batch.forgotten.iter().map(|id| (id, "forgotten"));
            let (ids, outcomes): (Vec<&String>, Vec<&str>) = if batch.claim == Claim::Replay {
                // Messages still invalid stay in quarantine, unclaimed.
                written.chain(forgotten).unzip()
            } else {
                let quarantined = batch
                    .quarantine
                    .iter()
                    .map(|r| (&r.message_id, "quarantined"));
                written.chain(forgotten).chain(quarantined).unzip()
            };
            let statement = if batch.claim == Claim::Replay {
                CLAIM_REPLAYED
            } else {
                CLAIM_MESSAGES
            };
            let claimed: Vec<String> = sqlx::query_scalar(statement)
                .bind(ids)
                .bind(outcomes)
                .fetch_all(&mut *conn)
                .await?;
            Ok(Claimed::Ids(claimed.into_iter().collect()))
        }
    }
}

/// Whether `user_logins` takes the batch's rows (a constraint added since may not), tried in a
/// transaction that is rolled back: a dry run's test. Nothing is written.
pub async fn trial_logins(pool: &PgPool, batch: &WriteBatch) -> Result<(), sqlx::Error> {
    let mut tx = pool.begin().await?;
    let tried = copy_logins(&mut tx, batch, &Claimed::All).await;
    tx.rollback().await?;
    tried.map(|_| ())
}

/// Vault entries are committed before the rows that use their masks, in short transactions of
/// their own: a concurrent batch that meets the same new value waits for this short transaction,
/// not for a whole batch. A crash in between leaves vault rows no row uses yet; the messages come
/// back and use them. Erasure, the retention sweep and the re-mask switch delete entries, and they
/// raise the vault epoch, so a batch whose entries went is prepared again.
async fn insert_vault(pool: &PgPool, batch: &WriteBatch) -> Result<(), sqlx::Error> {
    // Sorted as the statement sorts them (byte-wise: hex order is digest order), so the server's
    // sort finds them presorted and concurrent batches lock index entries in one order.
    let mut entries: Vec<&VaultEntry> = batch.vault.iter().collect();
    entries.sort_unstable_by(|a, b| {
        (a.mask.as_bytes(), a.field.as_str().as_bytes())
            .cmp(&(b.mask.as_bytes(), b.field.as_str().as_bytes()))
    });
    for chunk in entries.chunks(VAULT_CHUNK) {
        insert_vault_chunk(pool, batch, chunk).await?;
    }
    Ok(())
}

/// Vault entries per insert statement. A value the vault already holds (one this process forgot,
/// or another process wrote) sends its whole chunk down the slower path, so smaller is safer; but
/// each statement costs a sort, a transaction and round trips, and on 1,000,000 distinct events
/// chunks of 250 / 1,000 / 2,000 / 4,000 gave 94k / 104k / 111k / 114k events/s (BENCHMARKS.md).
const VAULT_CHUNK: usize = 2000;

/// Entries reach here only when this process has not seen them committed, so most are new to the
/// vault too. A plain insert checks uniqueness in the same index descent that inserts; ON
/// CONFLICT probes the index first and then inserts, about twice the work. So the plain insert is
/// tried first, and ON CONFLICT only if a row already existed.
async fn insert_vault_chunk(
    pool: &PgPool,
    batch: &WriteBatch,
    entries: &[&VaultEntry],
) -> Result<(), sqlx::Error> {
    let fields: Vec<&str> = entries.iter().map(|e| e.field.as_str()).collect();
    let masks: Vec<&[u8]> = entries
        .iter()
        .map(|e| e.mask.as_bytes().as_slice())
        .collect();
    let ciphertexts: Vec<&[u8]> = entries.iter().map(|e| e.ciphertext.as_slice()).collect();
    let insert = |statement| {
        sqlx::query(statement)
            .bind(batch.mask_key_version)
            .bind(batch.vault_key_version)
            .bind(&fields)
            .bind(&masks)
            .bind(&ciphertexts)
    };
    match insert(INSERT_VAULT).execute(pool).await {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some(UNIQUE_VIOLATION) => {
            insert(INSERT_VAULT_SKIPPING_EXISTING).execute(pool).await?;
            // Entries the vault held: any the retention sweep found unused are in use again,
            // before a row using them can commit (migration `vault_sweep_states`).
            sqlx::query(KEEP_VAULT_ENTRIES)
                .bind(&masks)
                .execute(pool)
                .await
                .map(|_| ())
        }
        Err(err) => Err(err),
    }
}

async fn copy_logins(
    conn: &mut PgConnection,
    batch: &WriteBatch,
    claimed: &Claimed,
) -> Result<u64, sqlx::Error> {
    let mut copy = BinaryCopy::with_capacity(batch.logins.len() * 300);
    let mut rows = 0u64;
    for row in batch
        .logins
        .iter()
        .filter(|r| claimed.contains(&r.message_id))
    {
        copy.row(11);
        copy.text(&row.user_id);
        copy.text(&row.device_type);
        copy.text(row.masked_ip.as_str());
        copy.text(row.masked_device_id.as_str());
        copy.optional_text(row.locale.as_deref());
        copy.int4(row.app_version);
        copy.date(row.create_date);
        copy.text(&row.app_version_text);
        copy.int4(batch.mask_key_version);
        copy.text(&row.message_id);
        copy.optional_cidr(row.ip_network);
        rows += 1;
    }
    if rows == 0 {
        return Ok(0);
    }
    let mut sink = conn.copy_in_raw(COPY_LOGINS).await?;
    sink.send(copy.finish()).await?;
    sink.finish().await
}

/// The columns a domain row is copied with, and those of its masks under a pending key.
const DOMAIN_COLUMNS: i16 = 10;
const NEXT_COLUMNS: i16 = 4;

/// The same rows, masked under each domain's key, into each domain's table: in the batch's
/// transaction, so a domain holds exactly the rows `user_logins` got since it was created. While
/// a domain's key version is pending, each row also carries its masks under that version.
async fn copy_domains(
    conn: &mut PgConnection,
    batch: &WriteBatch,
    claimed: &Claimed,
) -> Result<(), sqlx::Error> {
    // Where each domain's masks start in a row's `domain_masks`.
    let mut slot = 0;
    for domain in &batch.domains {
        let (active, pending) = (slot, domain.pending.map(|_| slot + 1));
        slot += 1 + usize::from(pending.is_some());
        let columns = if pending.is_some() {
            DOMAIN_COLUMNS + NEXT_COLUMNS
        } else {
            DOMAIN_COLUMNS
        };
        let mut copy = BinaryCopy::with_capacity(batch.logins.len() * 200);
        let mut rows = 0u64;
        for row in batch
            .logins
            .iter()
            .filter(|r| claimed.contains(&r.message_id))
        {
            // Prepared together: a row of a batch with domains has masks for each, and its hash.
            let masks = |slot: usize| row.domain_masks.get(slot);
            let (Some([masked_ip, masked_device_id, masked_user_id]), Some(user_hash)) =
                (masks(active), row.user_hash.as_ref())
            else {
                return Err(unprepared(&domain.name));
            };
            copy.row(columns);
            copy.text(masked_user_id.as_str());
            copy.text(&row.device_type);
            copy.text(masked_ip.as_str());
            copy.text(masked_device_id.as_str());
            copy.optional_text(row.locale.as_deref());
            copy.int4(row.app_version);
            copy.date(row.create_date);
            copy.int4(domain.active);
            copy.bytea(user_hash.as_bytes());
            copy.int4(batch.user_key_version);
            if let (Some(slot), Some(version)) = (pending, domain.pending) {
                let Some([next_ip, next_device_id, next_user_id]) = masks(slot) else {
                    return Err(unprepared(&domain.name));
                };
                copy.text(next_user_id.as_str());
                copy.text(next_ip.as_str());
                copy.text(next_device_id.as_str());
                copy.int4(version);
            }
            rows += 1;
        }
        if rows == 0 {
            continue;
        }
        let next = if pending.is_some() {
            ", next_masked_user_id, next_masked_ip, next_masked_device_id, next_mask_key_version"
        } else {
            ""
        };
        let mut sink = conn
            .copy_in_raw(&format!(
                "COPY {} (masked_user_id, device_type, masked_ip, masked_device_id, locale, \
                 app_version, create_date, mask_key_version, user_hash, \
                 user_hash_key_version{next}) FROM STDIN (FORMAT binary)",
                super::domains::table(&domain.name)
            ))
            .await?;
        sink.send(copy.finish()).await?;
        sink.finish().await?;
    }
    Ok(())
}

fn unprepared(domain: &str) -> sqlx::Error {
    sqlx::Error::Protocol(format!(
        "a row was prepared without its masks of domain {domain}"
    ))
}

async fn insert_quarantine(
    conn: &mut PgConnection,
    batch: &WriteBatch,
    claimed: &Claimed,
) -> Result<BTreeMap<String, u64>, sqlx::Error> {
    let rows: Vec<&QuarantineRow> = batch
        .quarantine
        .iter()
        .filter(|r| claimed.contains(&r.message_id))
        .collect();
    let mut by_reason = BTreeMap::new();
    if rows.is_empty() {
        return Ok(by_reason);
    }
    sqlx::query(INSERT_QUARANTINE)
        .bind(batch.quarantine_key_version)
        .bind(
            rows.iter()
                .map(|r| r.message_id.as_str())
                .collect::<Vec<_>>(),
        )
        .bind(rows.iter().map(|r| r.reason.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.sent_at).collect::<Vec<_>>())
        .bind(rows.iter().map(|r| r.receive_count).collect::<Vec<_>>())
        .bind(
            rows.iter()
                .map(|r| r.body_ciphertext.as_slice())
                .collect::<Vec<_>>(),
        )
        .bind(
            rows.iter()
                .map(|r| r.user_hash.as_ref().map(|h| h.as_bytes().as_slice()))
                .collect::<Vec<_>>(),
        )
        .bind(batch.user_key_version)
        .execute(&mut *conn)
        .await?;
    for row in rows {
        *by_reason.entry(row.reason.as_str().to_owned()).or_insert(0) += 1;
    }
    Ok(by_reason)
}
