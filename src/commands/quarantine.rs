//! `etl quarantine list` (metadata only), `show` (one body, on record), `replay` (after a rule
//! change) and `purge`.

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{DatabaseArgs, IpPrefixArgs, KmsPinArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::postgres::lifecycle::{self, Expiring};
use crate::adapters::postgres::{self, quarantine};
use crate::domain::Justification;
use crate::error::StdoutError;
use crate::human;
use crate::keys::QuarantineOpeners;
use crate::keys::{load_transformer, LiveKeys};
use crate::pipeline::batch::ClaimKind;
use crate::pipeline::{Committer, Stats};
use crate::recovery;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Subcommand)]
pub enum QuarantineCommand {
    /// List quarantined messages (id, reason, times; never the body).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
        /// Show at most this many of the newest entries.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Open one quarantined message's body (for members of etl_recoverer): the request is
    /// committed to the audit log first, then the recovery service opens the body and seals it
    /// to this command, which prints it on stdout.
    Show(QuarantineShowArgs),
    /// Validate quarantined messages again with today's rules (for the schema owner): those now
    /// valid are written through the same commit path, exactly once, and leave the quarantine;
    /// the rest stay. Messages of forgotten users are dropped.
    Replay(QuarantineReplayArgs),
    /// Delete quarantined messages older than this many days (for the schema owner).
    Purge {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Age in days, by the time each message was quarantined.
        #[arg(long, value_name = "DAYS")]
        older_than: u32,
        /// Count what would be deleted and delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Args)]
pub struct QuarantineShowArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The quarantined message's id, as `etl quarantine list` shows it.
    #[arg(value_name = "ID")]
    pub message_id: String,
    /// Why the body is needed. Required; recorded in the audit log.
    #[arg(long)]
    pub reason: String,
    /// Ticket or case reference, recorded in the audit log.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Output format: the body as sent (text), or one JSON object with the id and the body.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// How long to wait for the recovery service's answer, for example `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
    /// Skip the approvals the policy asks for, on record, for an approver's review.
    #[arg(long)]
    pub break_glass: bool,
}

#[derive(Debug, Args)]
pub struct QuarantineReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kms: KmsPinArgs,
    /// Only messages quarantined for this reason code (as `etl quarantine list` shows it).
    #[arg(long, value_name = "CODE")]
    pub reason_code: Option<String>,
    /// Only this message.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Why the bodies are opened (for example the rule change). Required: recorded in the audit
    /// log before any body is opened, dry runs included.
    #[arg(long)]
    pub reason: String,
    /// Ticket or case reference, recorded with the reason.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Validate with today's rules and count, write nothing (the bodies are still opened, on
    /// record).
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
    /// Replayed rows carry their network as ingest's do.
    #[command(flatten)]
    pub ip_prefix: IpPrefixArgs,
}

pub async fn run(command: QuarantineCommand) -> anyhow::Result<Outcome> {
    match command {
        QuarantineCommand::List {
            database,
            format,
            limit,
        } => list(&database, format, limit).await,
        QuarantineCommand::Show(args) => show(&args).await,
        QuarantineCommand::Replay(args) => replay(&args).await,
        QuarantineCommand::Purge {
            database,
            older_than,
            dry_run,
        } => purge(&database, older_than, dry_run).await,
    }
}

