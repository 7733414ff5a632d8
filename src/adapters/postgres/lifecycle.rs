//! The data lifecycle's statements (migration `data_lifecycle`): the vault epoch and suppression
//! list ingest reads, erasure, a subject's rows, retention, quarantine replay and purge.
//!
//! Deletions that can leave a mask without its vault entry (erasure, the vault sweep) run holding
//! the vault epoch exclusively and raise it; every other deletion here touches nothing a batch in
//! flight depends on, and runs in short transactions of `chunk` rows.

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::TryStreamExt;
use serde::Serialize;
use std::time::Instant;

use backon::Retryable;
use sqlx::{PgConnection, PgPool, Postgres, Transaction};

use super::keyring::KeyState;
use crate::crypto::{UserHash, UserKey};
use crate::domain::Justification;

/// The vault epoch with the key versions ingest must use, and the suppression-list rows after
/// `upto` (read after the epoch, so they include every user forgotten up to it).
pub async fn vault_state_since(
    pool: &PgPool,
    upto: i64,
) -> Result<(KeyState, Vec<(i64, UserHash)>), sqlx::Error> {
    let state = super::keyring::key_state(pool).await?;
    let rows: Vec<(i64, Vec<u8>)> =
        sqlx::query_as("SELECT id, user_hash FROM etl.forgotten_users WHERE id > $1 ORDER BY id")
            .bind(upto)
            .fetch_all(pool)
            .await?;
    let forgotten = rows
        .into_iter()
        .filter_map(|(id, hash)| UserHash::from_bytes(&hash).map(|hash| (id, hash)))
        .collect();
    Ok((state, forgotten))
}

/// What erasing one user removed.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Erased {
    #[serde(serialize_with = "hex_bytes")]
    pub user_hash: Vec<u8>,
    /// Named as in the text output and the receipt.
    #[serde(rename = "user_logins")]
    pub logins: i64,
    pub vault_entries: i64,
    pub quarantined: i64,
    /// Rows of the pseudonymisation domains, found by the user's hashes.
    pub domain_rows: i64,
    /// Added to the suppression list now (false: it was there already).
    pub newly_suppressed: bool,
}

fn hex_bytes<S: serde::Serializer>(bytes: &[u8], serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&hex::encode(bytes))
}

/// A user to erase: the id, its keyed hash under the newest user key version, and its hashes
/// under the other stored versions (under which an earlier erasure may have suppressed it).
pub struct ToForget<'a> {
    pub user_id: &'a str,
    pub hash: UserHash,
    pub earlier_hashes: Vec<UserHash>,
}

