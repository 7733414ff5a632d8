//! One module per subcommand: each builds its settings, runs, and prints its result on stdout.

mod audit;
mod doctor;
mod export;
mod forget;
mod ingest;
mod keys;
mod lambda;
mod migrate;
mod quarantine;
mod recover;
mod remask;
mod reseal;
mod retention;
mod seed;

use sqlx::PgPool;

use crate::adapters::postgres;
use crate::cli::{AuditCommand, Command, DevCommand, KeysCommand, QuarantineCommand};
use crate::configuration::DatabaseSettings;

/// How a command that ran without error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// A negative answer (exit code 1): a mask or quarantined message not found, a doctor check
    /// failed, or an audit chain that does not hold.
    Negative,
}

/// Runs a parsed command.
pub async fn run(command: Command) -> anyhow::Result<Outcome> {
    match command {
        Command::Recover(args) => return recover::run(&args).await,
        Command::Quarantine(QuarantineCommand::Show(args)) => return quarantine::show(&args).await,
        Command::Quarantine(QuarantineCommand::Replay(args)) => {
            return quarantine::replay(&args).await
        }
        Command::Quarantine(QuarantineCommand::Purge {
            database,
            older_than,
            dry_run,
        }) => quarantine::purge(&database, older_than, dry_run).await,
        Command::Forget(args) => return forget::run(&args).await,
        Command::Export(args) => return export::run(&args).await,
        Command::Retention(command) => retention::run(&command).await,
        Command::Audit(AuditCommand::Verify { database, anchor }) => {
            return audit::verify(&database, anchor.as_deref()).await
        }
        Command::Audit(AuditCommand::Head { database, format }) => {
            audit::head(&database, format).await
        }
        Command::Doctor(args) => return doctor::run(&args).await,
        Command::Migrate(database) => migrate::run(&database).await,
        Command::Keys(KeysCommand::Init {
            database,
            kms_key_id,
        }) => keys::init(&database, &kms_key_id).await,
        Command::Keys(KeysCommand::Rotate {
            database,
            purpose,
            kms_key_id,
        }) => keys::rotate(&database, purpose, kms_key_id.as_deref()).await,
        Command::Keys(KeysCommand::Rewrap {
            database,
            kms_key_id,
        }) => keys::rewrap(&database, &kms_key_id).await,
        Command::Keys(KeysCommand::List { database, format }) => {
            keys::list(&database, format).await
        }
        Command::Keys(KeysCommand::Reseal {
            database,
            batch,
            format,
        }) => reseal::run(&database, batch, format).await,
        Command::Keys(KeysCommand::Retire {
            database,
            purpose,
            version,
        }) => keys::retire(&database, purpose, version).await,
        Command::Keys(KeysCommand::Remask {
            database,
            batch,
            format,
        }) => remask::run(&database, batch, format).await,
        Command::Ingest(args) => ingest::run(&args).await,
        Command::Lambda(args) => lambda::run(&args).await,
        Command::Quarantine(QuarantineCommand::List {
            database,
            format,
            limit,
        }) => quarantine::list(&database, format, limit).await,
        Command::Dev(DevCommand::Seed(args)) => seed::run(&args).await,
        Command::Dev(DevCommand::Generate(args)) => seed::generate(&args),
    }?;
    Ok(Outcome::Success)
}

/// A one-connection pool for commands that append to the audit log: READ COMMITTED whatever the
/// server's default, which the append trigger requires.
async fn audit_pool(database: &crate::cli::DatabaseArgs) -> anyhow::Result<PgPool> {
    audit_pool_of(database, 1).await
}

/// [`audit_pool`] with `max_connections`.
async fn audit_pool_of(
    database: &crate::cli::DatabaseArgs,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    let settings = DatabaseSettings::try_from(database)?;
    checked_pool(postgres::read_committed(settings.options), max_connections).await
}

/// A small pool for one-shot commands.
async fn pool(database: &crate::cli::DatabaseArgs) -> anyhow::Result<PgPool> {
    let settings = DatabaseSettings::try_from(database)?;
    checked_pool(settings.options, 2).await
}

/// A pool whose server has just accepted a connection: a one-shot command that cannot connect
/// fails at once, with the cause in words.
async fn checked_pool(
    options: sqlx::postgres::PgConnectOptions,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    postgres::check_connection(&options).await?;
    Ok(postgres::pool(options, max_connections))
}

/// A progress bar for a long pass of a command, shown on a terminal only (elsewhere the command
/// logs a line per step); the caller enters the span and moves it with `pb_inc`.
fn progress(what: &str, total: u64) -> tracing::Span {
    use std::io::IsTerminal;
    use tracing_indicatif::span_ext::IndicatifSpanExt;
    let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
    if std::io::stderr().is_terminal() {
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{wide_bar}} {{human_pos}}/{{human_len}} ({{eta}})"
        )) {
            span.pb_set_style(&style);
        }
        span.pb_set_length(total);
    }
    span
}
