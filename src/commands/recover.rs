//! `etl recover`: audited recovery of original values, for members of etl_recoverer, through the
//! recovery service (`crate::recovery`): the request, with a one-time public key, is committed
//! to the audit log; the service opens the values and seals them to that key; this command opens
//! them and prints them on stdout, and nowhere else. It needs no key and no KMS permission.
//!
//! The database enforces the recovery policy when the request is made: a request without a
//! required ticket, or over the daily limit, is recorded as refused and nothing is opened.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use zeroize::Zeroizing;

use super::{DatabaseArgs, Outcome, OutputFormat};
use crate::adapters::postgres::{self, recovery};
use crate::configuration::{ConfigError, DatabaseSettings, MaskSource};
use crate::domain::{Justification, Mask, PiiField};
use crate::error::StdoutError;
use crate::recovery::{
    recover_masks, Answer, Collected, Recovered, RequestOptions, CLIENT_CONNECTIONS,
};

/// `etl recover --masked-ip <MASK>`, or `etl recover --masked-ip --from-file <PATH>` for many
/// masks of the same field.
#[derive(Debug, Args)]
#[command(
    group(clap::ArgGroup::new("field").required(true).args(["masked_ip", "masked_device_id"])),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
pub struct RecoverArgs {
    #[command(subcommand)]
    pub command: Option<RecoverCommand>,

    /// PostgreSQL connection URL of the recovering user, who must be a member of etl_recoverer.
    // Declared here rather than flattened from `DatabaseArgs`: a subcommand (`policy`) must be
    // able to leave this level's arguments out.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true, required = true)]
    pub database_url: Option<String>,

    /// The masked_ip to recover; without a value, with --from-file, the file holds masked_ips.
    #[arg(long, num_args = 0..=1, value_name = "MASK")]
    pub masked_ip: Option<Option<String>>,

    /// The masked_device_id to recover; without a value, with --from-file, the file holds
    /// masked_device_ids.
    #[arg(long, num_args = 0..=1, value_name = "MASK")]
    pub masked_device_id: Option<Option<String>>,

    /// Read masks from this file, one per line (`-` for stdin); one audit row per mask.
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,

    /// Why the value is needed. Required; recorded in the audit log.
    #[arg(long, required = true)]
    pub reason: Option<String>,

    /// Ticket or case reference, recorded in the audit log (required when the recovery policy
    /// says so).
    #[arg(long)]
    pub ticket: Option<String>,

    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,

    /// How long to wait for the recovery service's answer, for example `30s`. A request that
    /// still waits for approvals then stays on record: `etl recover collect <ID>` later.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,

    /// Skip the approvals the policy asks for (never the ticket rule, the daily limit or the
    /// audit): the opening is on record and waits for an approver's review (`etl audit review`).
    #[arg(long)]
    pub break_glass: bool,
}

