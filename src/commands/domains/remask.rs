//! `etl domains remask NAME`: a domain's rows move to its pending key version (`etl domains
//! rotate`), which then becomes the active one. The domain's readers never see a value under two
//! masks:
//!
//! 1. **Prepare** (beside a running ingest, resumable). Rows written since the rotation already
//!    carry their masks under the pending version (ingest writes both). For the rows written
//!    before, a session map of old mask → new mask is built from every vault value and every
//!    user id of `user_logins` (a domain row has no link to its `user_logins` row, by design);
//!    then each day's rows get their new masks in `next_*` columns the domain's role cannot read,
//!    a short transaction per day. A rerun after that skips the map.
//! 2. **Switch** (`etl.switch_domain_key`: one transaction, holding the vault epoch exclusively,
//!    so no ingest batch commits meanwhile): every row takes its new masks in one `UPDATE`, or
//!    none does if a row has none; the pending version becomes active, the older keys are
//!    deleted, and the epoch is raised. Running ingest processes reload their keys at their next
//!    commit.
//!
//! No retention pass runs meanwhile: it deletes `user_logins`' rows before the domain's, and a
//! domain row whose user id is gone could not be mapped.

use std::time::Instant;

use anyhow::Context;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};
use tracing::info;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use super::{RemaskArgs, Values};
use crate::adapters::aws;
use crate::adapters::postgres::{domains, lifecycle, DatabaseError};
use crate::commands::{audit_pool_of, progress, Outcome, OutputFormat};
use crate::crypto::DomainMasker;
use crate::keys::{lock_key_job, VaultKeys};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// The map's field of user ids (the vault's fields are `PiiField`'s).
const USER_ID: &str = "user_id";

#[derive(Debug, Default, Serialize)]
struct Remasked {
    domain: String,
    from_key_version: i32,
    to_key_version: i32,
    /// Vault entries opened to map their values' masks.
    vault_entries: u64,
    /// Distinct user ids of `user_logins` mapped.
    user_ids: u64,
    /// Rows written before the rotation given their new masks, day by day.
    rows_prepared: u64,
    /// Rows that took their new masks at the switch: every row of the domain.
    rows_switched: u64,
    switch_seconds: f64,
    elapsed_seconds: f64,
}

pub async fn run(args: &RemaskArgs) -> anyhow::Result<Outcome> {
    let name = args.name.as_str();
    // The job lock, the retention lock, the map's session, the stream it reads.
    let pool = audit_pool_of(&args.database, 5).await?;
    // One key job at a time: no main re-mask or re-seal runs beside it.
    let _lock = lock_key_job(&pool).await?;
    let domain = super::find(&pool, name).await?;
    let Some(to) = domain.pending_key_version else {
        outln!(
            "nothing to re-mask: domain {name}'s mask key v{} is active and no version is \
             pending (`etl domains rotate {name}` creates one)",
            domain.key_version
        )?;
        return Ok(Outcome::Success);
    };
    let (_retention, waited) = lifecycle::lock_retention_pass(&pool)
        .await
        .map_err(DatabaseError::on(&pool))?;
    if waited {
        info!("waited for a retention pass to end");
    }
    let started = Instant::now();
    let mut report = Remasked {
        domain: name.to_owned(),
        from_key_version: domain.key_version,
        to_key_version: to,
        ..Remasked::default()
    };
    let figures = |report: &Remasked| {
        format!(
            "domain={name} from_key_version={} to_key_version={to} vault_entries={} user_ids={} \
             rows_prepared={}",
            report.from_key_version, report.vault_entries, report.user_ids, report.rows_prepared
        )
    };
    // On record before any value is opened.
    lifecycle::record(&pool, "remask", (None, None), "opening", &figures(&report))
        .await
        .map_err(DatabaseError::on(&pool))?;
    if let Err(err) = remask(args, &pool, &mut report).await {
        // What was opened before the failure, on record too; the error is the one to report.
        let _ =
            lifecycle::record(&pool, "remask", (None, None), "aborted", &figures(&report)).await;
        return Err(err);
    }
    report.elapsed_seconds = started.elapsed().as_secs_f64();
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&report)?)?,
        OutputFormat::Text => outln!(
            "domain {name} re-masked to key v{to}: {} vault entries and {} user ids opened, {} \
             rows prepared, {} rows switched; the switch held ingest for {:.1} s; key v{} \
             deleted; {:.1} s in all",
            report.vault_entries,
            report.user_ids,
            report.rows_prepared,
            report.rows_switched,
            report.switch_seconds,
            report.from_key_version,
            report.elapsed_seconds
        )?,
    }
    Ok(Outcome::Success)
}

