//! `etl retention set|show|apply`: how long data is kept, stored in `etl.retention`, and the pass
//! that deletes what expired. The pass deletes in chunks, each its own short transaction: first
//! `user_logins` rows by `create_date`, then the vault entries no row refers to (holding the vault
//! epoch, see `pipeline::vault_state`, one chunk at a time), then old quarantined messages and old
//! claims. Never the audit log: the pass appends one row to it with its figures.

use std::time::Instant;

use anyhow::Context;
use backon::Retryable;
use chrono::{Duration, Utc};
use serde::Serialize;
use tracing::info;
use tracing_indicatif::span_ext::IndicatifSpanExt;

use std::path::PathBuf;

use clap::Subcommand;

use super::{progress, DatabaseArgs, Outcome, OutputFormat};
use crate::adapters::postgres;
use crate::adapters::postgres::domains;
use crate::adapters::postgres::lifecycle::{self, Expiring, Retention};
use crate::human;

#[derive(Debug, Subcommand)]
pub enum RetentionCommand {
    /// Change how long each kind of data is kept, in days (for the schema owner). `0` keeps it
    /// forever; settings not given stay as they are.
    Set {
        #[command(flatten)]
        database: DatabaseArgs,
        /// user_logins rows, by create_date; then the vault entries no row refers to any more.
        #[arg(long, value_name = "DAYS")]
        logins: Option<u32>,
        /// Quarantined messages, by the time they were quarantined.
        #[arg(long, value_name = "DAYS")]
        quarantine: Option<u32>,
        /// Claims of processed SQS messages and backfilled line ranges, at least 14 (the longest
        /// SQS keeps a message: a claim deleted sooner could let a redelivery be written twice).
        /// A backfill file replayed after its claims expired is written again.
        #[arg(long, value_name = "DAYS")]
        claims: Option<u32>,
    },
    /// Print the settings.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Delete what the settings say has expired, in short transactions, safe beside a running
    /// ingest; never the audit log. The summary goes to stdout and the audit log.
    Apply {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Count what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// How much the pass yields to a running ingest: after each chunk it waits this many
        /// times as long as the chunk took (as gh-ost's --nice-ratio). 0 runs flat out. The
        /// default keeps a running ingest at about 0.8 of its rate (BENCHMARKS.md, 17).
        #[arg(long, value_name = "RATIO", default_value_t = 2.0)]
        nice_ratio: f64,
        /// Also write the pass's figures to this file in the Prometheus text format, for
        /// node_exporter's textfile collector (written whole, then renamed into place).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
}

/// Rows per delete statement: a few tens of milliseconds of work each.
const ROW_CHUNK: i64 = 10_000;
/// Vault entries per statement of the sweep, found by their masks: a mark, or a deletion under the
/// vault epoch's lock (which holds ingest's commits back) with one epoch change (which makes
/// ingest drop its cache of known masks) per chunk that deletes any.
const VAULT_CHUNK: usize = 5_000;
/// SQS keeps a message at most 14 days: a claim must outlive any redelivery of it.
const MIN_CLAIMS_DAYS: u32 = 14;

pub async fn run(command: RetentionCommand) -> anyhow::Result<Outcome> {
    match &command {
        RetentionCommand::Set {
            database,
            logins,
            quarantine,
            claims,
        } => set(database, *logins, *quarantine, *claims).await?,
        RetentionCommand::Show { database, format } => {
            let pool = super::pool(database).await?;
            let settings = lifecycle::retention(&pool)
                .await
                .context("reading etl.retention (the schema owner may)")?;
            print_settings(&settings, *format)?;
        }
        RetentionCommand::Apply {
            database,
            dry_run,
            format,
            nice_ratio,
            metrics_file,
        } => {
            anyhow::ensure!(
                (0.0..=100.0).contains(nice_ratio),
                "--nice-ratio must be between 0 and 100"
            );
            let pass = apply(database, *dry_run, *format, Pace(*nice_ratio)).await?;
            if let Some(path) = metrics_file.as_ref().filter(|_| !dry_run) {
                write_metrics(path, &pass)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
        }
    }
    Ok(Outcome::Success)
}

async fn set(
    database: &DatabaseArgs,
    logins: Option<u32>,
    quarantine: Option<u32>,
    claims: Option<u32>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        logins.is_some() || quarantine.is_some() || claims.is_some(),
        "give --logins, --quarantine or --claims (days; 0 keeps forever)"
    );
    if let Some(days) = claims.filter(|d| *d != 0 && *d < MIN_CLAIMS_DAYS) {
        anyhow::bail!(
            "--claims {days} is below {MIN_CLAIMS_DAYS} days, the longest SQS keeps a message: a \
             redelivery after its claim was deleted would be written twice"
        );
    }
    let days = |value: Option<u32>| -> anyhow::Result<Option<Option<i32>>> {
        value
            .map(|d| match d {
                0 => Ok(None),
                d => i32::try_from(d)
                    .map(Some)
                    .map_err(|_| anyhow::anyhow!("days must be at most 2147483647")),
            })
            .transpose()
    };
    let pool = super::audit_pool(database).await?;
    let settings = lifecycle::set_retention(&pool, days(logins)?, days(quarantine)?, days(claims)?)
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => anyhow::anyhow!(
                "only the owner of the etl schemas may change the retention settings"
            ),
            _ => anyhow::anyhow!("cannot change the retention settings: {err}"),
        })?;
    print_settings(&settings, OutputFormat::Text)
}

