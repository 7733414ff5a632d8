//! `etl domains add NAME --backfill`: a new domain that also holds every row `user_logins` holds
//! already, so that counting and joining in it agree with `user_logins` from the first day.
//!
//! A domain row has no link to its `user_logins` row, so the rows of before are written once, by
//! the transaction that creates the domain: it holds the vault epoch exclusively, so no ingest
//! batch commits between the rows it reads and the domain's creation, and every batch after it
//! writes the domain itself. The slow part, opening every vault value and reading every user id
//! into session maps, runs before that transaction, beside a running ingest; inside it, only what
//! was added meanwhile is mapped, then one `INSERT ... SELECT` writes the rows, and only then are
//! the indexes built and the creation recorded (the audit chain's lock is held for a moment, not
//! for the fill). Ingest waits for that transaction (its messages stay on the queue). No
//! retention pass runs meanwhile: it deletes `user_logins`' rows apart from the domain's.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};

use super::Values;
use crate::adapters::kms::{Kms, WrappedKey};
use crate::adapters::postgres::rekey::SealedEntry;
use crate::adapters::postgres::{domains, lifecycle, DatabaseError};
use crate::crypto::{DomainMasker, UserKeys};
use crate::keys::{load_user_keys, lock_key_job, VaultKeys};

/// Values or user ids mapped per statement.
const CHUNK: usize = 5000;

/// What filling the new domain did.
#[derive(Debug, Default, Serialize)]
pub struct History {
    /// Vault entries opened to map their values.
    pub vault_entries: u64,
    /// Distinct user ids of `user_logins` mapped.
    pub user_ids: u64,
    /// `user_logins` rows written into the domain.
    pub rows: u64,
    /// How long the creating transaction held the vault epoch (ingest waited).
    pub held_seconds: f64,
}

/// Creates the domain with its rows of before; returns its reader role and the figures. On
/// record: a row before any value is opened, the creation, and the figures (or `aborted`).
pub async fn add(
    pool: &PgPool,
    kms: &Kms,
    name: &str,
    wrapped: &WrappedKey,
) -> anyhow::Result<(String, History)> {
    // One key job at a time: no re-mask moves the masks the maps are keyed by meanwhile.
    let _lock = lock_key_job(pool).await?;
    let (_retention, waited) = lifecycle::lock_retention_pass(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    if waited {
        tracing::info!("waited for a retention pass to end");
    }
    let key = kms
        .unwrap_domain_key(&wrapped.kms_key_arn, name, 1, &wrapped.blob)
        .await
        .context("unwrapping the domain's new key")?;
    let mut job = Job {
        pool,
        name,
        masker: DomainMasker::new(name.to_owned(), &key),
        users: load_user_keys(pool, kms).await?,
        keys: VaultKeys::new(pool, kms).await?,
    };
    job.keys.load(job.keys.versions()).await?;
    let mut history = History::default();
    let figures = |history: &History| {
        format!(
            "domain={name} backfill vault_entries={} user_ids={} rows={}",
            history.vault_entries, history.user_ids, history.rows
        )
    };
    lifecycle::record(
        pool,
        "domain_creation",
        (None, None),
        "opening",
        &figures(&history),
    )
    .await
    .map_err(DatabaseError::on(pool))?;
    let created = job.run(wrapped, &mut history).await;
    if created.is_err() {
        // What was opened before the failure, on record too; the error is the one to report.
        let _ = lifecycle::record(
            pool,
            "domain_creation",
            (None, None),
            "aborted",
            &figures(&history),
        )
        .await;
    }
    Ok((created?, history))
}

struct Job<'a> {
    pool: &'a PgPool,
    name: &'a str,
    masker: DomainMasker,
    /// The newest of them makes the domain rows' erasure hashes, as ingest's does.
    users: UserKeys,
    keys: VaultKeys,
}

