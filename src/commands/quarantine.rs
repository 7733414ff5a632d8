//! `etl quarantine list` (metadata only) and `etl quarantine show` (one body, on record).

use std::io::Write;

use anyhow::Context;
use zeroize::Zeroizing;

use super::recover::{database_error, RecoverError};
use super::Outcome;
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{quarantine, recovery};
use crate::cli::{DatabaseArgs, OutputFormat, QuarantineShowArgs};
use crate::crypto::{KeyPurpose, QuarantineOpener, Sealer};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

pub async fn list(database: &DatabaseArgs, format: OutputFormat, limit: i64) -> anyhow::Result<()> {
    anyhow::ensure!(limit > 0, "--limit must be at least 1");
    let pool = super::pool(database).await?;
    let entries = quarantine::list(&pool, limit)
        .await
        .context("reading etl.quarantine (the owner and etl_recoverer may)")?;
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&entries)?),
        OutputFormat::Text => {
            if entries.is_empty() {
                println!("quarantine is empty");
            }
            for entry in &entries {
                println!(
                    "{}  {}  {:<24}  {}",
                    entry.received_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    entry.message_id,
                    entry.reason,
                    entry.detail
                );
            }
        }
    }
    Ok(())
}

/// Opens one quarantined body on record: the request is committed to the audit log (under the
/// recovery policy) before the sealed body and its wrapped key are fetched; KMS unwraps the key;
/// the body goes to stdout and nowhere else.
pub async fn show(args: &QuarantineShowArgs) -> anyhow::Result<Outcome> {
    let reason = args.reason.trim();
    anyhow::ensure!(
        !reason.is_empty(),
        "--reason must say why the body is needed; it is recorded in the audit log"
    );
    let message_id = args.message_id.trim().to_owned();
    anyhow::ensure!(!message_id.is_empty(), "give the quarantined message's id");
    let ticket = args
        .ticket
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let pool = super::audit_pool(&args.database).await?;
    let request_id = recovery::request_quarantine(&pool, &[message_id], reason, ticket)
        .await
        .map_err(database_error(&pool))?;
    let rows = recovery::fetch_quarantine(&pool, request_id)
        .await
        .map_err(database_error(&pool))?;
    let [row] = rows.as_slice() else {
        anyhow::bail!("the quarantine request returned {} rows, not 1", rows.len());
    };
    match row.outcome.as_str() {
        "refused" => {
            return Err(RecoverError::Refused(row.detail.clone().unwrap_or_default()).into())
        }
        "not_found" => {
            eprintln!("not found: no quarantined message has this id");
            return Ok(Outcome::Negative);
        }
        _ => {}
    }
    let (Some(sealed), Some(purpose), Some(version), Some(kms_key_id), Some(wrapped)) = (
        &row.body_ciphertext,
        row.key_purpose.as_deref().and_then(KeyPurpose::parse),
        row.key_version,
        &row.kms_key_id,
        &row.wrapped_key,
    ) else {
        anyhow::bail!(
            "quarantined message {} has no key on record",
            row.message_id
        );
    };
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let key = kms
        .unwrap_data_key(kms_key_id, purpose, version, wrapped)
        .await
        .map_err(RecoverError::from)?;
    let body = match purpose {
        KeyPurpose::Quarantine => QuarantineOpener::new(&key).open(&row.message_id, sealed),
        _ => Sealer::new(&key).open_body(&row.message_id, sealed),
    }
    .map_err(|source| {
        anyhow::anyhow!(
            "quarantined body {} does not open: {source}",
            row.message_id
        )
    })?;
    let mut stdout = std::io::stdout().lock();
    match args.format {
        OutputFormat::Text => {
            stdout.write_all(&body)?;
            stdout.write_all(b"\n")?;
        }
        OutputFormat::Json => {
            #[derive(serde::Serialize)]
            struct Opened<'a> {
                message_id: &'a str,
                body: &'a str,
            }
            let body = Zeroizing::new(String::from_utf8_lossy(&body).into_owned());
            let json = Zeroizing::new(serde_json::to_string(&Opened {
                message_id: &row.message_id,
                body: &body,
            })?);
            writeln!(stdout, "{}", json.as_str())?;
        }
    }
    Ok(Outcome::Success)
}
