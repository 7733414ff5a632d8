//! Raw command-line flags. `configuration` turns them into validated settings.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::adapters::sqs::SqsProtocol;

/// Moves user-login events from Amazon SQS into PostgreSQL, masking ip and device_id with a keyed
/// HMAC and sealing their original values in an encrypted vault.
///
/// AWS region, credentials and endpoint come from the AWS SDK's usual sources (AWS_REGION,
/// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, profiles, instance roles).
///
/// Exit codes: 0 success, 1 nothing found (`recover`), 2 error or denied.
#[derive(Debug, Parser)]
#[command(name = "etl", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, env = "ETL_LOG_FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log filter, in `tracing` EnvFilter syntax (for example `info` or `etl=debug`).
    #[arg(long, global = true, env = "ETL_LOG", default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

/// The command line; run as `bootstrap`, the name a Lambda custom runtime starts without
/// arguments, it reads as `etl lambda` (followed by any arguments given).
pub fn arguments() -> Vec<OsString> {
    with_bootstrap_as_lambda(std::env::args_os().collect())
}

fn with_bootstrap_as_lambda(mut args: Vec<OsString>) -> Vec<OsString> {
    let program = args.first().and_then(|arg| Path::new(arg).file_name());
    if program.is_some_and(|name| name == "bootstrap") {
        args.insert(1, "lambda".into());
    }
    args
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema migrations in `migrations/` (same as `sqlx migrate run`).
    Migrate(DatabaseArgs),
    /// Manage the data keys (mask, vault and quarantine) wrapped by KMS: create, rotate, re-seal,
    /// re-mask, retire, re-wrap, list.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Consume the queue into `user_logins`, the vault and quarantine.
    Ingest(IngestArgs),
    /// Run as an AWS Lambda function behind an SQS event source mapping: each event's messages
    /// go through the same validation, masking, vault and quarantine as `ingest`, committed as
    /// one transaction; what could not be committed is returned in `batchItemFailures`. A binary
    /// named `bootstrap` (the custom runtime's entry point) runs this command.
    Lambda(LambdaArgs),
    /// Recover the original value of a mask (for members of etl_recoverer; every call is audited),
    /// or show and set the recovery policy (`etl recover policy`).
    Recover(RecoverArgs),
    /// Check and anchor the tamper-evident audit log of recoveries and quarantine openings.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Check configuration, database, migrations, roles, queue, KMS and data keys; one line per
    /// check, with what to do for each failure. Exit code 0 only if all pass.
    Doctor(DoctorArgs),
    /// Inspect quarantined messages, open one on record, replay them after a rule change, purge
    /// old ones.
    #[command(subcommand)]
    Quarantine(QuarantineCommand),
    /// Erase a person (for members of etl_privacy): their rows, the vault entries only they
    /// used, their quarantined messages; their later events are dropped. Exit 0 when something
    /// was removed, 1 when nothing was found, 2 on error.
    Forget(ForgetArgs),
    /// Subject access (for members of etl_recoverer): every row of one user with ip and
    /// device_id recovered, on record (one audit row per mask), on stdout only.
    Export(ExportArgs),
    /// Delete what is older than the retention settings stored in the database.
    #[command(subcommand)]
    Retention(RetentionCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(DevCommand),
}

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, for example postgres://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the mask key and the vault key under a KMS key. Idempotent: when both exist, nothing
    /// changes.
    Init {
        #[command(flatten)]
        database: DatabaseArgs,
        /// KMS key that wraps the data keys: key id, key ARN, alias name or alias ARN.
        #[arg(long, env = "ETL_KMS_KEY_ID")]
        kms_key_id: String,
    },
    /// Create a new version of a data key. Vault: ingest seals new entries with it at once
    /// (running processes reload), and no longer with older versions; `etl keys reseal` moves the
    /// existing entries to it. Quarantine: new bodies are sealed to it. Mask: the new version is
    /// pending until `etl keys remask` has moved every mask to it (see SECURITY.md, "Rotation").
    Rotate {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Which key to rotate.
        #[arg(long, value_enum)]
        purpose: PurposeArg,
        /// KMS key for the new version [default: the KMS key of the current version].
        #[arg(long, env = "ETL_KMS_KEY_ID")]
        kms_key_id: Option<String>,
    },
    /// Re-wrap every stored data key under another KMS key (for a KMS key retirement). The data
    /// keys themselves, and so every mask and ciphertext, stay the same.
    Rewrap {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The KMS key to wrap under from now on.
        #[arg(long)]
        kms_key_id: String,
    },
    /// List the data keys: purpose, version, state, KMS key, creation time, and how many vault
    /// entries, quarantine rows, user_logins rows and suppression-list rows use each version
    /// (never key material).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Re-encrypt every vault entry, and every quarantined body sealed under a vault key, under
    /// the newest vault key version: in batches, each its own transaction, safe beside ingest and
    /// recover, resumable (run it again after an interruption). Needs KMS Decrypt on every vault
    /// key version.
    Reseal {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Rows per transaction.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Delete the wrapped key of a vault or quarantine key version that nothing uses any more.
    /// Refused (exit 2, with the counts) while vault entries or quarantine rows use it, or while
    /// ingest may still seal with it.
    #[command(disable_version_flag = true)]
    Retire {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Which key.
        #[arg(long, value_enum)]
        purpose: PurposeArg,
        /// The version to retire.
        #[arg(long)]
        version: i32,
    },
    /// Move every mask to the pending mask key version (`etl keys rotate --purpose mask`), then
    /// make it the active one: new vault entries first (beside a running ingest, resumable), then
    /// one switch transaction that rewrites user_logins and the quarantine's user hashes while
    /// ingest waits, then the old entries are deleted. Running ingest processes switch without a
    /// restart. Needs KMS Decrypt on the vault keys, the quarantine keys and the mask keys.
    Remask {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Vault entries per transaction before the switch.
        #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
        batch: i64,
        /// Output format of the summary.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PurposeArg {
    Mask,
    Vault,
    Quarantine,
}

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

    /// Database URL of the recovering user, who must be a member of etl_recoverer. (Not the shared
    /// `DatabaseArgs`: with `etl recover policy`, this level's arguments are not required.)
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
}

#[derive(Debug, Subcommand)]
pub enum RecoverCommand {
    /// The recovery policy, enforced by the database for every recovery and quarantine opening.
    #[command(subcommand)]
    Policy(PolicyCommand),
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

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chain of the audit log. Exit 0 when it holds, 1 when a row was changed,
    /// removed or inserted out of order (the first bad id is named), 2 on error.
    Verify {
        #[command(flatten)]
        database: DatabaseArgs,
        /// A head printed earlier by `etl audit head` (`ID:HASH`): also check that this row still
        /// has this hash, which detects rows removed or rewritten after it was taken.
        #[arg(long, value_name = "ID:HASH")]
        anchor: Option<String>,
    },
    /// Print the chain head (id and hash of the newest row), to keep outside the database.
    Head {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// URL of the SQS queue to consume.
    #[arg(long, env = "ETL_QUEUE_URL", required_unless_present = "from_file")]
    pub queue_url: Option<String>,

    /// Read one JSON body per line from this file (`-` for stdin) instead of SQS: a backfill or a
    /// dead-letter queue export, through the same validation, masking, vault and quarantine.
    /// Each line's id is `file:<fingerprint of the first line>:<line number>`; replaying the
    /// file, or a longer one that starts with it, writes nothing twice. Ends at the end of the
    /// input.
    #[arg(long, value_name = "PATH", conflicts_with = "drain")]
    pub from_file: Option<PathBuf>,

    /// SQS wire protocol: `auto` probes once at start (AWS JSON, then Query); `query` is what the
    /// reference LocalStack 0.14 image speaks.
    #[arg(long, value_enum, env = "ETL_SQS_PROTOCOL", default_value_t = SqsProtocol::Auto)]
    pub sqs_protocol: SqsProtocol,

    /// Exit when the queue is empty (an empty receive, then zero visible and zero in-flight
    /// messages) and print a summary, instead of running until SIGINT/SIGTERM.
    #[arg(long)]
    pub drain: bool,

    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    pub summary_json: bool,

    /// Concurrent `ReceiveMessage` calls (10 messages each). They stop receiving while the
    /// writers are behind. [default: 16]
    #[arg(long, env = "ETL_RECEIVERS")]
    pub receivers: Option<usize>,

    /// Concurrent write transactions. [default: 4]
    #[arg(long, env = "ETL_WRITERS")]
    pub writers: Option<usize>,

    /// Largest write batch, in messages: received messages are coalesced into transactions of
    /// up to this many (with --from-file, consecutive lines). `--batch-size` is an old name.
    #[arg(
        long,
        env = "ETL_BATCH_MESSAGES",
        default_value_t = 2000,
        alias = "batch-size"
    )]
    pub batch_messages: usize,

    /// Longest a received message waits for its batch to fill before the batch is written
    /// anyway, for example `500ms` or `2s`; at most half the visibility timeout.
    #[arg(long, env = "ETL_BATCH_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch_wait: std::time::Duration,

    /// Deprecated: sets both --receivers and --writers where those are not given.
    #[arg(long, env = "ETL_POLLERS", hide = true)]
    pub pollers: Option<usize>,

    /// Long-poll wait per receive, 0 to 20 seconds [default: 20, or 1 with --drain so the run
    /// ends promptly once the queue is empty].
    #[arg(long, env = "ETL_WAIT_SECONDS")]
    pub wait_seconds: Option<u8>,

    /// Seconds a received message stays hidden from other consumers. A batch still in flight at
    /// half this time gets it extended (a heartbeat), so this bounds only how long a crashed
    /// consumer's messages wait before redelivery.
    #[arg(long, env = "ETL_VISIBILITY_TIMEOUT", default_value_t = 30)]
    pub visibility_timeout: u64,

    /// After this many receives (SQS ApproximateReceiveCount), a message that still cannot be
    /// written is quarantined instead of returned to the queue, so one poison message cannot
    /// block it. Keep it below the maxReceiveCount of the queue's redrive policy, if it has one.
    #[arg(long, env = "ETL_MAX_RECEIVES", default_value_t = 10)]
    pub max_receives: i32,

    /// Address of the operations endpoint: Prometheus /metrics, /healthz and /readyz. Port 0
    /// picks a free port (logged at start).
    #[arg(long, env = "ETL_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: std::net::SocketAddr,

    /// Database connections [default: writers + 2].
    #[arg(long, env = "ETL_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,
}