/// Erases these users in one transaction, committed unless `dry_run`, which rolls it back and so
/// reports exactly what the real run would remove, per user (their rows in the pseudonymisation
/// domains among it).
pub async fn forget(
    pool: &PgPool,
    users: &[ToForget<'_>],
    user_key: &UserKey,
    reason: &str,
    ticket: Option<&str>,
    dry_run: bool,
) -> Result<Vec<Erased>, sqlx::Error> {
    let ids: Vec<&str> = users.iter().map(|user| user.user_id).collect();
    let hashes: Vec<&[u8]> = users
        .iter()
        .map(|user| user.hash.as_bytes().as_slice())
        .collect();
    let mut earlier_hashes: Vec<&[u8]> = Vec::new();
    let mut earlier_users: Vec<i32> = Vec::new();
    for (index, user) in (1..).zip(users) {
        for hash in &user.earlier_hashes {
            earlier_hashes.push(hash.as_bytes().as_slice());
            earlier_users.push(index);
        }
    }
    let mut tx = pool.begin().await?;
    let erased = sqlx::query_as(
        "SELECT user_hash, logins, vault_entries, quarantined, domain_rows, newly_suppressed \
         FROM etl.forget($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(ids)
    .bind(&hashes)
    .bind(user_key.version())
    .bind(user_key.key_check().as_slice())
    .bind(reason)
    .bind(ticket)
    .bind(&earlier_hashes)
    .bind(earlier_users)
    .fetch_all(&mut *tx)
    .await?;
    if dry_run {
        tx.rollback().await?;
    } else {
        tx.commit().await?;
    }
    Ok(erased)
}

/// One row of a subject's `user_logins`, as analysts see it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SubjectRow {
    pub message_id: Option<String>,
    pub user_id: Option<String>,
    pub device_type: Option<String>,
    pub masked_ip: Option<String>,
    pub masked_device_id: Option<String>,
    pub locale: Option<String>,
    pub app_version: Option<i32>,
    pub app_version_text: Option<String>,
    pub create_date: Option<NaiveDate>,
}

pub async fn subject_rows(
    pool: &PgPool,
    user_id: &str,
    why: &Justification,
) -> Result<SubjectAccess, sqlx::Error> {
    // Committed on its own (the pool runs each statement in a transaction of its own) before the
    // rows are read: the record stands whatever happens to the read.
    let (access_id, refusal): (i64, Option<String>) =
        sqlx::query_as("SELECT access_id, refusal FROM recovery.subject_access($1, $2, $3)")
            .bind(user_id)
            .bind(why.reason())
            .bind(why.ticket())
            .fetch_one(pool)
            .await?;
    if let Some(refusal) = refusal {
        return Ok(SubjectAccess::Refused(refusal));
    }
    let rows = sqlx::query_as(
        "SELECT message_id, user_id, device_type, masked_ip, masked_device_id, locale, \
         app_version, app_version_text, create_date FROM recovery.subject_rows($1, $2)",
    )
    .bind(access_id)
    .bind(user_id)
    .fetch_all(pool)
    .await?;
    Ok(SubjectAccess::Rows(rows))
}

/// What a subject access came to.
pub enum SubjectAccess {
    Rows(Vec<SubjectRow>),
    /// Refused by the recovery policy (on record): why.
    Refused(String),
}

/// The retention settings, in days; `None` keeps forever, shown as `0` as `retention set` takes it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Retention {
    #[serde(serialize_with = "days_or_forever")]
    pub logins_days: Option<i32>,
    #[serde(serialize_with = "days_or_forever")]
    pub quarantine_days: Option<i32>,
    #[serde(serialize_with = "days_or_forever")]
    pub claims_days: Option<i32>,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

fn days_or_forever<S: serde::Serializer>(
    days: &Option<i32>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_i32(days.unwrap_or(0))
}

const RETENTION_COLUMNS: &str = "logins_days, quarantine_days, claims_days, updated_at, updated_by";

pub async fn retention(pool: &PgPool) -> Result<Retention, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {RETENTION_COLUMNS} FROM etl.retention WHERE singleton"
    ))
    .fetch_one(pool)
    .await
}

/// A setting to change: `Some(None)` keeps forever, `None` leaves it as it is.
pub type DaysSetting = Option<Option<i32>>;

pub async fn set_retention(
    pool: &PgPool,
    logins: DaysSetting,
    quarantine: DaysSetting,
    claims: DaysSetting,
) -> Result<Retention, sqlx::Error> {
    sqlx::query_as(&format!(
        "UPDATE etl.retention r SET \
             logins_days = CASE WHEN $1 THEN $2 ELSE r.logins_days END, \
             quarantine_days = CASE WHEN $3 THEN $4 ELSE r.quarantine_days END, \
             claims_days = CASE WHEN $5 THEN $6 ELSE r.claims_days END, \
             updated_at = now(), updated_by = session_user \
         WHERE singleton RETURNING {RETENTION_COLUMNS}"
    ))
    .bind(logins.is_some())
    .bind(logins.flatten())
    .bind(quarantine.is_some())
    .bind(quarantine.flatten())
    .bind(claims.is_some())
    .bind(claims.flatten())
    .fetch_one(pool)
    .await
}

