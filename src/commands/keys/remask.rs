//! `etl keys remask`: every mask moves to the pending mask key version, which then becomes the
//! active one. Analysts never see one value under two masks:
//!
//! 1. **Prepare** (beside a running ingest, resumable): for each vault entry under the active
//!    version, its value is opened, masked under the pending version and sealed under the newest
//!    vault key; the new entry and the mapping old mask → new mask (`vault.remask_map`) are
//!    written in one statement per chunk. `user_logins` is not touched: analysts still see only
//!    old masks, and recoveries of them still open.
//! 2. **Switch** (one transaction, holding the vault epoch exclusively, so no ingest batch
//!    commits meanwhile): entries added since phase 1 are mapped; new entries of values erased
//!    or swept since are dropped; every `user_logins` row takes its new masks in one `UPDATE`; the pending version becomes
//!    active and the epoch is raised. Readers see all old masks before the commit and all new
//!    ones after it. Running ingest processes find the epoch raised, reload their keys and
//!    prepare their batch again under the new version.
//! 3. **Clean up** (resumable): the old entries and the mapping are deleted in chunks. The
//!    mapping links old masks to new ones, so it must not outlive the re-mask.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sqlx::{Connection, PgConnection, PgPool};
use tracing::info;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use super::KeyJobArgs;
use crate::adapters::aws;
use crate::adapters::postgres::rekey::{self, SealedEntry, VaultCursor};
use crate::adapters::postgres::{keyring, lifecycle, DatabaseError};
use crate::commands::{audit_pool_of, progress, OutputFormat};
use crate::crypto::{KeyPurpose, Masker};
use crate::keys::{lock_key_job, unwrap_stored, VaultKeys};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Default, Serialize)]
struct Remasked {
    from_mask_key_version: i32,
    to_mask_key_version: i32,
    vault_entries: u64,
    user_logins: u64,
    /// New entries of values erased or swept while the re-mask ran, dropped at the switch.
    dropped_entries: u64,
    old_entries_deleted: u64,
    switch_seconds: f64,
    elapsed_seconds: f64,
}

pub async fn run(args: &KeyJobArgs) -> anyhow::Result<()> {
    let (database, batch, format) = (&args.database, args.batch, args.format);
    // The job lock, the switch transaction, and the rest.
    let pool = audit_pool_of(database, 3).await?;
    let lock = lock_key_job(&pool).await?;
    let started = Instant::now();
    let active = keyring::active_mask_version(&pool)
        .await
        .map_err(DatabaseError::on(&pool))?
        .context("no mask key exists yet: run `etl keys init` first")?;
    let newest = keyring::latest(&pool, KeyPurpose::Mask)
        .await
        .map_err(DatabaseError::on(&pool))?
        .context("no mask key exists yet: run `etl keys init` first")?;
    let mut report = Remasked {
        from_mask_key_version: active,
        to_mask_key_version: newest.version,
        ..Remasked::default()
    };
    if newest.version > active {
        let kms = args
            .kms
            .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
            .await?;
        let masker = Masker::new(&unwrap_stored(&kms, KeyPurpose::Mask, &newest).await?);
        let mut keys = VaultKeys::new(&pool, &kms).await?;
        let target = keys
            .newest()
            .context("no vault key exists yet: run `etl keys init` first")?;
        keys.load(keys.versions()).await?;
        let job = Job {
            from: active,
            masker: &masker,
            keys: &keys,
            target,
            batch,
        };
        let epoch: i64 = sqlx::query_scalar("SELECT etl.vault_epoch()")
            .fetch_one(&pool)
            .await
            .map_err(DatabaseError::on(&pool))?;
        // A resumed run cannot know what was deleted since the earlier one mapped it.
        let resumed = rekey::mappings_left(&pool)
            .await
            .map_err(DatabaseError::on(&pool))?
            > 0;
        let prepared_at = (!resumed).then_some(epoch);
        report.vault_entries = job.prepare(&pool).await?;
        let switch_started = Instant::now();
        // The switch waits at most the epoch's lock_timeout for ingest's commits; a timeout (or a
        // lost connection) changed nothing, its transaction rolled back: it is tried again.
        let mut waits = backon::BackoffBuilder::build(crate::pipeline::backoff());
        let switched = loop {
            match job.switch(&pool, prepared_at).await {
                Err(err) if crate::commands::is_transient(&err) => match waits.next() {
                    Some(delay) => tokio::time::sleep(delay).await,
                    None => break Err(err),
                },
                other => break other,
            }
        }?;
        report.switch_seconds = switch_started.elapsed().as_secs_f64();
        report.vault_entries += switched.vault_entries;
        report.user_logins = switched.user_logins;
        report.dropped_entries = switched.dropped_entries;
        info!(
            to = newest.version,
            user_logins = switched.user_logins,
            switch_ms = (report.switch_seconds * 1000.0) as u64,
            "re-mask switched; running ingest processes reload their keys at their next commit"
        );
    } else if rekey::mappings_left(&pool)
        .await
        .map_err(DatabaseError::on(&pool))?
        == 0
    {
        report.from_mask_key_version = active;
        let left = rekey::delete_other_mask_versions(&pool, active)
            .await
            .map_err(DatabaseError::on(&pool))?;
        if left == 0 {
            outln!("nothing to re-mask: mask key version {active} is active and no version is pending (`etl keys rotate --purpose mask` creates one)")?;
            return Ok(());
        }
        report.old_entries_deleted = left;
    }
    report.old_entries_deleted += clean_up(&pool, newest.version.max(active), batch).await?;
    drop(lock);
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&report)?)?,
        OutputFormat::Text => outln!(
            "re-masked to mask key version {}: {} vault entries, {} user_logins rows; the switch held ingest for {:.1} s; {} old vault entries deleted; {:.1} s in all",
            report.to_mask_key_version,
            report.vault_entries,
            report.user_logins,
            report.switch_seconds,
            report.old_entries_deleted,
            report.elapsed_seconds
        )?,
    }
    Ok(())
}