#[derive(Debug, Subcommand)]
pub enum RecoverCommand {
    /// The recovery policy, enforced by the database for every recovery and quarantine opening.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Requests waiting for approval (for members of etl_approver): id, requester, field, count,
    /// reason, ticket, age; never a value.
    Pending {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Approve a pending request (for members of etl_approver other than its requester); on
    /// record. Once it has the approvals the policy asks for, the recovery service opens it.
    Approve(DecisionArgs),
    /// Deny a pending request (for members of etl_approver other than its requester); on record.
    /// Its requester gets a refusal with your reason.
    Deny(DecisionArgs),
    /// Collect a request of yours that waited for approvals: its one-time key was kept for this
    /// (readable by you alone) and is deleted once the values are opened.
    Collect {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The request id that `etl recover` printed.
        #[arg(value_name = "ID")]
        request_id: i64,
        /// How long to wait for the recovery service's answer, for example `30s`.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        wait: Duration,
        /// Output format on stdout.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Args)]
pub struct DecisionArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The request id, as `etl recover pending` shows it.
    #[arg(value_name = "ID")]
    pub request_id: i64,
    /// Why. Required; recorded in the audit log.
    #[arg(long)]
    pub reason: String,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Change the policy (for the schema owner; the change is written to the audit log).
    Set {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Whether every request must name a ticket.
        #[arg(long, value_name = "BOOL", action = clap::ArgAction::Set)]
        require_ticket: Option<bool>,
        /// Values (masks and quarantined bodies) one database user may open per UTC day; 0 means
        /// no limit.
        #[arg(long, value_name = "N")]
        daily_limit: Option<u32>,
        /// Distinct members of etl_approver, never the requester, who must approve a request
        /// before it is opened: 0 (the default) to 3.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=3))]
        approvals: Option<u8>,
        /// How long a request waits for its approvals before it expires, for example `24h`.
        #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
        approval_ttl: Option<Duration>,
    },
    /// Print the policy.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

/// What `etl recover` asks for.
#[derive(Debug, Clone)]
pub struct RecoverSettings {
    pub database: DatabaseSettings,
    pub field: PiiField,
    pub masks: Vec<Mask>,
    /// Whether the masks came from a file (bulk output) or the command line (one value).
    pub bulk: bool,
    pub why: Justification,
    pub format: OutputFormat,
    pub options: RequestOptions,
}

impl TryFrom<&RecoverArgs> for RecoverSettings {
    type Error = ConfigError;

    fn try_from(args: &RecoverArgs) -> Result<Self, ConfigError> {
        let (field, mask) = match (&args.masked_ip, &args.masked_device_id) {
            (Some(mask), None) => (PiiField::Ip, mask),
            (None, Some(mask)) => (PiiField::DeviceId, mask),
            _ => {
                return Err(ConfigError::Invalid(
                    "give exactly one of --masked-ip and --masked-device-id",
                ))
            }
        };
        let masks = match (mask, &args.from_file) {
            (Some(mask), None) => {
                vec![Mask::parse(mask).ok_or(ConfigError::BadMask(MaskSource::Flag(field)))?]
            }
            (None, Some(path)) => read_masks(path)?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::Invalid(
                    "give the mask on the command line or --from-file, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "give a mask after --masked-ip / --masked-device-id, or --from-file",
                ))
            }
        };
        if masks.is_empty() {
            return Err(ConfigError::Invalid("the mask file holds no masks"));
        }
        ConfigError::check_range(
            "--wait",
            args.wait,
            Duration::ZERO,
            crate::recovery::MAX_WAIT,
            "at most 24h",
        )?;
        // As before the settings had a type of their own: the reason is judged before the URL.
        let why = Justification::parse(
            args.reason.as_deref().unwrap_or_default(),
            args.ticket.as_deref(),
            "in the audit log",
        )?;
        Ok(Self {
            database: DatabaseSettings::parse(args.database_url.as_deref().unwrap_or_default())?,
            field,
            masks,
            bulk: args.from_file.is_some(),
            why,
            format: args.format,
            options: RequestOptions {
                wait: args.wait,
                break_glass: args.break_glass,
            },
        })
    }
}

fn read_masks(path: &std::path::Path) -> Result<Vec<Mask>, ConfigError> {
    let text = super::read_input(path).map_err(ConfigError::MaskFile)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            Mask::parse(line).ok_or(ConfigError::BadMask(MaskSource::Line(index + 1)))
        })
        .collect()
}