/// What retention deletes, each a table and the condition its rows expire by (`$1` the cutoff).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiring {
    /// `user_logins` by `create_date` (a date: rows of days before the cutoff's day).
    Logins,
    /// `etl.quarantine` by `received_at`.
    Quarantine,
    /// `etl.processed_messages` by `processed_at`.
    MessageClaims,
    /// `etl.file_batches` by `committed_at`.
    FileClaims,
}

impl Expiring {
    /// The summary's key.
    pub const fn name(self) -> &'static str {
        match self {
            Expiring::Logins => "user_logins",
            Expiring::Quarantine => "quarantine",
            Expiring::MessageClaims => "processed_messages",
            Expiring::FileClaims => "file_batches",
        }
    }

    fn table_and_condition(self) -> (&'static str, &'static str) {
        match self {
            Expiring::Logins => ("public.user_logins", LOGINS_EXPIRED),
            Expiring::Quarantine => ("etl.quarantine", "received_at < $1"),
            Expiring::MessageClaims => ("etl.processed_messages", "processed_at < $1"),
            Expiring::FileClaims => ("etl.file_batches", "committed_at < $1"),
        }
    }
}

/// Rows of `user_logins`, and of the domains' tables, that expired.
const LOGINS_EXPIRED: &str = "create_date < $1::date";

pub async fn count_expired(
    pool: &PgPool,
    what: Expiring,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    let (table, condition) = what.table_and_condition();
    count_where(pool, table, condition, cutoff).await
}

/// [`count_expired`] of a domain's table: its rows expire with `user_logins`'.
pub async fn count_expired_in_domain(
    pool: &PgPool,
    domain: &str,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    count_where(pool, &super::domains::table(domain), LOGINS_EXPIRED, cutoff).await
}

/// [`delete_expired_chunk`] of a domain's table.
pub async fn delete_expired_in_domain(
    pool: &PgPool,
    domain: &str,
    cutoff: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    delete_chunk_where(
        pool,
        &super::domains::table(domain),
        LOGINS_EXPIRED,
        cutoff,
        chunk,
    )
    .await
}

async fn count_where(
    pool: &PgPool,
    table: &str,
    condition: &str,
    cutoff: DateTime<Utc>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(&format!("SELECT count(*) FROM {table} WHERE {condition}"))
        .bind(cutoff)
        .fetch_one(pool)
        .await
}

/// Deletes up to `chunk` expired rows, found by the index on the expiry column, in a transaction
/// of their own; returns how many.
pub async fn delete_expired_chunk(
    pool: &PgPool,
    what: Expiring,
    cutoff: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let (table, condition) = what.table_and_condition();
    delete_chunk_where(pool, table, condition, cutoff, chunk).await
}

async fn delete_chunk_where(
    pool: &PgPool,
    table: &str,
    condition: &str,
    cutoff: DateTime<Utc>,
    chunk: i64,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "DELETE FROM {table} WHERE ctid = ANY(ARRAY(\
             SELECT ctid FROM {table} WHERE {condition} LIMIT $2))"
    ))
    .bind(cutoff)
    .bind(chunk)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// The advisory lock key of `etl retention apply`: one pass at a time per database. Two sweeps at
/// once could confirm each other's marks without a raise of the vault epoch between.
const RETENTION_LOCK: i64 = 0x6574_6c5f_7265_746e;

/// Takes the retention pass's lock on a connection of its own, held until it is dropped; waits
/// for a pass already running (as a scheduler expects: the later run then finds little to do).
/// Returns the connection and whether it had to wait.
pub async fn lock_retention_pass(pool: &PgPool) -> Result<(PgConnection, bool), sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(RETENTION_LOCK)
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(RETENTION_LOCK)
            .execute(&mut conn)
            .await?;
    }
    Ok((conn, !locked))
}

/// Vault entries younger than this are not swept: they may belong to a batch in flight, whose
/// rows are not committed yet. (Sweeping them would be safe, only wasteful: that batch would
/// find the epoch raised and insert them again.)
const SWEEP_GRACE: &str = "1 hour";