/// New masks (32-byte digests) and their ciphertexts, in the order of the entries.
type Remasks = (Vec<[u8; 32]>, Vec<Vec<u8>>);

struct Job<'a> {
    from: i32,
    masker: &'a Masker,
    keys: &'a VaultKeys,
    /// The vault key version new entries are sealed under.
    target: i32,
    batch: i64,
}

#[derive(Default)]
struct Switched {
    vault_entries: u64,
    user_logins: u64,
    dropped_entries: u64,
}

impl Job<'_> {
    fn to(&self) -> i32 {
        self.masker.version()
    }

    /// Phase 1: every entry of the active version gets its entry under the pending version, and
    /// its mapping; each chunk in a transaction of its own.
    async fn prepare(&self, pool: &PgPool) -> anyhow::Result<u64> {
        let total = rekey::count_to_remask(pool, self.from, self.to())
            .await
            .map_err(DatabaseError::on(pool))?;
        let span = progress("vault entries", u64::try_from(total).unwrap_or(0));
        let _shown = span.enter();
        // One connection reads the next chunk while the other stores the current one.
        let mut reader = pool.acquire().await.map_err(DatabaseError::on(pool))?;
        let mut writer = pool.acquire().await.map_err(DatabaseError::on(pool))?;
        let start = VaultCursor::default();
        let mut entries =
            rekey::entries_to_remask(&mut reader, self.from, self.to(), &start, self.batch)
                .await
                .context("reading vault entries to re-mask")?;
        let mut done = 0;
        while let Some(next) = VaultCursor::after(&entries) {
            let (masks, ciphertexts) = self.remasked(&entries)?;
            let store = rekey::store_remasked(
                &mut writer,
                self.to(),
                self.target,
                &entries,
                &masks,
                &ciphertexts,
            );
            let read =
                rekey::entries_to_remask(&mut reader, self.from, self.to(), &next, self.batch);
            let (_, following) =
                tokio::try_join!(store, read).context("re-masking vault entries")?;
            done += entries.len() as u64;
            span.pb_inc(entries.len() as u64);
            entries = following;
        }
        Ok(done)
    }

    /// Each entry's mask under the pending version, and its new ciphertext.
    fn remasked(&self, entries: &[SealedEntry]) -> anyhow::Result<Remasks> {
        let sealer = self.keys.get(self.target)?;
        let mut masks = Vec::with_capacity(entries.len());
        let mut ciphertexts = Vec::with_capacity(entries.len());
        for entry in entries {
            let (field, value) = self.keys.open(entry)?;
            let digest = self.masker.digest(field, &value);
            ciphertexts.push(sealer.seal_value(field, digest.hex().as_str(), &value)?);
            masks.push(*digest.as_bytes());
        }
        Ok((masks, ciphertexts))
    }

    /// Maps `entries` to the pending version and stores their new entries.
    async fn remask(&self, conn: &mut PgConnection, entries: &[SealedEntry]) -> anyhow::Result<()> {
        let (masks, ciphertexts) = self.remasked(entries)?;
        rekey::store_remasked(conn, self.to(), self.target, entries, &masks, &ciphertexts)
            .await
            .context("storing re-masked vault entries")?;
        Ok(())
    }

    /// Phase 2, in one transaction holding the vault epoch exclusively.
    /// `prepared_at`: the vault epoch when phase 1 began with an empty mapping. Every deletion of
    /// vault entries raises it, so when it has not moved no mapped value lost its old entry.
    async fn switch(&self, pool: &PgPool, prepared_at: Option<i64>) -> anyhow::Result<Switched> {
        let mut conn = pool.acquire().await.map_err(DatabaseError::on(pool))?;
        let mut tx = conn.begin().await?;
        let epoch: i64 = sqlx::query_scalar("SELECT etl.lock_vault_epoch()")
            .fetch_one(&mut *tx)
            .await
            .context("taking the vault epoch")?;
        let mut switched = Switched::default();
        // Entries added behind phase 1's cursor: few, found in one scan.
        let added = rekey::unmapped_entries(&mut tx, self.from, self.to())
            .await
            .context("reading vault entries added during the re-mask")?;
        for chunk in added.chunks(usize::try_from(self.batch).unwrap_or(1)) {
            self.remask(&mut tx, chunk).await?;
            switched.vault_entries += chunk.len() as u64;
        }
        if prepared_at != Some(epoch) {
            switched.dropped_entries = rekey::drop_orphaned_remasks(&mut tx, self.to())
                .await
                .context("dropping entries of values deleted during the re-mask")?;
        }
        switched.user_logins = rekey::remask_logins(&mut tx, self.from, self.to())
            .await
            .context("re-masking user_logins")?;
        let left = rekey::logins_not_on(&mut tx, self.to()).await?;
        anyhow::ensure!(
            left == 0,
            "{left} user_logins rows have a mask with no vault entry to map; nothing was switched"
        );
        rekey::activate_mask_version(&mut tx, self.to()).await?;
        sqlx::query("SELECT etl.raise_vault_epoch()")
            .execute(&mut *tx)
            .await?;
        sqlx::query(
            "INSERT INTO recovery.audit_log (kind, outcome, detail) VALUES ('remask', 'switched', $1)",
        )
        .bind(format!(
            "from_mask_key_version={} to_mask_key_version={} user_logins={} vault_entries={}",
            self.from,
            self.to(),
            switched.user_logins,
            switched.vault_entries
        ))
        .execute(&mut *tx)
        .await?;
        tx.commit().await.context("committing the switch")?;
        Ok(switched)
    }
}

/// Phase 3: the old entries and the mapping go, in chunks; then anything left under another
/// mask key version.
async fn clean_up(pool: &PgPool, active: i32, batch: i64) -> anyhow::Result<u64> {
    let total = rekey::mappings_left(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    let span = progress("old vault entries", u64::try_from(total).unwrap_or(0));
    let _shown = span.enter();
    let mut done = 0;
    loop {
        let n = rekey::delete_remasked_chunk(pool, active, batch)
            .await
            .map_err(DatabaseError::on(pool))
            .context("deleting re-masked vault entries")?;
        done += n;
        span.pb_inc(n);
        if n == 0 {
            break;
        }
    }
    done += rekey::delete_other_mask_versions(pool, active)
        .await
        .map_err(DatabaseError::on(pool))?;
    lifecycle::record(
        pool,
        "remask",
        (None, None),
        "cleaned",
        &format!("mask_key_version={active} old_entries_deleted={done}"),
    )
    .await
    .context("recording the clean-up in the audit log")?;
    Ok(done)
}
