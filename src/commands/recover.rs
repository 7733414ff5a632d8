//! `etl recover`: audited recovery of original values, for members of etl_recoverer.
//!
//! 1. `recovery.request` records who asks for which masks and why, and commits.
//! 2. `recovery.fetch` returns the ciphertexts and the wrapped vault keys of that request.
//! 3. KMS unwraps each vault key version once (key id and encryption context presented).
//! 4. The ciphertexts are opened and the values printed on stdout, and nowhere else.
//!
//! The database enforces the recovery policy in step 1: a request without a required ticket, or
//! over the daily limit, is recorded as refused and nothing can be fetched for it.

use std::collections::hash_map::{Entry, HashMap};

use anyhow::Context;

use serde::Serialize;

use super::Outcome;
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, recovery};
use crate::cli::{OutputFormat, PolicyCommand, RecoverArgs, RecoverCommand};
use crate::configuration::RecoverSettings;
use crate::crypto::{KeyPurpose, Sealer};
use crate::domain::PiiField;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "the database refused the recovery: your database user needs the etl_recoverer role \
         (an administrator runs: GRANT etl_recoverer TO <your user>)"
    )]
    NotRecoverer,
    #[error("a recovery request must be committed before its values are fetched")]
    NotCommitted,
    #[error(
        "the audit log is held by another session's open transaction; try again, and ask an \
         administrator to look for idle transactions of recoverers"
    )]
    Busy,
    #[error("the recovery policy refused the request: {0} (recorded in the audit log)")]
    Refused(String),
    #[error("during recovery: {0}")]
    Database(#[source] postgres::DatabaseError),
    #[error(transparent)]
    Unwrap(#[from] crate::adapters::kms::UnwrapError),
    #[error("vault entry for mask {mask} does not open: {source}")]
    Open {
        mask: String,
        source: crate::crypto::SealError,
    },
    #[error("vault entry for mask {mask} has no vault key on record")]
    MissingKey { mask: String },
}

/// The conversion of the recovery functions' errors on `pool`.
pub(super) fn database_error(pool: &sqlx::PgPool) -> impl Fn(sqlx::Error) -> RecoverError + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            RecoverError::NotRecoverer
        }
        // recovery.fetch in the request's own transaction, or a wait for the audit chain that
        // timed out (another session holds it in an open transaction).
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55000") => {
            RecoverError::NotCommitted
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => RecoverError::Busy,
        _ => RecoverError::Database(postgres::DatabaseError::on(pool)(err)),
    }
}

#[derive(Serialize)]
pub(super) struct Recovered {
    pub field: &'static str,
    pub mask: String,
    pub outcome: String,
    pub value: Option<String>,
}

pub async fn run(args: &RecoverArgs) -> anyhow::Result<Outcome> {
    if let Some(RecoverCommand::Policy(command)) = &args.command {
        return policy(command).await.map(|()| Outcome::Success);
    }
    let settings = RecoverSettings::try_from(args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, 1);
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let results = recover_masks(
        &pool,
        &kms,
        settings.field,
        &settings.masks,
        &settings.reason,
        settings.ticket.as_deref(),
    )
    .await?;
    print(&results, settings.bulk, settings.format)?;
    let all_found = results.iter().all(|r| r.value.is_some());
    Ok(if all_found {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

/// The audited recovery of masks of one field: the request is committed, then fetched, and each
/// vault key version unwrapped once. One result per mask, in the order given.
pub(super) async fn recover_masks(
    pool: &sqlx::PgPool,
    kms: &Kms,
    field: PiiField,
    masks: &[String],
    reason: &str,
    ticket: Option<&str>,
) -> anyhow::Result<Vec<Recovered>> {
    let request_id = recovery::request(pool, field, masks, reason, ticket)
        .await
        .map_err(database_error(pool))?;
    let rows = recovery::fetch(pool, request_id)
        .await
        .map_err(database_error(pool))?;
    if let Some(refused) = rows.iter().find(|row| row.outcome == "refused") {
        return Err(RecoverError::Refused(refused.detail.clone().unwrap_or_default()).into());
    }
    let mut sealers: HashMap<i32, Sealer> = HashMap::new();
    let mut results = Vec::with_capacity(rows.len());
    for row in rows {
        let value = match (&row.ciphertext, row.vault_key_version) {
            (Some(ciphertext), Some(version)) => {
                let sealer = match sealers.entry(version) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(slot) => {
                        let (Some(kms_key_id), Some(wrapped)) = (&row.kms_key_id, &row.wrapped_key)
                        else {
                            return Err(RecoverError::MissingKey { mask: row.mask }.into());
                        };
                        let key = kms
                            .unwrap_data_key(kms_key_id, KeyPurpose::Vault, version, wrapped)
                            .await
                            .map_err(RecoverError::from)?;
                        slot.insert(Sealer::new(&key))
                    }
                };
                let plain = sealer
                    .open_value(field, &row.mask, ciphertext)
                    .map_err(|source| RecoverError::Open {
                        mask: row.mask.clone(),
                        source,
                    })?;
                Some(plain.to_string())
            }
            _ => None,
        };
        results.push(Recovered {
            field: field.as_str(),
            mask: row.mask,
            outcome: row.outcome,
            value,
        });
    }
    anyhow::ensure!(
        results.len() == masks.len(),
        "the recovery request returned {} of {} masks",
        results.len(),
        masks.len()
    );
    Ok(results)
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
