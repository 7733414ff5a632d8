//! `etl keys reseal`: every vault entry, and every quarantined body sealed under a vault key, is
//! re-encrypted under the newest vault key version, so older versions can be retired.
//!
//! Each chunk is read in key order after a cursor, opened with the key version it names, sealed
//! under the target and written back in one `UPDATE` of ciphertext and version together, in its
//! own transaction: a recovery at any moment finds a consistent pair, and a run stopped at any
//! point is resumed by running it again (what moved no longer matches). Before it starts, the
//! lowest version ingest may seal with is raised to the target, so no entry is added under an
//! older version behind the cursor; a pass that still finds some is followed by another.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use tracing::info;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use super::KeyJobArgs;
use crate::adapters::aws;
use crate::adapters::postgres::rekey::{self, VaultCursor};
use crate::adapters::postgres::{keyring, lifecycle, DatabaseError};
use crate::commands::{audit_pool_of, progress, OutputFormat};
use crate::crypto::KeyPurpose;
use crate::keys::{lock_key_job, VaultKeys};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// Passes before giving up on entries that keep appearing under older versions.
const MAX_PASSES: usize = 3;

#[derive(Debug, Default, Serialize)]
struct Resealed {
    vault_key_version: i32,
    vault_entries: u64,
    quarantine_rows: u64,
    passes: usize,
    elapsed_seconds: f64,
}

pub async fn run(args: &KeyJobArgs) -> anyhow::Result<()> {
    let (database, batch, format) = (&args.database, args.batch, args.format);
    // The job lock, and one connection reading while another writes.
    let pool = audit_pool_of(database, 3).await?;
    let _job = lock_key_job(&pool).await?;
    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    let mut keys = VaultKeys::new(&pool, &kms).await?;
    let target = keys
        .newest()
        .context("no vault key exists yet: run `etl keys init` first")?;
    // From now on nothing new is sealed under an older version.
    keyring::raise_min_version(&pool, KeyPurpose::Vault, target)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("raising the lowest vault key version ingest may seal with")?;
    keys.load(keys.versions()).await?;
    let started = Instant::now();
    let mut report = Resealed {
        vault_key_version: target,
        ..Resealed::default()
    };
    loop {
        let (entries, bodies) = rekey::count_to_reseal(&pool, target)
            .await
            .map_err(DatabaseError::on(&pool))
            .context("counting what to re-seal")?;
        if entries + bodies == 0 {
            break;
        }
        anyhow::ensure!(
            report.passes < MAX_PASSES,
            "{entries} vault entries and {bodies} quarantine rows are still sealed under older \
             versions after {MAX_PASSES} passes: is an ingest process sealing with an older key? \
             Run `etl keys reseal` again"
        );
        report.passes += 1;
        info!(pass = report.passes, entries, bodies, target, "re-sealing");
        report.vault_entries += reseal_entries(&pool, &keys, target, batch, entries).await?;
        report.quarantine_rows += reseal_bodies(&pool, &keys, target, batch, bodies).await?;
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    let figures = format!(
        "vault_key_version={target} vault_entries={} quarantine_rows={}",
        report.vault_entries, report.quarantine_rows
    );
    lifecycle::record(&pool, "reseal", (None, None), "resealed", &figures)
        .await
        .context("recording the re-seal in the audit log")?;
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&report)?)?,
        OutputFormat::Text => outln!(
            "re-sealed {} vault entries and {} quarantine rows under vault key version {target} in {:.1} s; older vault key versions can now be retired (`etl keys retire`)",
            report.vault_entries, report.quarantine_rows, report.elapsed_seconds
        )?,
    }
    Ok(())
}

async fn reseal_entries(
    pool: &sqlx::PgPool,
    keys: &VaultKeys,
    target: i32,
    batch: i64,
    total: i64,
) -> anyhow::Result<u64> {
    let span = progress("vault entries", u64::try_from(total).unwrap_or(0));
    let _shown = span.enter();
    let sealer = keys.get(target)?;
    let mut entries = rekey::entries_to_reseal(pool, target, &VaultCursor::default(), batch)
        .await
        .map_err(DatabaseError::on(pool))
        .context("reading vault entries to re-seal")?;
    let mut done = 0;
    while let Some(next) = VaultCursor::after(&entries) {
        let mut ciphertexts = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (field, value) = keys.open(entry)?;
            ciphertexts.push(sealer.seal_value(field, &hex::encode(&entry.mask), &value)?);
        }
        // The next chunk is read, on another connection, while this one is stored.
        let (stored, following) = tokio::try_join!(
            rekey::store_resealed(pool, target, &entries, &ciphertexts),
            rekey::entries_to_reseal(pool, target, &next, batch),
        )
        .map_err(DatabaseError::on(pool))
        .context("re-sealing vault entries")?;
        done += stored;
        span.pb_inc(entries.len() as u64);
        entries = following;
    }
    Ok(done)
}

async fn reseal_bodies(
    pool: &sqlx::PgPool,
    keys: &VaultKeys,
    target: i32,
    batch: i64,
    total: i64,
) -> anyhow::Result<u64> {
    if total == 0 {
        return Ok(0);
    }
    let span = progress("quarantined bodies", u64::try_from(total).unwrap_or(0));
    let _shown = span.enter();
    let sealer = keys.get(target)?;
    let mut after = String::new();
    let mut done = 0;
    loop {
        let bodies = rekey::bodies_to_reseal(pool, target, &after, batch)
            .await
            .map_err(DatabaseError::on(pool))
            .context("reading quarantined bodies to re-seal")?;
        let Some(last) = bodies.last() else {
            return Ok(done);
        };
        after = last.message_id.clone();
        let mut ciphertexts = Vec::with_capacity(bodies.len());
        for body in &bodies {
            let plain = keys
                .get(body.vault_key_version)?
                .open_body(&body.message_id, &body.body_ciphertext)
                .map_err(|source| {
                    anyhow::anyhow!(
                        "quarantined body {} does not open: {source}",
                        body.message_id
                    )
                })?;
            ciphertexts.push(sealer.seal_body(&body.message_id, &plain)?);
        }
        done += rekey::store_resealed_bodies(pool, target, &bodies, &ciphertexts)
            .await
            .map_err(DatabaseError::on(pool))
            .context("storing re-sealed quarantined bodies")?;
        span.pb_inc(bodies.len() as u64);
    }
}
