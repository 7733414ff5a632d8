//! The top-level parser and the usage message. Each command's flags live with the command
//! (`commands::<name>`).

use std::ffi::OsString;
use std::path::Path;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::commands::{
    self, audit, dev, doctor, domains, export, forget, ingest, keys, lambda, privacy, quarantine,
    recover, recovery_service, retention, DatabaseArgs, LogFormatArg,
};

/// Moves user-login events from Amazon SQS into PostgreSQL, masking ip and device_id with a keyed
/// HMAC and sealing their original values in an encrypted vault.
///
/// AWS region, credentials and endpoint come from the AWS SDK's usual sources (AWS_REGION,
/// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, profiles, instance roles).
#[derive(Debug, Parser)]
#[command(name = "etl", version, propagate_version = true, after_help = commands::EXIT_CODES)]
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
    /// Manage the data keys (mask, vault, quarantine and user) wrapped by KMS: create, rotate, re-seal,
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
    /// Check configuration, database, this login's roles and access, migrations, queue, KMS and
    /// data keys; one line per check, with what to do for each failure.
    Doctor(doctor::DoctorArgs),
    /// Inspect quarantined messages, open one on record, replay them after a rule change, purge
    /// old ones.
    #[command(subcommand)]
    Quarantine(quarantine::QuarantineCommand),
    /// Erase a person (for members of etl_privacy): their rows, the vault entries only they
    /// used, their quarantined messages; their later events are dropped.
    Forget(forget::ForgetArgs),
    /// Subject access (for members of etl_recoverer): every row of one user with ip and
    /// device_id recovered, on record (one audit row per mask), on stdout only.
    Export(export::ExportArgs),
    /// Delete what is older than the retention settings stored in the database.
    #[command(subcommand)]
    Retention(retention::RetentionCommand),
    /// Pseudonymisation domains: each with a mask key of its own, a table domains.NAME that ingest
    /// fills, and a reader role etl_domain_NAME.
    #[command(subcommand)]
    Domains(domains::DomainsCommand),
    /// How well user_logins hides the people behind it (a re-identification risk report), and
    /// the pseudonymisation's checks that a program can verify.
    #[command(subcommand)]
    Privacy(privacy::PrivacyCommand),
    /// Development helpers.
    #[command(subcommand)]
    Dev(dev::DevCommand),
}

/// Parses the command line, with each command's exit-status line (from the one table in
/// `commands`) at the end of its `--help`.
pub fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    let matches = command().try_get_matches_from(args)?;
    Cli::from_arg_matches(&matches)
}

/// The parser's description, each command's help ending with its exit-status line.
pub fn command() -> clap::Command {
    with_exit_status(Cli::command(), "")
}

fn with_exit_status(command: clap::Command, path: &str) -> clap::Command {
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    // Every command that runs (`recover` runs itself and has subcommands too); not the groups.
    let command = if command.is_subcommand_required_set() || path.is_empty() {
        command
    } else {
        command.after_help(commands::exit_status(path))
    };
    names.into_iter().fold(command, |command, name| {
        let sub_path = if path.is_empty() {
            name.clone()
        } else {
            format!("{path} {name}")
        };
        command.mut_subcommand(&name, |sub| with_exit_status(sub, &sub_path))
    })
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
/// variable; a required group (`<--masked-ip [<MASK>]|--masked-device-id [<MASK>]>`) as
/// `one of --masked-ip, --masked-device-id`.
fn with_variable(arg: &str) -> String {
    // A group (`<--a|--b>`), not a positional value (`<ID>`).
    if let Some(group) = arg
        .strip_prefix('<')
        .and_then(|rest| rest.strip_suffix('>'))
        .filter(|group| group.contains('|'))
    {
        let flags: Vec<String> = group.split('|').map(with_variable).collect();
        return format!("one of {}", flags.join(", "));
    }
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