/// The work of [`run`], counting into `report` as it goes.
async fn remask(args: &RemaskArgs, pool: &PgPool, report: &mut Remasked) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let database = |err| DatabaseError::on(pool)(err);
    let mut map = pool.acquire().await.map_err(database)?;
    if domains::rows_to_remask(&mut map, name)
        .await
        .map_err(database)?
    {
        prepare(args, pool, &mut map, report).await?;
    }
    let switch_started = Instant::now();
    let switched = crate::commands::again_after_lock_waits(async || {
        domains::switch(pool, name, report.to_key_version)
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("55000") => {
                    anyhow::anyhow!(
                        "{}; nothing was switched (their values are in neither the vault nor \
                         user_logins)",
                        db.message()
                    )
                }
                _ => anyhow::Error::new(err).context("switching the domain's rows"),
            })
    })
    .await?;
    report.rows_switched = u64::try_from(switched).unwrap_or(0);
    report.switch_seconds = switch_started.elapsed().as_secs_f64();
    info!(
        domain = name,
        to = report.to_key_version,
        rows = switched,
        switch_ms = (report.switch_seconds * 1000.0) as u64,
        "domain re-mask switched; running ingest processes reload their keys at their next commit"
    );
    Ok(())
}

/// Phase 1: the map of the domain's masks under the active key to those under the pending one,
/// from every vault value and user id, then each day's rows without new masks given them.
async fn prepare(
    args: &RemaskArgs,
    pool: &PgPool,
    map: &mut PgConnection,
    report: &mut Remasked,
) -> anyhow::Result<()> {
    let name = args.name.as_str();
    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    let mut maskers = Vec::with_capacity(2);
    let stored = domains::write_keys(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    for version in [report.from_key_version, report.to_key_version] {
        let stored = stored
            .iter()
            .find(|key| key.domain == name && key.version == version)
            .with_context(|| format!("domain {name} has no key version {version}"))?;
        let key = kms
            .unwrap_domain_key(&stored.kms_key_id, name, version, &stored.wrapped_key)
            .await
            .with_context(|| format!("unwrapping domain {name}'s key v{version}"))?;
        maskers.push(DomainMasker::new(name.to_owned(), &key));
    }
    let [old, new] = maskers.as_slice() else {
        anyhow::bail!("domain {name}'s two key versions were not both loaded");
    };
    let mut keys = VaultKeys::new(pool, &kms).await?;
    keys.load(keys.versions()).await?;
    let database = |err| DatabaseError::on(pool)(err);
    domains::create_remask_map(map).await.map_err(database)?;
    let batch = usize::try_from(args.batch).unwrap_or(5000);
    let span = progress("vault entries", 0);
    let shown = span.enter();
    super::each_value(pool, map, batch, async |map, values| {
        let mut fields = Vec::new();
        let (mut olds, mut news) = (Vec::new(), Vec::new());
        match values {
            Values::Vault(entries) => {
                for entry in entries {
                    let (field, value) = keys.open(entry)?;
                    fields.push(field.as_str());
                    olds.push(old.digest(field, &value).hex().as_str().to_owned());
                    news.push(new.digest(field, &value).hex().as_str().to_owned());
                }
                report.vault_entries += entries.len() as u64;
                span.pb_inc(entries.len() as u64);
            }
            Values::Users(ids) => {
                for id in ids {
                    fields.push(USER_ID);
                    olds.push(old.user_mask(id).as_str().to_owned());
                    news.push(new.user_mask(id).as_str().to_owned());
                }
                report.user_ids += ids.len() as u64;
            }
        }
        domains::add_to_remask_map(map, &fields, &olds, &news)
            .await
            .map_err(database)
            .context("mapping the domain's masks")
    })
    .await?;
    drop(shown);

    domains::analyze_remask_map(map).await.map_err(database)?;
    for day in domains::days_to_remask(map, name).await.map_err(database)? {
        let (from, to) = (report.from_key_version, report.to_key_version);
        report.rows_prepared += crate::commands::again_after_lock_waits(async || {
            Ok(domains::remask_day(map, name, day, from, to).await?)
        })
        .await
        .context("giving a day's rows their new masks")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::PiiField;

    #[test]
    fn the_user_field_is_none_of_the_vaults() {
        assert!(PiiField::parse(USER_ID).is_none());
    }
}