pub async fn run(args: RecoverArgs) -> anyhow::Result<Outcome> {
    match &args.command {
        Some(RecoverCommand::Policy(command)) => {
            return policy(command).await.map(|()| Outcome::Success)
        }
        Some(RecoverCommand::Pending { database, format }) => {
            return pending(database, *format).await
        }
        Some(RecoverCommand::Approve(decision)) => return decide(decision, true).await,
        Some(RecoverCommand::Deny(decision)) => return decide(decision, false).await,
        Some(RecoverCommand::Collect {
            database,
            request_id,
            wait,
            format,
        }) => return collect(database, *request_id, *wait, *format).await,
        None => {}
    }
    let settings = RecoverSettings::try_from(&args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, CLIENT_CONNECTIONS);
    let masks: Vec<String> = settings.masks.into_iter().map(Mask::into_string).collect();
    let answer = recover_masks(
        &pool,
        settings.field,
        &masks,
        &settings.why,
        settings.options,
    )
    .await?;
    let results = match answer {
        Answer::Ready(results) => results,
        Answer::Pending(waiting) => return super::report_pending(&waiting, settings.format),
    };
    print(&results, settings.bulk, settings.format)?;
    Ok(found(&results))
}

fn found(results: &[Recovered]) -> Outcome {
    if results.iter().all(|r| r.value.is_some()) {
        Outcome::Success
    } else {
        Outcome::Negative
    }
}

/// `etl recover collect <ID>`.
async fn collect(
    database: &DatabaseArgs,
    request_id: i64,
    wait: Duration,
    format: OutputFormat,
) -> anyhow::Result<Outcome> {
    let options = postgres::read_committed(database.settings()?.options);
    let pool = super::checked_pool(options, CLIENT_CONNECTIONS).await?;
    match crate::recovery::collect(&pool, request_id, wait).await? {
        Answer::Pending(waiting) => super::report_pending(&waiting, format),
        Answer::Ready(Collected::Values(results)) => {
            print(&results, results.len() > 1, format)?;
            Ok(found(&results))
        }
        Answer::Ready(Collected::Body { message_id, body }) => {
            let Some(body) = body else {
                eprintln!("not found: no quarantined message has this id");
                return Ok(Outcome::Negative);
            };
            if format == OutputFormat::Json {
                let body = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
                let json = Zeroizing::new(
                    serde_json::json!({ "message_id": message_id, "body": body.as_str() })
                        .to_string(),
                );
                outln!("{}", json.as_str())?;
            } else {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                stdout.write_all(&body).map_err(StdoutError)?;
                stdout.write_all(b"\n").map_err(StdoutError)?;
            }
            Ok(Outcome::Success)
        }
    }
}

/// `etl recover pending`.
async fn pending(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(database).await?;
    let waiting = recovery::pending(&pool)
        .await
        .map_err(super::approver_error(&pool))?;
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&waiting)?)?,
        OutputFormat::Text if waiting.is_empty() => outln!("no request waits for approval")?,
        OutputFormat::Text => {
            outln!(
                "{:>8}  {:<20}  {:<16}  {:>5}  {:>9}  {:>8}  reason / ticket",
                "id",
                "requester",
                "what",
                "count",
                "approvals",
                "age"
            )?;
            let now = chrono::Utc::now();
            for request in &waiting {
                let what = request.field.as_deref().unwrap_or("quarantined body");
                let age = (now - request.created_at).to_std().unwrap_or_default();
                outln!(
                    "{:>8}  {:<20}  {:<16}  {:>5}  {:>9}  {:>8}  {} / {}",
                    request.id,
                    request.requester,
                    what,
                    request.subjects,
                    format!("{} of {}", request.approvals, request.approvals_needed),
                    crate::human::duration(age),
                    request.reason.as_deref().unwrap_or(""),
                    request.ticket.as_deref().unwrap_or("-"),
                )?;
            }
        }
    }
    Ok(Outcome::Success)
}