fn print_settings(settings: &Retention, format: OutputFormat) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        outln!("{}", serde_json::to_string(settings)?)?;
        return Ok(());
    }
    let days = |d: Option<i32>| d.map_or("forever".to_owned(), |d| human::count(d, "day"));
    outln!("user_logins: {}", days(settings.logins_days))?;
    outln!("quarantine:  {}", days(settings.quarantine_days))?;
    outln!("claims:      {}", days(settings.claims_days))?;
    outln!(
        "last changed: {} by {}",
        settings.updated_at.format("%Y-%m-%dT%H:%M:%SZ"),
        settings.updated_by
    )?;
    Ok(())
}

/// The figures of a pass, by table.
#[derive(Debug, Default, Serialize)]
struct Pass {
    dry_run: bool,
    user_logins: u64,
    /// Rows of the pseudonymisation domains' tables, all domains together.
    domain_rows: u64,
    vault_entries: u64,
    quarantine: u64,
    processed_messages: u64,
    file_batches: u64,
    elapsed_seconds: f64,
}

/// How much a pass yields to ingest: after each chunk that took `t`, it waits `ratio × t`.
#[derive(Clone, Copy)]
struct Pace(f64);

impl Pace {
    async fn after(self, chunk: Instant) {
        if self.0 > 0.0 {
            tokio::time::sleep(chunk.elapsed().mul_f64(self.0)).await;
        }
    }
}