/// The fields of a vault entry and the `user_logins` columns holding their masks.
const MASKED_COLUMNS: [(&str, &str); 2] = [("ip", "masked_ip"), ("device_id", "masked_device_id")];

/// Settings of the sweep's scans: enough memory for an anti-join's hash to stay in memory at a
/// few million entries, and no nested loop, which the planner picks when the statistics of
/// `sweep_state` predate the marks (one scan of `user_logins` per entry).
const SCAN_SETTINGS: [&str; 2] = [
    "SET LOCAL work_mem = '64MB'",
    "SET LOCAL enable_nestloop = off",
];

/// The sweep's condition on a vault entry `e` of field `$1`: no row uses its mask, as the
/// statement's snapshot sees `user_logins` (one hash anti-join: there is no index on the masks).
/// Only entries of the active mask key version: those of a pending one are used by no row until
/// the re-mask switch, and the re-mask deletes the old ones itself.
fn unused_condition(column: &str, rows_kept: &str) -> String {
    format!(
        "e.field = $1 AND e.first_seen < now() - interval '{SWEEP_GRACE}' \
         AND e.mask_key_version = (SELECT keyring.active_mask_key_version()) \
         AND NOT EXISTS (SELECT 1 FROM public.user_logins u \
                         WHERE u.{column} = encode(e.mask, 'hex') {rows_kept})"
    )
}

/// A state of the sweep, as SQL conditions and values.
#[derive(Clone, Copy)]
enum State {
    None,
    Released,
    Unused,
}

impl State {
    const fn is(self) -> &'static str {
        match self {
            Self::None => "e.sweep_state IS NULL",
            Self::Released => "e.sweep_state = 'released'",
            Self::Unused => "e.sweep_state = 'unused'",
        }
    }

    const fn value(self) -> &'static str {
        match self {
            Self::None => "NULL",
            Self::Released => "'released'",
            Self::Unused => "'unused'",
        }
    }
}

