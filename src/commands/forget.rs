//! `etl forget`: erasure of a person, for members of etl_privacy.
//!
//! The user ids are hashed here with a subkey of the mask key (KMS unwraps it), and the database
//! function `etl.forget` does the rest in one transaction per chunk of users, holding the vault
//! epoch exclusively so that no ingest batch commits in between: the user's rows, the vault
//! entries no remaining row refers to, the quarantined messages carrying the user's hash, the
//! suppression-list entry, and one erasure receipt per user in the audit log (hash, counts,
//! reason, ticket; never the id).

use serde::Serialize;

use super::Outcome;
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, keyring, lifecycle};
use crate::cli::{ForgetArgs, OutputFormat};
use crate::configuration::ForgetSettings;
use crate::crypto::{KeyPurpose, Masker, UserHash};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// Users per transaction: each costs a few index probes; the epoch lock (which holds ingest's
/// commits back) is held for one chunk at a time.
const CHUNK: usize = 200;

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(
        "the database refused the erasure: your database user needs the etl_privacy role (an \
         administrator runs: GRANT etl_privacy TO <your user>)"
    )]
    NotPrivacy,
    #[error("the erasure waited too long for ingest's open transactions; try again")]
    Busy,
    #[error("no mask data key exists yet: run `etl keys init --kms-key-id <id>` first")]
    NoMaskKey,
    #[error("during the erasure: {0}")]
    Database(#[source] postgres::DatabaseError),
}

/// SQLSTATE of `etl.forget` when the hashes are not under the active mask key version.
const KEYS_CHANGED: &str = "ET001";

/// The masker of the active mask key version (not the newest: a pending version masks nothing
/// yet). Read here rather than through `startup`, so a missing role is named as such.
async fn active_masker(pool: &sqlx::PgPool, kms: &Kms) -> anyhow::Result<Masker> {
    let active = keyring::active_mask_version(pool)
        .await
        .map_err(database_error(pool))?
        .ok_or(ForgetError::NoMaskKey)?;
    let stored = keyring::version(pool, KeyPurpose::Mask, active)
        .await
        .map_err(database_error(pool))?
        .ok_or(ForgetError::NoMaskKey)?;
    Ok(Masker::new(
        &kms.unwrap_data_key(
            &stored.kms_key_id,
            KeyPurpose::Mask,
            stored.version,
            &stored.wrapped_key,
        )
        .await?,
    ))
}

/// The conversion of the erasure's database errors on `pool`.
fn database_error(pool: &sqlx::PgPool) -> impl Fn(sqlx::Error) -> ForgetError + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            ForgetError::NotPrivacy
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => ForgetError::Busy,
        _ => ForgetError::Database(postgres::DatabaseError::on(pool)(err)),
    }
}

#[derive(Serialize)]
struct UserResult<'a> {
    source: &'a str,
    #[serde(flatten)]
    erased: lifecycle::Erased,
}

#[derive(Serialize, Default)]
struct Totals {
    users: usize,
    logins: i64,
    vault_entries: i64,
    quarantined: i64,
    newly_suppressed: usize,
}

pub async fn run(args: &ForgetArgs) -> anyhow::Result<Outcome> {
    let settings = ForgetSettings::try_from(args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, 1);
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let mut masker = active_masker(&pool, &kms).await?;
    let mut results = Vec::with_capacity(settings.users.len());
    for chunk in settings.users.chunks(CHUNK) {
        let erased = loop {
            let users: Vec<(&str, UserHash)> = chunk
                .iter()
                .map(|user| (user.user_id.as_str(), masker.user_hash(&user.user_id)))
                .collect();
            match lifecycle::forget(
                &pool,
                &users,
                masker.version(),
                &settings.reason,
                settings.ticket.as_deref(),
                settings.dry_run,
            )
            .await
            {
                // A re-mask switch committed meanwhile: hash under the version now active.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(KEYS_CHANGED) => {
                    masker = active_masker(&pool, &kms).await?;
                }
                other => break other.map_err(database_error(&pool))?,
            }
        };
        anyhow::ensure!(
            erased.len() == chunk.len(),
            "the erasure returned {} results for {} users",
            erased.len(),
            chunk.len()
        );
        results.extend(chunk.iter().zip(erased).map(|(user, erased)| UserResult {
            source: &user.source,
            erased,
        }));
    }
    let mut totals = Totals::default();
    for result in &results {
        totals.users += 1;
        totals.logins += result.erased.logins;
        totals.vault_entries += result.erased.vault_entries;
        totals.quarantined += result.erased.quarantined;
        totals.newly_suppressed += usize::from(result.erased.newly_suppressed);
    }
    print(&results, &totals, settings.dry_run, settings.format)?;
    Ok(
        if totals.logins + totals.vault_entries + totals.quarantined > 0 {
            Outcome::Success
        } else {
            Outcome::Negative
        },
    )
}

fn print(
    results: &[UserResult<'_>],
    totals: &Totals,
    dry_run: bool,
    format: OutputFormat,
) -> anyhow::Result<()> {
    if format == OutputFormat::Json {
        #[derive(Serialize)]
        struct Report<'a> {
            dry_run: bool,
            users: &'a [UserResult<'a>],
            totals: &'a Totals,
        }
        println!(
            "{}",
            serde_json::to_string(&Report {
                dry_run,
                users: results,
                totals,
            })?
        );
        return Ok(());
    }
    let verb = if dry_run { "would erase" } else { "erased" };
    for result in results {
        let e = &result.erased;
        let receipt = hex::encode(&e.user_hash);
        if e.logins + e.vault_entries + e.quarantined > 0 {
            println!(
                "{}: {verb} user_logins={} vault_entries={} quarantine={} (receipt {receipt})",
                result.source, e.logins, e.vault_entries, e.quarantined
            );
        } else if e.newly_suppressed {
            println!(
                "{}: nothing found; {} the suppression list (receipt {receipt})",
                result.source,
                if dry_run {
                    "would be added to"
                } else {
                    "added to"
                }
            );
        } else {
            println!(
                "{}: nothing found; already forgotten, nothing changed",
                result.source
            );
        }
    }
    println!(
        "{} users: user_logins={} vault_entries={} quarantine={} newly suppressed={}{}",
        totals.users,
        totals.logins,
        totals.vault_entries,
        totals.quarantined,
        totals.newly_suppressed,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    );
    Ok(())
}
