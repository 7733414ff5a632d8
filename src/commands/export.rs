//! `etl export`: subject access, for members of etl_recoverer. The user's rows are read through
//! `recovery.subject_rows`; their masks are recovered through the recovery service as `etl
//! recover` does (one audit row per mask, under the recovery policy); the rows go to stdout only.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use serde::Serialize;

use clap::{Args, ValueEnum};

use super::{DatabaseArgs, Outcome, OutputFormat};
use crate::adapters::postgres;
use crate::adapters::postgres::lifecycle::{self, SubjectAccess};
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::domain::{Justification, PiiField, UserId};
use crate::error::StdoutError;
use crate::recovery::{
    database_error, recover_masks, Answer, RecoverError, RequestOptions, CLIENT_CONNECTIONS,
};

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("user").required(true).args(["user_id", "from_file"])))]
pub struct ExportArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The user whose rows to export, exactly as in user_logins.user_id (byte for byte: spaces
    /// around it are part of it). `--from-file` keeps the id out of `ps` and shell history.
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,
    /// Read the user id from this file: its one line, exactly as written (`-` for stdin).
    #[arg(long, value_name = "PATH")]
    pub from_file: Option<std::path::PathBuf>,
    /// Why (for example "subject access request"). Required; recorded with every mask opened.
    #[arg(long)]
    pub reason: String,
    /// Ticket or case reference, recorded with every mask opened.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Output format on stdout: a JSON array of rows, or CSV with a header line.
    #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
    pub format: ExportFormat,
    /// How long to wait for the recovery service's answer, for example `30s`.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub wait: std::time::Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportFormat {
    Json,
    Csv,
}

/// Whose rows, why, and where the database is.
#[derive(Debug, Clone)]
pub struct ExportSettings {
    pub database: DatabaseSettings,
    pub user_id: UserId,
    pub why: Justification,
    pub format: ExportFormat,
    pub wait: std::time::Duration,
}

impl TryFrom<&ExportArgs> for ExportSettings {
    type Error = ConfigError;

    fn try_from(args: &ExportArgs) -> Result<Self, ConfigError> {
        Ok(Self {
            why: Justification::parse(
                &args.reason,
                args.ticket.as_deref(),
                "with every mask opened",
            )?,
            user_id: match (&args.user_id, &args.from_file) {
                (Some(id), _) => UserId::parse(id).ok_or_else(|| ConfigError::BadUserId {
                    given: "--user-id".to_owned(),
                })?,
                (None, Some(path)) => {
                    let text = super::read_input(path).map_err(ConfigError::UserFile)?;
                    let mut ids = text.lines().filter(|line| !line.trim().is_empty());
                    let id = ids.next().unwrap_or_default();
                    if ids.next().is_some() {
                        return Err(ConfigError::Invalid(
                            "--from-file holds more than one user id: export takes one",
                        ));
                    }
                    UserId::parse(id).ok_or_else(|| ConfigError::BadUserId {
                        given: "--from-file".to_owned(),
                    })?
                }
                (None, None) => {
                    return Err(ConfigError::Invalid("give --user-id or --from-file"));
                }
            },
            database: args.database.settings()?,
            format: args.format,
            wait: args.wait,
        })
    }
}

/// One row of the export: the row as analysts see it, with the original values beside the masks.
#[derive(Serialize)]
struct ExportedRow<'a> {
    user_id: Option<&'a str>,
    create_date: Option<NaiveDate>,
    device_type: Option<&'a str>,
    ip: Option<&'a str>,
    device_id: Option<&'a str>,
    locale: Option<&'a str>,
    app_version: Option<&'a str>,
    masked_ip: Option<&'a str>,
    masked_device_id: Option<&'a str>,
    message_id: Option<&'a str>,
}

pub async fn run(args: ExportArgs) -> anyhow::Result<Outcome> {
    let settings = ExportSettings::try_from(&args)?;
    let options = postgres::read_committed(settings.database.options);
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, CLIENT_CONNECTIONS);
    let rows = match lifecycle::subject_rows(&pool, settings.user_id.as_str(), &settings.why)
        .await
        .map_err(database_error(&pool))?
    {
        SubjectAccess::Rows(rows) => rows,
        SubjectAccess::Refused(why) => return Err(RecoverError::SubjectRefused(why).into()),
    };
    if rows.is_empty() {
        eprintln!("not found: user_logins has no row of this user");
        return Ok(Outcome::Negative);
    }
    let mut values: HashMap<(PiiField, String), String> = HashMap::new();
    for field in PiiField::ALL {
        let masks: BTreeSet<&str> = rows
            .iter()
            .filter_map(|row| match field {
                PiiField::Ip => row.masked_ip.as_deref(),
                PiiField::DeviceId => row.masked_device_id.as_deref(),
            })
            .collect();
        if masks.is_empty() {
            continue;
        }
        let masks: Vec<String> = masks.into_iter().map(str::to_owned).collect();
        let options = RequestOptions {
            wait: settings.wait,
            break_glass: false,
        };
        let recovered = match recover_masks(&pool, field, &masks, &settings.why, options).await? {
            Answer::Ready(recovered) => recovered,
            Answer::Pending(waiting) => return super::report_pending(&waiting, OutputFormat::Text),
        };
        for recovered in recovered {
            if let Some(value) = recovered.value {
                values.insert((field, recovered.mask), value);
            }
        }
    }
    let value = |field: PiiField, mask: Option<&String>| {
        mask.and_then(|mask| values.get(&(field, mask.clone())))
            .map(String::as_str)
    };
    let exported: Vec<ExportedRow<'_>> = rows
        .iter()
        .map(|row| ExportedRow {
            user_id: row.user_id.as_deref(),
            create_date: row.create_date,
            device_type: row.device_type.as_deref(),
            ip: value(PiiField::Ip, row.masked_ip.as_ref()),
            device_id: value(PiiField::DeviceId, row.masked_device_id.as_ref()),
            locale: row.locale.as_deref(),
            app_version: row.app_version_text.as_deref(),
            masked_ip: row.masked_ip.as_deref(),
            masked_device_id: row.masked_device_id.as_deref(),
            message_id: row.message_id.as_deref(),
        })
        .collect();
    match settings.format {
        ExportFormat::Json => outln!("{}", serde_json::to_string_pretty(&exported)?)?,
        ExportFormat::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout().lock());
            for row in &exported {
                out.serialize(row).map_err(|err| match err.into_kind() {
                    csv::ErrorKind::Io(io) => anyhow::Error::new(StdoutError(io)),
                    other => anyhow::anyhow!("cannot write a CSV row: {other:?}"),
                })?;
            }
            out.flush().map_err(StdoutError)?;
        }
    }
    Ok(Outcome::Success)
}