async fn apply(
    database: &DatabaseArgs,
    dry_run: bool,
    format: OutputFormat,
    pace: Pace,
) -> anyhow::Result<Pass> {
    // Two: the vault sweep reads what it looks for on one and marks it on the other.
    let pool = super::audit_pool_of(database, 2).await?;
    let settings = lifecycle::retention(&pool)
        .await
        .context("reading etl.retention (the schema owner may)")?;
    // Released when the pass ends and this connection closes.
    let _one_pass = if dry_run {
        None
    } else {
        let (conn, waited) = lifecycle::lock_retention_pass(&pool)
            .await
            .context("taking the retention pass's lock")?;
        if waited {
            tracing::info!("waited for another `etl retention apply` on this database to end");
        }
        Some(conn)
    };
    let started = Instant::now();
    let now = Utc::now();
    let cutoff = |days: Option<i32>| days.map(|d| now - Duration::days(i64::from(d)));
    let mut pass = Pass {
        dry_run,
        ..Pass::default()
    };
    // Rows first, so the vault sweep finds the entries they were the last to use.
    if let Some(cutoff) = cutoff(settings.logins_days) {
        // create_date is a date: rows of days before the cutoff's day.
        let cutoff = cutoff
            .date_naive()
            .and_time(chrono::NaiveTime::MIN)
            .and_utc();
        pass.user_logins = delete_expired(
            &pool,
            Target::Table(Expiring::Logins),
            cutoff,
            dry_run,
            pace,
        )
        .await?;
        pass.domain_rows = delete_expired_in_domains(&pool, cutoff, dry_run, pace).await?;
        pass.vault_entries = if dry_run {
            count_unused_vault(&pool, cutoff).await?
        } else {
            sweep_vault(&pool, pace).await?
        };
    }
    if let Some(cutoff) = cutoff(settings.quarantine_days) {
        pass.quarantine = delete_expired(
            &pool,
            Target::Table(Expiring::Quarantine),
            cutoff,
            dry_run,
            pace,
        )
        .await?;
    }
    if let Some(cutoff) = cutoff(settings.claims_days) {
        pass.processed_messages = delete_expired(
            &pool,
            Target::Table(Expiring::MessageClaims),
            cutoff,
            dry_run,
            pace,
        )
        .await?;
        pass.file_batches = delete_expired(
            &pool,
            Target::Table(Expiring::FileClaims),
            cutoff,
            dry_run,
            pace,
        )
        .await?;
    }
    pass.elapsed_seconds = started.elapsed().as_secs_f64();
    let figures = format!(
        "user_logins={} vault_entries={} quarantine={} processed_messages={} file_batches={} \
         domain_rows={}",
        pass.user_logins,
        pass.vault_entries,
        pass.quarantine,
        pass.processed_messages,
        pass.file_batches,
        pass.domain_rows
    );
    info!(
        dry_run,
        user_logins = pass.user_logins,
        vault_entries = pass.vault_entries,
        quarantine = pass.quarantine,
        processed_messages = pass.processed_messages,
        file_batches = pass.file_batches,
        domain_rows = pass.domain_rows,
        "retention pass done"
    );
    if !dry_run {
        lifecycle::record(&pool, "retention", (None, None), "deleted", &figures)
            .await
            .context("recording the retention pass in the audit log")?;
    }
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&pass)?)?,
        OutputFormat::Text => {
            let verb = if dry_run { "would delete" } else { "deleted" };
            outln!(
                "retention {verb}: {figures} in {:.1} s",
                pass.elapsed_seconds
            )?;
        }
    }
    Ok(pass)
}

/// The pass's figures as node_exporter's textfile collector reads them: gauges of the last pass,
/// so an alert can fire when it stops running (`time() - etl_retention_last_success_timestamp_seconds`).
fn write_metrics(path: &std::path::Path, pass: &Pass) -> std::io::Result<()> {
    let mut text = String::from(
        "# HELP etl_retention_deleted_rows Rows the last retention pass deleted, by table.\n\
         # TYPE etl_retention_deleted_rows gauge\n",
    );
    for (table, rows) in [
        ("user_logins", pass.user_logins),
        ("domains", pass.domain_rows),
        ("vault.entries", pass.vault_entries),
        ("etl.quarantine", pass.quarantine),
        ("etl.processed_messages", pass.processed_messages),
        ("etl.file_batches", pass.file_batches),
    ] {
        text.push_str(&format!(
            "etl_retention_deleted_rows{{table=\"{table}\"}} {rows}\n"
        ));
    }
    text.push_str(&format!(
        "# HELP etl_retention_duration_seconds How long the last retention pass took.\n\
         # TYPE etl_retention_duration_seconds gauge\n\
         etl_retention_duration_seconds {}\n\
         # HELP etl_retention_last_success_timestamp_seconds When the last retention pass ended.\n\
         # TYPE etl_retention_last_success_timestamp_seconds gauge\n\
         etl_retention_last_success_timestamp_seconds {}\n",
        pass.elapsed_seconds,
        Utc::now().timestamp()
    ));
    super::write_textfile(path, &text)
}

/// A table the pass deletes expired rows of: one of the product's, or a pseudonymisation
/// domain's (whose rows expire with `user_logins`').
#[derive(Clone, Copy)]
enum Target<'a> {
    Table(Expiring),
    Domain(&'a str),
}