impl Job<'_> {
    async fn run(&self, wrapped: &WrappedKey, history: &mut History) -> anyhow::Result<String> {
        let pool = self.pool;
        let database = |err| DatabaseError::on(pool)(err);
        let mut maps = pool.acquire().await.map_err(database)?;
        domains::create_history_maps(&mut maps)
            .await
            .map_err(database)?;
        super::each_value(pool, &mut maps, CHUNK, async |maps, values| {
            match values {
                Values::Vault(entries) => {
                    history.vault_entries += self.map_values(maps, entries).await?
                }
                Values::Users(ids) => history.user_ids += self.map_users(maps, ids).await?,
            }
            Ok(())
        })
        .await?;
        domains::analyze_history_maps(&mut maps)
            .await
            .map_err(database)?;

        // The creating transaction waits at most the epoch's lock_timeout for ingest's commits;
        // then it rolled back, the maps are intact, and it is tried again.
        crate::commands::again_after_lock_waits(async || {
            self.create(&mut maps, wrapped, history).await
        })
        .await
    }

    /// The creating transaction: the epoch, the domain, the values and users first seen
    /// meanwhile, every row, the indexes, the record. Counts into `history` once it committed.
    async fn create(
        &self,
        maps: &mut PgConnection,
        wrapped: &WrappedKey,
        history: &mut History,
    ) -> anyhow::Result<String> {
        let held = Instant::now();
        let mut tx = maps.begin().await?;
        sqlx::query("SELECT etl.lock_vault_epoch()")
            .execute(&mut *tx)
            .await
            .context("taking the vault epoch")?;
        let role = domains::create(&mut tx, self.name, &wrapped.kms_key_arn, &wrapped.blob)
            .await
            .map_err(|err| super::refused_add(self.name, self.pool, err))?;
        // Values and users first seen while the maps were built: few, found in one scan each.
        let added = domains::unmapped_history_entries(&mut tx)
            .await
            .context("reading vault entries added meanwhile")?;
        for chunk in added.chunks(CHUNK) {
            self.map_values(&mut tx, chunk).await?;
        }
        let seen = domains::unmapped_history_users(&mut tx)
            .await
            .context("reading user ids seen meanwhile")?;
        for chunk in seen.chunks(CHUNK) {
            self.map_users(&mut tx, chunk).await?;
        }
        let (rows, written) =
            domains::fill_history(&mut tx, self.name, 1, self.users.newest().version())
                .await
                .context("writing the domain's rows of before")?;
        anyhow::ensure!(
            written == rows,
            "{} of {rows} user_logins rows have a value in neither the vault nor user_logins; \
             nothing was created",
            rows - written
        );
        let mut created = History {
            vault_entries: history.vault_entries + added.len() as u64,
            user_ids: history.user_ids + seen.len() as u64,
            rows: u64::try_from(written).unwrap_or(0),
            held_seconds: 0.0,
        };
        domains::index_and_record(&mut tx, self.name, &wrapped.kms_key_arn)
            .await
            .context("indexing the domain")?;
        lifecycle::record(
            &mut *tx,
            "domain_creation",
            (None, None),
            "backfilled",
            &format!(
                "domain={} backfill vault_entries={} user_ids={} rows={}",
                self.name, created.vault_entries, created.user_ids, created.rows
            ),
        )
        .await?;
        sqlx::query("SELECT etl.raise_vault_epoch()")
            .execute(&mut *tx)
            .await?;
        tx.commit().await.context("committing the domain")?;
        created.held_seconds = held.elapsed().as_secs_f64();
        *history = created;
        Ok(role)
    }

    /// Opens `entries` and maps each value's `user_logins` mask to its domain mask.
    async fn map_values(
        &self,
        conn: &mut PgConnection,
        entries: &[SealedEntry],
    ) -> anyhow::Result<u64> {
        let mut fields = Vec::with_capacity(entries.len());
        let mut main = Vec::with_capacity(entries.len());
        let mut masked = Vec::with_capacity(entries.len());
        for entry in entries {
            let (field, value) = self.keys.open(entry)?;
            fields.push(field.as_str());
            main.push(entry.mask.as_slice());
            masked.push(self.masker.digest(field, &value).hex().as_str().to_owned());
        }
        domains::add_history_values(conn, &fields, &main, &masked)
            .await
            .map_err(DatabaseError::on(self.pool))
            .context("mapping vault values")?;
        Ok(entries.len() as u64)
    }

    /// Maps each user id to its domain mask and erasure hash.
    async fn map_users(&self, conn: &mut PgConnection, user_ids: &[String]) -> anyhow::Result<u64> {
        let masked: Vec<String> = user_ids
            .iter()
            .map(|id| self.masker.user_mask(id).as_str().to_owned())
            .collect();
        let hashes: Vec<Vec<u8>> = user_ids
            .iter()
            .map(|id| self.users.newest().user_hash(id).as_bytes().to_vec())
            .collect();
        domains::add_history_users(conn, user_ids, &masked, &hashes)
            .await
            .map_err(DatabaseError::on(self.pool))
            .context("mapping user ids")?;
        Ok(user_ids.len() as u64)
    }
}