#[derive(Debug, Args)]
pub struct LambdaArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    /// After this many receives (the record's ApproximateReceiveCount), a message that still
    /// cannot be written is quarantined instead of failed again. Keep it below the
    /// maxReceiveCount of the queue's redrive policy.
    #[arg(long, env = "ETL_MAX_RECEIVES", default_value_t = 10)]
    pub max_receives: i32,

    /// Database connections of one function instance. An instance handles one event at a time,
    /// which needs one connection; at high concurrency put a connection proxy (RDS Proxy,
    /// PgBouncer) in front of PostgreSQL.
    #[arg(long, env = "ETL_DB_MAX_CONNECTIONS", default_value_t = 2)]
    pub db_max_connections: u32,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// URL of the SQS queue.
    #[arg(long, env = "ETL_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// KMS key that wraps (or will wrap) the data keys.
    #[arg(long, env = "ETL_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
    /// SQS wire protocol to check.
    #[arg(long, value_enum, env = "ETL_SQS_PROTOCOL", default_value_t = SqsProtocol::Auto)]
    pub sqs_protocol: SqsProtocol,
}

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
    /// committed to the audit log first, then the body is fetched, unsealed and printed on stdout.
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
}

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("users").required(true).multiple(true).args(["user_id", "from_file"])))]
pub struct ForgetArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The user id to erase, exactly as in user_logins.user_id.
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,
    /// Read user ids from this file, one per line (`-` for stdin; blank lines are skipped).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<PathBuf>,
    /// Why (for example the request's legal basis). Required; recorded in each erasure receipt.
    #[arg(long)]
    pub reason: String,
    /// Ticket or case reference, recorded in each erasure receipt.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Count what would be removed, change nothing and write no receipt.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The user whose rows to export, exactly as in user_logins.user_id.
    #[arg(long, value_name = "ID")]
    pub user_id: String,
    /// Why (for example "subject access request"). Required; recorded with every mask opened.
    #[arg(long)]
    pub reason: String,
    /// Ticket or case reference, recorded with every mask opened.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Output format on stdout: a JSON array of rows, or CSV with a header line.
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
}

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
        /// times as long as the chunk took (as gh-ost's --nice-ratio). 0 runs flat out.
        #[arg(long, value_name = "RATIO", default_value_t = 5.0)]
        nice_ratio: f64,
        /// Also write the pass's figures to this file in the Prometheus text format, for
        /// node_exporter's textfile collector (written whole, then renamed into place).
        #[arg(long, value_name = "PATH")]
        metrics_file: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
