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

use super::{DatabaseArgs, Outcome, OutputFormat};
use crate::adapters::postgres::{self, recovery};
use crate::configuration::{ConfigError, DatabaseSettings, MaskSource};
use crate::domain::{Justification, Mask, PiiField};
use crate::recovery::{recover_masks, Recovered, CLIENT_CONNECTIONS};

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

    /// How long to wait for the recovery service's answer, for example `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: Duration,
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
    pub wait: Duration,
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
            wait: args.wait,
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
    if let Some(RecoverCommand::Policy(command)) = &args.command {
        return policy(command).await.map(|()| Outcome::Success);
    }
    let settings = RecoverSettings::try_from(&args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, CLIENT_CONNECTIONS);
    let masks: Vec<String> = settings.masks.into_iter().map(Mask::into_string).collect();
    let results =
        recover_masks(&pool, settings.field, &masks, &settings.why, settings.wait).await?;
    print(&results, settings.bulk, settings.format)?;
    let all_found = results.iter().all(|r| r.value.is_some());
    Ok(if all_found {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

fn print(results: &[Recovered], bulk: bool, format: OutputFormat) -> anyhow::Result<()> {
    match (format, bulk, results) {
        (OutputFormat::Json, false, [one]) => println!("{}", serde_json::to_string(one)?),
        (OutputFormat::Text, false, [one]) => match &one.value {
            Some(value) => println!("{value}"),
            None => eprintln!("not found: no {} has this mask", one.field),
        },
        (OutputFormat::Json, _, _) => println!("{}", serde_json::to_string(results)?),
        (OutputFormat::Text, _, _) => {
            for result in results {
                println!(
                    "{}\t{}",
                    result.mask,
                    result.value.as_deref().unwrap_or("NOT FOUND")
                );
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
            ..
        } => {
            anyhow::ensure!(
                require_ticket.is_some() || daily_limit.is_some(),
                "give --require-ticket true|false, --daily-limit N, or both"
            );
            let daily_limit = daily_limit
                .map(i32::try_from)
                .transpose()
                .map_err(|_| anyhow::anyhow!("--daily-limit must be at most 2147483647"))?;
            recovery::set_policy(&pool, *require_ticket, daily_limit)
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
        OutputFormat::Json => println!("{}", serde_json::to_string(&policy)?),
        OutputFormat::Text => {
            let limit = match policy.daily_limit {
                0 => "no limit".to_owned(),
                n => format!("{n} values per database user per UTC day"),
            };
            println!("require ticket: {}", policy.require_ticket);
            println!("daily limit:    {limit}");
            println!(
                "last changed:   {} by {}",
                policy.updated_at.format("%Y-%m-%dT%H:%M:%SZ"),
                policy.updated_by
            );
        }
    }
    Ok(())
}
