//! `etl export`: subject access, for members of etl_recoverer. The user's rows are read through
//! `recovery.subject_rows`; their masks are recovered through the same audited two-step path as
//! `etl recover` (one audit row per mask, under the recovery policy); the rows go to stdout only.

use std::collections::{BTreeSet, HashMap};

use chrono::NaiveDate;
use serde::Serialize;

use super::recover::{database_error, recover_masks};
use super::Outcome;
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, lifecycle};
use crate::cli::{ExportArgs, ExportFormat};
use crate::configuration::{self, DatabaseSettings};
use crate::domain::PiiField;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

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

pub async fn run(args: &ExportArgs) -> anyhow::Result<Outcome> {
    let reason = args.reason.trim();
    anyhow::ensure!(
        !reason.is_empty(),
        "--reason must say why; it is recorded with every mask opened"
    );
    let ticket = configuration::ticket(args.ticket.as_deref());
    let user_id = args.user_id.trim();
    anyhow::ensure!(!user_id.is_empty(), "--user-id must not be empty");
    let settings = DatabaseSettings::try_from(&args.database)?;
    let options = postgres::read_committed(settings.options);
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, 1);
    let rows = lifecycle::subject_rows(&pool, user_id)
        .await
        .map_err(database_error(&pool))?;
    if rows.is_empty() {
        eprintln!("not found: user_logins has no row of this user");
        return Ok(Outcome::Negative);
    }
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let mut values: HashMap<(PiiField, String), String> = HashMap::new();
    for field in [PiiField::Ip, PiiField::DeviceId] {
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
        for recovered in
            recover_masks(&pool, &kms, field, &masks, reason, ticket.as_deref()).await?
        {
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
    match args.format {
        ExportFormat::Json => println!("{}", serde_json::to_string_pretty(&exported)?),
        ExportFormat::Csv => {
            let mut out = csv::Writer::from_writer(std::io::stdout().lock());
            for row in &exported {
                out.serialize(row)?;
            }
            out.flush()?;
        }
    }
    Ok(Outcome::Success)
}