async fn list(
    database: &DatabaseArgs,
    format: OutputFormat,
    limit: i64,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(limit > 0, "--limit must be at least 1");
    let pool = super::pool(database).await?;
    let entries = quarantine::list(&pool, limit)
        .await
        .context("reading etl.quarantine (the owner and etl_recoverer may)")?;
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&entries)?)?,
        OutputFormat::Text => {
            if entries.is_empty() {
                outln!("quarantine is empty")?;
                return Ok(Outcome::Success);
            }
            const ID: &str = "message id";
            let id_width = entries
                .iter()
                .map(|e| e.message_id.chars().count())
                .fold(ID.len(), usize::max);
            outln!(
                "{:<20}  {:<20}  {:>8}  {:<id_width$}  {:<24}  detail",
                "received",
                "sent",
                "receives",
                ID,
                "reason"
            )?;
            const TIME: &str = "%Y-%m-%dT%H:%M:%SZ";
            for entry in &entries {
                outln!(
                    "{}  {:<20}  {:>8}  {:<id_width$}  {:<24}  {}",
                    entry.received_at.format(TIME),
                    entry
                        .sent_at
                        .map_or("-".to_owned(), |sent| sent.format(TIME).to_string()),
                    entry
                        .receive_count
                        .map_or("-".to_owned(), |count| count.to_string()),
                    entry.message_id,
                    entry.reason,
                    entry.detail
                )?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// Opens one quarantined body on record: the request is committed to the audit log (under the
/// recovery policy) before the sealed body and its wrapped key are fetched; KMS unwraps the key;
/// the body goes to stdout and nowhere else.
async fn show(args: &QuarantineShowArgs) -> anyhow::Result<Outcome> {
    let why = Justification::parse(&args.reason, args.ticket.as_deref(), "in the audit log")?;
    let message_id = args.message_id.trim().to_owned();
    anyhow::ensure!(!message_id.is_empty(), "give the quarantined message's id");
    let settings = args.database.settings()?;
    let pool = super::checked_pool(
        postgres::read_committed(settings.options),
        recovery::CLIENT_CONNECTIONS,
    )
    .await?;
    let options = recovery::RequestOptions {
        wait: args.wait,
        break_glass: args.break_glass,
    };
    let body = match recovery::open_quarantined(&pool, &message_id, &why, options).await? {
        recovery::Answer::Ready(Some(body)) => body,
        recovery::Answer::Ready(None) => {
            eprintln!("not found: no quarantined message has this id");
            return Ok(Outcome::Negative);
        }
        recovery::Answer::Pending(waiting) => return super::report_pending(&waiting, args.format),
    };
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Text => {
            stdout.write_all(&body).map_err(StdoutError)?;
            stdout.write_all(b"\n").map_err(StdoutError)?;
        }
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Opened<'a> {
                message_id: &'a str,
                body: &'a str,
            }
            let body = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
            let json = Zeroizing::new(serde_json::to_string(&Opened {
                message_id: &message_id,
                body: &body,
            })?);
            writeln!(stdout, "{}", json.as_str()).map_err(StdoutError)?;
        }
    }
    Ok(Outcome::Success)
}

/// Quarantined messages per replay transaction.
const REPLAY_PAGE: i64 = 500;

/// What a replay did.
#[derive(Debug, Default, serde::Serialize)]
struct Replayed {
    dry_run: bool,
    /// Quarantined messages that matched the filters.
    examined: u64,
    /// Valid under today's rules and written (with `dry_run`: would be).
    written: u64,
    /// Of forgotten users: dropped.
    forgotten_skipped: u64,
    /// Still invalid: left in quarantine.
    still_quarantined: u64,
}