pub struct QuarantineReplayArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Only messages quarantined for this reason code (as `etl quarantine list` shows it).
    #[arg(long, value_name = "CODE")]
    pub reason_code: Option<String>,
    /// Only this message.
    #[arg(long, value_name = "ID")]
    pub id: Option<String>,
    /// Validate with today's rules and count, write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Send synthetic login events (or the lines of a file) to a queue with SendMessageBatch.
    Seed(SeedArgs),
    /// Print synthetic login events on stdout, one JSON body per line (for `ingest --from-file`
    /// and benchmarks).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of bodies.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The shape of synthetic events.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// Share of synthetic events with `"locale": null`.
    #[arg(long, default_value_t = 0.29)]
    pub null_locale_share: f64,

    /// Share of synthetic events that reuse an ip and a device_id already sent.
    #[arg(long, default_value_t = 0.2)]
    pub duplicate_share: f64,

    /// Share of synthetic messages that are malformed.
    #[arg(long, default_value_t = 0.01)]
    pub malformed_share: f64,

    /// Random seed, for a reproducible set of messages.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// URL of the SQS queue to fill.
    #[arg(long, env = "ETL_QUEUE_URL")]
    pub queue_url: String,

    /// Number of synthetic messages to send (ignored with --from-file).
    #[arg(long, default_value_t = 100)]
    pub count: usize,

    /// Send each line of this file as one message body, byte for byte, instead of synthetic
    /// events (`-` reads stdin).
    #[arg(long)]
    pub from_file: Option<PathBuf>,

    #[command(flatten)]
    pub shape: ShapeArgs,

    /// Concurrent SendMessageBatch calls.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// A usage error in at most two lines: clap's first line (a missing option named with its