/// Moves these entries of `field` from state `from` to `to`; an entry whose state changed since
/// it was read (ingest reset it) stays as it is. Found by mask (`mask = ANY`, an index condition
/// of the primary key and of the partial index alike). Returns how many moved.
async fn mark(
    pool: &PgPool,
    field: &str,
    masks: &[Vec<u8>],
    from: State,
    to: State,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(&format!(
        "UPDATE vault.entries e SET sweep_state = {} \
         WHERE e.field = $1 AND e.mask = ANY($2) AND {}",
        to.value(),
        from.is()
    ))
    .bind(field)
    .bind(masks)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Reads the masks of `field` that `select` (`$1`: the field) finds, in one snapshot on a
/// connection of its own, and hands them to `apply` `chunk` at a time, awaiting `after_chunk`
/// with the time the chunk started (its read included) and what `apply` returned. A read holds
/// no row lock, so ingest never waits for the scan, only for a chunk. Returns the sum of what
/// `apply` returns.
async fn in_chunks(
    pool: &PgPool,
    select: &str,
    field: &str,
    chunk: usize,
    after_chunk: &mut impl AsyncFnMut(Instant, u64),
    mut apply: impl AsyncFnMut(&[Vec<u8>]) -> Result<u64, sqlx::Error>,
) -> Result<u64, sqlx::Error> {
    let mut reader = pool.begin().await?;
    for setting in SCAN_SETTINGS {
        sqlx::query(setting).execute(&mut *reader).await?;
    }
    let mut found = sqlx::query_scalar::<_, Vec<u8>>(select)
        .bind(field)
        .fetch(&mut *reader);
    let mut done = 0;
    let mut masks = Vec::with_capacity(chunk);
    let mut started = Instant::now();
    while let Some(mask) = found.try_next().await? {
        masks.push(mask);
        if masks.len() == chunk {
            let applied = apply(&masks).await?;
            done += applied;
            masks.clear();
            // While this waits, the scan waits too, for its reader.
            after_chunk(started, applied).await;
            started = Instant::now();
        }
    }
    drop(found);
    if !masks.is_empty() {
        let applied = apply(&masks).await?;
        done += applied;
        after_chunk(started, applied).await;
    }
    reader.commit().await?;
    Ok(done)
}

/// One look of the sweep: the entries in state `from` that no row uses move to `to`. Returns how
/// many moved.
async fn look(
    pool: &PgPool,
    from: State,
    to: State,
    chunk: usize,
    after_chunk: &mut impl AsyncFnMut(Instant, u64),
) -> Result<u64, sqlx::Error> {
    let mut moved = 0;
    for (field, column) in MASKED_COLUMNS {
        let select = format!(
            "SELECT e.mask FROM vault.entries e WHERE {} AND {}",
            from.is(),
            unused_condition(column, "")
        );
        moved += in_chunks(pool, &select, field, chunk, after_chunk, async |masks| {
            mark(pool, field, masks, from, to).await
        })
        .await?;
    }
    Ok(moved)
}

/// The entries of a field in a state.
fn in_state(state: State) -> String {
    format!(
        "SELECT e.mask FROM vault.entries e WHERE {} AND e.field = $1",
        state.is()
    )
}

/// The first look of a vault sweep (migration `vault_sweep_states`): the entries no row uses
/// become `released`, and then the vault epoch is raised, so that every ingest process forgets
/// what it knew of the vault and tells the database again of each entry it uses
/// (`etl.keep_vault_entries`). The raise also covers marks a pass cut short left. Returns how
/// many entries were released.
pub async fn release_unused_entries(
    pool: &PgPool,
    chunk: usize,
    mut after_chunk: impl AsyncFnMut(Instant, u64),
) -> Result<u64, sqlx::Error> {
    let released = look(pool, State::None, State::Released, chunk, &mut after_chunk).await?;
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT etl.lock_vault_epoch()")
        .execute(&mut *tx)
        .await?;
    sqlx::query("SELECT etl.raise_vault_epoch()")
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(released)
}

/// The second look, after the raise: released entries that still no row uses become `unused`,
/// the others go back to no state (so ingest's resets find nothing to do). A row committed after
/// this look's snapshot belongs to a batch prepared after the raise, which reset its entries'
/// state before the row could commit. Returns how many entries are unused.
pub async fn confirm_unused_entries(
    pool: &PgPool,
    chunk: usize,
    mut after_chunk: impl AsyncFnMut(Instant, u64),
) -> Result<u64, sqlx::Error> {
    let unused = look(
        pool,
        State::Released,
        State::Unused,
        chunk,
        &mut after_chunk,
    )
    .await?;
    for (field, _) in MASKED_COLUMNS {
        let released = in_state(State::Released);
        in_chunks(
            pool,
            &released,
            field,
            chunk,
            &mut after_chunk,
            async |masks| mark(pool, field, masks, State::Released, State::None).await,
        )
        .await?;
    }
    Ok(unused)
}

/// Deletes the unused entries, `chunk` at a time, each chunk holding the vault epoch exclusively
/// and raising it if any went (a batch in flight that meant to use one prepares again and
/// inserts it anew); `after_chunk` is awaited after each with the time it started and how many
/// went. Returns how many went.
pub async fn delete_unused_entries(
    pool: &PgPool,
    chunk: usize,
    mut after_chunk: impl AsyncFnMut(Instant, u64),
) -> Result<u64, sqlx::Error> {
    let mut gone = 0;
    for (field, _) in MASKED_COLUMNS {
        let unused = in_state(State::Unused);
        gone += in_chunks(
            pool,
            &unused,
            field,
            chunk,
            &mut after_chunk,
            async |masks| {
                // A chunk that waited its lock_timeout for ingest's commits changed nothing: again.
                (|| delete_unused_chunk(pool, field, masks))
                    .retry(crate::pipeline::backoff())
                    .when(super::is_transient)
                    .await
            },
        )
        .await?;
    }
    Ok(gone)
}

async fn delete_unused_chunk(
    pool: &PgPool,
    field: &str,
    masks: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    let mut tx: Transaction<'_, Postgres> = pool.begin().await?;
    sqlx::query("SELECT etl.lock_vault_epoch()")
        .execute(&mut *tx)
        .await?;
    // The state is checked again on the row: an entry ingest kept meanwhile stays.
    let gone = sqlx::query(&format!(
        "DELETE FROM vault.entries e WHERE e.field = $1 AND e.mask = ANY($2) AND {}",
        State::Unused.is()
    ))
    .bind(field)
    .bind(masks)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    if gone > 0 {
        sqlx::query("SELECT etl.raise_vault_epoch()")
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    Ok(gone)
}

/// A dry run's count: the entries no row would use once the rows created before
/// `rows_expire_before` were deleted, as the real pass deletes them first.
pub async fn count_unused_entries(
    pool: &PgPool,
    rows_expire_before: DateTime<Utc>,
) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    for setting in SCAN_SETTINGS {
        sqlx::query(setting).execute(&mut *tx).await?;
    }
    let mut unused = 0;
    for (field, column) in MASKED_COLUMNS {
        // Cast as the deletion casts its bound: in the session's time zone.
        let count: i64 = sqlx::query_scalar(&format!(
            "SELECT count(*) FROM vault.entries e WHERE {}",
            unused_condition(
                column,
                "AND (u.create_date IS NULL OR u.create_date >= $2::timestamptz::date)"
            )
        ))
        .bind(field)
        .bind(rows_expire_before)
        .fetch_one(&mut *tx)
        .await?;
        unused += u64::try_from(count).unwrap_or(0);
    }
    tx.rollback().await?;
    Ok(unused)
}

/// Appends a row to the audit log for a job that names no person (`retention`,
/// `quarantine_purge`, `quarantine_replay`, `network_fill`, `remask`, `domain_creation`): what
/// was done, never to whom.
pub async fn record(
    conn: impl sqlx::PgExecutor<'_>,
    kind: &str,
    (reason, ticket): (Option<&str>, Option<&str>),
    outcome: &str,
    detail: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO recovery.audit_log (kind, reason, ticket, outcome, detail) \
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(kind)
    .bind(reason)
    .bind(ticket)
    .bind(outcome)
    .bind(detail)
    .execute(conn)
    .await
    .map(|_| ())
}

/// A quarantined message with what opens it.
#[derive(Clone, sqlx::FromRow)]
pub struct Quarantined {
    pub message_id: String,
    pub reason: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub receive_count: Option<i32>,
    pub body_ciphertext: Vec<u8>,
    /// `quarantine` (sealed to the key pair) or `vault` (rows sealed before it existed).
    pub key_purpose: String,
    pub key_version: i32,
}

/// The columns of a [`Quarantined`], selected from `etl.quarantine`.
pub const QUARANTINED_COLUMNS: &str = "message_id, reason, sent_at, receive_count, body_ciphertext, \
     CASE WHEN quarantine_key_version IS NOT NULL THEN 'quarantine' ELSE 'vault' END AS key_purpose, \
     coalesce(quarantine_key_version, vault_key_version) AS key_version";

/// Up to `limit` quarantined messages after `after` (by id), of one reason or id if given.
pub async fn quarantined_page(
    pool: &PgPool,
    reason: Option<&str>,
    message_id: Option<&str>,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Quarantined>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {QUARANTINED_COLUMNS} FROM etl.quarantine \
             WHERE ($1::text IS NULL OR reason = $1) AND ($2::text IS NULL OR message_id = $2) \
               AND ($3::text IS NULL OR message_id > $3) \
             ORDER BY message_id LIMIT $4"
    ))
    .bind(reason)
    .bind(message_id)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}