/// `etl quarantine replay`: opens the bodies (the schema owner reads the quarantine and the
/// keys), validates them again and sends the valid ones through the ingest commit path with the
/// replay claim, which deletes each one's quarantine row in the same transaction as its row: a
/// second replay, or two at once, write nothing twice.
async fn replay(args: &QuarantineReplayArgs) -> anyhow::Result<Outcome> {
    let why = Justification::parse(&args.reason, args.ticket.as_deref(), "in the audit log")?;
    let pool = super::audit_pool(&args.database).await?;
    // On record before any body is opened: which messages, why, by whom.
    let filter = format!(
        "reason_code={} message_id={} dry_run={}",
        args.reason_code.as_deref().unwrap_or("any"),
        args.id.as_deref().unwrap_or("any"),
        args.dry_run
    );
    lifecycle::record(
        &pool,
        "quarantine_replay",
        (Some(why.reason()), why.ticket()),
        "opening",
        &filter,
    )
    .await
    .context("recording the replay in the audit log before opening any body")?;
    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    // A dry run prepares each page as the real run does (validation, the suppression list) and
    // writes nothing, so its figures are the real run's.
    let transformer = load_transformer(&pool, &kms).await?;
    let committer = Committer::new(
        pool.clone(),
        Arc::new(LiveKeys::new(transformer, kms.clone())),
        Arc::new(Stats::default()),
        i32::MAX,
    )
    .with_ip_prefix(args.ip_prefix.ip_prefix);
    let mut openers = QuarantineOpeners::new(&pool, &kms).await?;
    let mut report = Replayed {
        dry_run: args.dry_run,
        ..Replayed::default()
    };
    let mut after: Option<String> = None;
    loop {
        let page = lifecycle::quarantined_page(
            &pool,
            args.reason_code.as_deref(),
            args.id.as_deref(),
            after.as_deref(),
            REPLAY_PAGE,
        )
        .await
        .context("reading etl.quarantine (the schema owner may)")?;
        let Some(last) = page.last() else { break };
        after = Some(last.message_id.clone());
        report.examined += page.len() as u64;
        let mut messages = Vec::with_capacity(page.len());
        for row in &page {
            messages.push(openers.open(row).await?);
        }
        let replayed = if args.dry_run {
            committer.preview(&messages, ClaimKind::Replay).await?
        } else {
            committer.commit(&messages, ClaimKind::Replay).await?
        };
        report.written += replayed.written;
        report.forgotten_skipped += replayed.forgotten_skipped;
    }
    report.still_quarantined = report.examined - report.written - report.forgotten_skipped;
    let figures = format!(
        "examined={} written={} forgotten_skipped={} still_quarantined={}",
        report.examined, report.written, report.forgotten_skipped, report.still_quarantined
    );
    if !args.dry_run && report.examined > 0 {
        lifecycle::record(
            &pool,
            "quarantine_replay",
            (Some(why.reason()), why.ticket()),
            "replayed",
            &format!("{filter} {figures}"),
        )
        .await
        .context("recording the replay in the audit log")?;
    }
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&report)?)?,
        OutputFormat::Text => {
            let verb = if args.dry_run {
                "would replay"
            } else {
                "replayed"
            };
            outln!("{verb}: {figures}")?;
        }
    }
    Ok(if report.examined > 0 {
        Outcome::Success
    } else {
        eprintln!("not found: no quarantined message matches");
        Outcome::Negative
    })
}

/// `etl quarantine purge --older-than DAYS`.
async fn purge(database: &DatabaseArgs, older_than: u32, dry_run: bool) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(database).await?;
    let cutoff = chrono::Utc::now() - chrono::Duration::days(i64::from(older_than));
    let expired = lifecycle::count_expired(&pool, Expiring::Quarantine, cutoff)
        .await
        .context("counting quarantined messages (the schema owner may)")?;
    let messages = |n| human::count(n, "quarantined message");
    let days = human::count(i64::from(older_than), "day");
    if expired == 0 {
        outln!("nothing to purge: no quarantined message is older than {days}")?;
        return Ok(Outcome::Negative);
    }
    if dry_run {
        outln!("would purge {} older than {days}", messages(expired))?;
        return Ok(Outcome::Success);
    }
    let mut purged = 0u64;
    loop {
        let n = lifecycle::delete_expired_chunk(&pool, Expiring::Quarantine, cutoff, 10_000)
            .await
            .context("deleting quarantined messages")?;
        purged += n;
        if n < 10_000 {
            break;
        }
    }
    lifecycle::record(
        &pool,
        "quarantine_purge",
        (None, None),
        "deleted",
        &format!("quarantine={purged} older_than_days={older_than}"),
    )
    .await
    .context("recording the purge in the audit log")?;
    outln!("purged {} older than {days}", messages(purged as i64))?;
    Ok(Outcome::Success)
}