impl Target<'_> {
    fn name(&self) -> String {
        match self {
            Self::Table(what) => what.name().to_owned(),
            Self::Domain(domain) => format!("domains.{domain}"),
        }
    }

    async fn count(self, pool: &sqlx::PgPool, cutoff: chrono::DateTime<Utc>) -> sqlx::Result<i64> {
        match self {
            Self::Table(what) => lifecycle::count_expired(pool, what, cutoff).await,
            Self::Domain(domain) => lifecycle::count_expired_in_domain(pool, domain, cutoff).await,
        }
    }

    async fn delete_chunk(
        self,
        pool: &sqlx::PgPool,
        cutoff: chrono::DateTime<Utc>,
    ) -> sqlx::Result<u64> {
        match self {
            Self::Table(what) => {
                lifecycle::delete_expired_chunk(pool, what, cutoff, ROW_CHUNK).await
            }
            Self::Domain(domain) => {
                lifecycle::delete_expired_in_domain(pool, domain, cutoff, ROW_CHUNK).await
            }
        }
    }
}

/// The rows of every pseudonymisation domain that expired with `user_logins`' rows.
async fn delete_expired_in_domains(
    pool: &sqlx::PgPool,
    cutoff: chrono::DateTime<Utc>,
    dry_run: bool,
    pace: Pace,
) -> anyhow::Result<u64> {
    let listed = domains::list(pool)
        .await
        .context("reading the pseudonymisation domains")?;
    let mut deleted = 0;
    for domain in &listed {
        deleted +=
            delete_expired(pool, Target::Domain(&domain.name), cutoff, dry_run, pace).await?;
    }
    Ok(deleted)
}

async fn delete_expired(
    pool: &sqlx::PgPool,
    what: Target<'_>,
    cutoff: chrono::DateTime<Utc>,
    dry_run: bool,
    pace: Pace,
) -> anyhow::Result<u64> {
    let name = what.name();
    let expired = what
        .count(pool, cutoff)
        .await
        .with_context(|| format!("counting expired rows of {name}"))?;
    let expired = u64::try_from(expired).unwrap_or(0);
    info!(table = %name, expired, "retention");
    if dry_run || expired == 0 {
        return Ok(expired);
    }
    let span = progress(&name, expired);
    let _shown = span.enter();
    let mut deleted = 0;
    loop {
        let chunk = Instant::now();
        let n = what
            .delete_chunk(pool, cutoff)
            .await
            .with_context(|| format!("deleting expired rows of {name}"))?;
        deleted += n;
        span.pb_inc(n);
        if n < ROW_CHUNK as u64 {
            return Ok(deleted);
        }
        pace.after(chunk).await;
    }
}

/// A dry run's count of the vault entries the sweep would delete after the rows created before
/// `rows_expire_before`.
async fn count_unused_vault(
    pool: &sqlx::PgPool,
    rows_expire_before: chrono::DateTime<Utc>,
) -> anyhow::Result<u64> {
    (|| lifecycle::count_unused_entries(pool, rows_expire_before))
        .retry(crate::pipeline::backoff())
        .when(postgres::is_transient)
        .await
        .context("counting vault entries no row would use")
}

/// The vault sweep: two looks for entries no row uses (see `lifecycle::release_unused_entries`),
/// then their deletion in chunks, each holding the vault epoch briefly and paced.
async fn sweep_vault(pool: &sqlx::PgPool, pace: Pace) -> anyhow::Result<u64> {
    // Every chunk of every step is paced: while the pass waits, its scans wait too.
    let paced = async |started: Instant, _: u64| pace.after(started).await;
    // A look that waited its lock_timeout for ingest's commits changed nothing: again.
    (|| lifecycle::release_unused_entries(pool, VAULT_CHUNK, paced))
        .retry(crate::pipeline::backoff())
        .when(postgres::is_transient)
        .await
        .context("releasing vault entries no row uses")?;
    let unused = (|| lifecycle::confirm_unused_entries(pool, VAULT_CHUNK, paced))
        .retry(crate::pipeline::backoff())
        .when(postgres::is_transient)
        .await
        .context("confirming vault entries no row uses")?;
    let span = progress("vault.entries", unused);
    let _shown = span.enter();
    lifecycle::delete_unused_entries(pool, VAULT_CHUNK, async |started, deleted| {
        span.pb_inc(deleted);
        pace.after(started).await;
    })
    .await
    .context("deleting vault entries no row uses")
}