/// variable) and where to read more. `None` for `--help` and `--version`, which clap prints.
pub fn usage_message(err: &clap::Error) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    const MORE: &str = "For more information, try '--help'.";
    match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => return None,
        ErrorKind::MissingRequiredArgument => {
            if let Some(ContextValue::Strings(missing)) = err.get(ContextKind::InvalidArg) {
                let names: Vec<String> = missing.iter().map(|arg| with_variable(arg)).collect();
                return Some(format!(
                    "error: {} is required and not set\n{MORE}",
                    names.join(", ")
                ));
            }
        }
        _ => {}
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .map(str::trim_end)
        .find(|line| !line.is_empty())
        .unwrap_or("error: invalid arguments");
    Some(format!("{first}\n{MORE}"))
}

/// `--database-url <DATABASE_URL>` as `--database-url / DATABASE_URL`, where the flag has a
/// variable.
fn with_variable(arg: &str) -> String {
    let flag = arg.split_whitespace().next().unwrap_or(arg);
    let long = flag.trim_start_matches('-');
    let variable = variable_of(&Cli::command(), long);
    match variable {
        Some(variable) => format!("{flag} / {variable}"),
        None => flag.to_owned(),
    }
}

fn variable_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| variable_of(sub, long))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_is_well_formed() {
        // clap checks argument names (e.g. `keys retire --version` against the version flag)
        // only when a subcommand is built; this builds them all.
        Cli::command().debug_assert();
    }

    #[test]
    fn keys_retire_takes_a_version() {
        let cli = parsed(&[
            "etl",
            "keys",
            "retire",
            "--database-url",
            "postgres://x/y",
            "--purpose",
            "vault",
            "--version",
            "3",
        ]);
        assert!(matches!(
            cli.command,
            Command::Keys(KeysCommand::Retire { version: 3, .. })
        ));
    }

    fn parsed(args: &[&str]) -> Cli {
        Cli::parse_from(with_bootstrap_as_lambda(
            args.iter().map(OsString::from).collect(),
        ))
    }

    #[test]
    fn bootstrap_runs_the_lambda_command() {
        let cli = parsed(&["/var/task/bootstrap", "--database-url", "postgres://h/db"]);
        assert!(matches!(cli.command, Command::Lambda(_)), "{cli:?}");
        let cli = parsed(&[
            "target/release/etl",
            "migrate",
            "--database-url",
            "postgres://h/db",
        ]);
        assert!(matches!(cli.command, Command::Migrate(_)), "{cli:?}");
    }
}