/// `etl recover approve|deny <ID> --reason ...`.
async fn decide(decision: &DecisionArgs, approve: bool) -> anyhow::Result<Outcome> {
    let why = Justification::parse(&decision.reason, None, "in the audit log")?;
    let pool = super::audit_pool(&decision.database).await?;
    let id = decision.request_id;
    if approve {
        let left = recovery::approve(&pool, id, why.reason())
            .await
            .map_err(super::approver_error(&pool))?;
        match left {
            0 => outln!("request {id} approved; the recovery service opens it now")?,
            n => outln!(
                "request {id} approved; it waits for {} more",
                crate::human::count(i64::from(n), "approval")
            )?,
        }
    } else {
        recovery::deny(&pool, id, why.reason())
            .await
            .map_err(super::approver_error(&pool))?;
        outln!("request {id} denied; its requester gets your reason")?;
    }
    Ok(Outcome::Success)
}

fn print(results: &[Recovered], bulk: bool, format: OutputFormat) -> anyhow::Result<()> {
    match (format, bulk, results) {
        (OutputFormat::Json, false, [one]) => outln!("{}", serde_json::to_string(one)?)?,
        (OutputFormat::Text, false, [one]) => match &one.value {
            Some(value) => outln!("{value}")?,
            None => eprintln!("not found: no {} has this mask", one.field),
        },
        (OutputFormat::Json, _, _) => outln!("{}", serde_json::to_string(results)?)?,
        (OutputFormat::Text, _, _) => {
            for result in results {
                outln!(
                    "{}\t{}",
                    result.mask,
                    result.value.as_deref().unwrap_or("NOT FOUND")
                )?;
            }
        }
    }
    Ok(())
}

/// `etl recover policy show|set`. Only the schema owner may set it (the function is granted to
/// nobody else); the change is recorded in the audit log by the database.
async fn policy(command: &PolicyCommand) -> anyhow::Result<()> {
    let (database, format) = match command {
        PolicyCommand::Set { database, .. } => (database, OutputFormat::Text),
        PolicyCommand::Show { database, format } => (database, *format),
    };
    let pool = super::audit_pool(database).await?;
    let policy = match command {
        PolicyCommand::Set {
            require_ticket,
            daily_limit,
            approvals,
            approval_ttl,
            ..
        } => {
            anyhow::ensure!(
                require_ticket.is_some()
                    || daily_limit.is_some()
                    || approvals.is_some()
                    || approval_ttl.is_some(),
                "give --require-ticket true|false, --daily-limit N, --approvals N or \
                 --approval-ttl DURATION"
            );
            if let Some(ttl) = approval_ttl {
                ConfigError::check_range(
                    "--approval-ttl",
                    *ttl,
                    Duration::from_secs(1),
                    Duration::from_secs(30 * 24 * 3600),
                    "between 1s and 30 days",
                )?;
            }
            let daily_limit = daily_limit
                .map(i32::try_from)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--daily-limit must be at most 2147483647"))?;
            recovery::set_policy(
                &pool,
                *require_ticket,
                daily_limit,
                approvals.map(i32::from),
                *approval_ttl,
            )
            .await
            .map_err(|err| match &err {
                sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
                    anyhow::anyhow!(
                        "only the owner of the etl schemas may change the recovery policy"
                    )
                }
                _ => anyhow::anyhow!("cannot change the recovery policy: {err}"),
            })?
        }
        PolicyCommand::Show { .. } => recovery::policy(&pool)
            .await
            .context("reading the recovery policy (the owner may)")?,
    };
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&policy)?)?,
        OutputFormat::Text => {
            let limit = match policy.daily_limit {
                0 => "no limit".to_owned(),
                n => format!("{n} values per database user per UTC day"),
            };
            outln!("require ticket: {}", policy.require_ticket)?;
            outln!("daily limit:    {limit}")?;
            outln!(
                "approvals:      {} (a request waits for them at most {})",
                policy.approvals,
                crate::human::duration(Duration::from_secs_f64(
                    policy.approval_ttl_seconds.max(0.0)
                ))
            )?;
            outln!(
                "last changed:   {} by {}",
                policy.updated_at.format("%Y-%m-%dT%H:%M:%SZ"),
                policy.updated_by
            )?;
        }
    }
    Ok(())
}
