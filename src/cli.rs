//! The top-level parser and the usage message. Each command's flags live with the command
//! (`commands::<name>`).

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, Parser, Subcommand};

use crate::commands::{
    audit, dev, doctor, export, forget, ingest, keys, lambda, quarantine, recover,
    recovery_service, retention, DatabaseArgs, LogFormatArg,
};

/// Moves user-login events from Amazon SQS into PostgreSQL, masking ip and device_id with a keyed
/// HMAC and sealing their original values in an encrypted vault.
///
/// AWS region, credentials and endpoint come from the AWS SDK's usual sources (AWS_REGION,
/// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, profiles, instance roles).
///
/// Exit codes: 0 success, 1 a negative answer (see each command's help), 2 an error or a denial.
#[derive(Debug, Parser)]
#[command(name = "etl", version, propagate_version = true)]
pub struct Cli {
    /// Log line format on stderr.
    #[arg(long, global = true, value_enum, env = "ETL_LOG_FORMAT", default_value_t = LogFormatArg::Text)]
    pub log_format: LogFormatArg,

    /// Log filter, in `tracing` EnvFilter syntax (for example `info` or `etl=debug`).
    #[arg(long, global = true, env = "ETL_LOG", default_value = "info")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply the schema migrations in `migrations/` (same as `sqlx migrate run`).
    Migrate(DatabaseArgs),
    /// Manage the data keys (mask, vault and quarantine) wrapped by KMS: create, rotate, re-seal,
    /// re-mask, retire, re-wrap, list.
    #[command(subcommand)]
    Keys(keys::KeysCommand),
    /// Consume the queue into `user_logins`, the vault and quarantine.
    Ingest(ingest::IngestArgs),
    /// Run as an AWS Lambda function behind an SQS event source mapping: each event's messages
    /// go through the same validation, masking, vault and quarantine as `ingest`, committed as
    /// one transaction; what could not be committed is returned in `batchItemFailures`. A binary
    /// named `bootstrap` (the custom runtime's entry point) runs this command.
    Lambda(lambda::LambdaArgs),
    /// Recover the original value of a mask (for members of etl_recoverer; every call is audited),
    /// or show and set the recovery policy (`etl recover policy`).
    Recover(recover::RecoverArgs),
    /// Open recovery requests (for a login in etl_opener, with KMS Decrypt on the vault and
    /// quarantine keys): the only process that unwraps those keys; clients need neither.
    RecoveryService(recovery_service::RecoveryServiceArgs),
    /// Check and anchor the tamper-evident audit log of recoveries and quarantine openings.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Check configuration, database, migrations, roles, queue, KMS and data keys; one line per
    /// check, with what to do for each failure. Exit code 0 only if all pass.
    Doctor(doctor::DoctorArgs),
    /// Inspect quarantined messages, open one on record, replay them after a rule change, purge
    /// old ones.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Erase a person (for members of etl_privacy): their rows, the vault entries only they
    /// used, their quarantined messages; their later events are dropped. Exit 0 when something
    /// was removed, 1 when nothing was found, 2 on error.
    Forget(forget::ForgetArgs),
    /// Subject access (for members of etl_recoverer): every row of one user with ip and
    /// device_id recovered, on record (one audit row per mask), on stdout only.
    Export(export::ExportArgs),
    /// Delete what is older than the retention settings stored in the database.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(dev::DevCommand),
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
                let names = names.join(", ");
                return Some(format!("error: {names} is required and not set\n{MORE}"));
            }
        }
        _ => {}
    }
    let rendered = err.render().to_string();
    let first = rendered
        .lines()
        .map(str::trim_end)
        .find(|line| !line.is_empty());
    Some(format!(
        "{}\n{MORE}",
        first.unwrap_or("error: invalid arguments")
    ))
}

/// `--database-url <DATABASE_URL>` as `--database-url / DATABASE_URL`, where the flag has a
/// variable.
fn with_variable(arg: &str) -> String {
    let flag = arg.split_whitespace().next().unwrap_or(arg);
    match variable_of(&Cli::command(), flag.trim_start_matches('-')) {
        Some(variable) => format!("{flag} / {variable}"),
        None => flag.to_owned(),
    }
}

fn variable_of(command: &clap::Command, long: &str) -> Option<String> {
    let own = command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long));
    own.and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| {
            command
                .get_subcommands()
                .find_map(|sub| variable_of(sub, long))
        })
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
