//! `etl forget`: erasure of a person, for members of etl_privacy.
//!
//! The user ids are hashed here with the user key (KMS unwraps it; the mask key is not needed,
//! so a privacy officer cannot test guesses of masked values), and the database
//! function `etl.forget` does the rest in one transaction per chunk of users, holding the vault
//! epoch exclusively so that no ingest batch commits in between: the user's rows, the vault
//! entries no remaining row refers to, the quarantined messages carrying the user's hash, the
//! suppression-list entry, and one erasure receipt per user in the audit log (hash, counts,
//! reason, ticket; never the id).

use std::path::PathBuf;

use backon::Retryable;
use clap::Args;
use serde::Serialize;

use super::{DatabaseArgs, KmsPinArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, lifecycle, lifecycle::ToForget};
use crate::configuration::{ConfigError, DatabaseSettings};

use crate::crypto::UserKeys;
use crate::domain::{Justification, UserId};
use crate::human;
use crate::keys::{self, KeyLoadError};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("users").required(true).multiple(true).args(["user_id", "from_file"])))]
pub struct ForgetArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kms: KmsPinArgs,
    /// The user id to erase, exactly as in user_logins.user_id (byte for byte: spaces around it
    /// are part of it). `--from-file` keeps ids out of `ps` and shell history.
    #[arg(long, value_name = "ID")]
    pub user_id: Option<String>,
    /// Read user ids from this file, one per line, each exactly as written (`-` for stdin; blank
    /// lines are skipped).
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

/// Users to forget, each with where it was given (for messages that must not echo the id).
#[derive(Debug, Clone)]
pub struct ForgetSettings {
    pub database: DatabaseSettings,
    pub users: Vec<GivenUser>,
    pub why: Justification,
    pub dry_run: bool,
    pub format: OutputFormat,
}

#[derive(Debug, Clone)]
pub struct GivenUser {
    pub user_id: UserId,
    /// `--user-id`, or `line N` of the file.
    pub source: String,
}

impl GivenUser {
    fn parse(text: &str, source: String) -> Result<Self, ConfigError> {
        match UserId::parse(text) {
            Some(user_id) => Ok(Self { user_id, source }),
            None => Err(ConfigError::BadUserId { given: source }),
        }
    }
}

impl TryFrom<&ForgetArgs> for ForgetSettings {
    type Error = ConfigError;

    fn try_from(args: &ForgetArgs) -> Result<Self, ConfigError> {
        let why = Justification::parse(
            &args.reason,
            args.ticket.as_deref(),
            "in each erasure receipt",
        )?;
        let mut users = Vec::new();
        if let Some(user_id) = &args.user_id {
            users.push(GivenUser::parse(user_id, "--user-id".to_owned())?);
        }
        if let Some(path) = &args.from_file {
            let text = super::read_input(path).map_err(ConfigError::UserFile)?;
            for (index, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    users.push(GivenUser::parse(line, format!("line {}", index + 1))?);
                }
            }
        }
        if users.is_empty() {
            return Err(ConfigError::Invalid("no user id given: the file has none"));
        }
        Ok(Self {
            database: args.database.settings()?,
            users,
            why,
            dry_run: args.dry_run,
            format: args.format,
        })
    }
}

/// Users per transaction. Each costs a few index probes, and each transaction one scan of
/// `user_logins` for the vault entries no remaining row uses; the epoch lock (which holds ingest's
/// commits back) is held for one chunk at a time.
const CHUNK: usize = 1000;

#[derive(Debug, thiserror::Error)]
pub enum ForgetError {
    #[error(
        "the database refused the erasure: your database user needs the etl_privacy role (an \
         administrator runs: GRANT etl_privacy TO <your user>)"
    )]
    NotPrivacy,
    #[error("the erasure waited too long for ingest's open transactions; try again")]
    Busy,
    #[error("no user data key exists yet: run `etl keys init --kms-key-id <id>` first")]
    NoUserKey,
    #[error("during the erasure: {0}")]
    Database(#[source] postgres::DatabaseError),
}

/// SQLSTATE of `etl.forget` when the hashes are not under the newest user key version.
const KEYS_CHANGED: &str = "ET001";

/// Every stored user key version, read here rather than at start-up so that a missing role is
/// named as such.
async fn user_keys(pool: &sqlx::PgPool, kms: &Kms) -> anyhow::Result<UserKeys> {
    keys::load_user_keys(pool, kms)
        .await
        .map_err(|err| match err {
            KeyLoadError::MissingKey(_) => ForgetError::NoUserKey.into(),
            KeyLoadError::Database(db) if db.sqlstate().as_deref() == Some("42501") => {
                ForgetError::NotPrivacy.into()
            }
            other => other.into(),
        })
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
    user_logins: i64,
    vault_entries: i64,
    quarantined: i64,
    newly_suppressed: usize,
    /// Rows of the pseudonymisation domains.
    domain_rows: i64,
}

pub async fn run(args: ForgetArgs) -> anyhow::Result<Outcome> {
    let settings = ForgetSettings::try_from(&args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, 1);
    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    let mut keys = user_keys(&pool, &kms).await?;
    let mut results = Vec::with_capacity(settings.users.len());
    for chunk in settings.users.chunks(CHUNK) {
        let erased = loop {
            let users: Vec<ToForget<'_>> = chunk
                .iter()
                .map(|user| {
                    let id = user.user_id.as_str();
                    ToForget {
                        user_id: id,
                        hash: keys.newest().user_hash(id),
                        earlier_hashes: keys.others().iter().map(|k| k.user_hash(id)).collect(),
                    }
                })
                .collect();
            let user_key = keys.newest();
            // A chunk is one transaction: one that ended in a deadlock or waited its
            // lock_timeout (beside ingest's resets of vault entries, or a busy epoch) changed
            // nothing, and runs again.
            let forgotten = (|| {
                lifecycle::forget(
                    &pool,
                    &users,
                    user_key,
                    settings.why.reason(),
                    settings.why.ticket(),
                    settings.dry_run,
                )
            })
            .retry(crate::pipeline::backoff())
            .when(postgres::is_transient)
            .await;
            match forgotten {
                // A user key rotation committed meanwhile: hash under the version now newest.
                Err(sqlx::Error::Database(db)) if db.code().as_deref() == Some(KEYS_CHANGED) => {
                    keys = user_keys(&pool, &kms).await?;
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
        totals.user_logins += result.erased.logins;
        totals.vault_entries += result.erased.vault_entries;
        totals.quarantined += result.erased.quarantined;
        totals.domain_rows += result.erased.domain_rows;
        totals.newly_suppressed += usize::from(result.erased.newly_suppressed);
    }
    print(&results, &totals, settings.dry_run, settings.format)?;
    // Done when something was erased or someone newly suppressed; when every user was already
    // forgotten, nothing was written (no receipt either).
    let erased =
        totals.user_logins + totals.vault_entries + totals.quarantined + totals.domain_rows;
    Ok(if erased > 0 || totals.newly_suppressed > 0 {
        Outcome::Success
    } else {
        Outcome::Negative
    })
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
        outln!(
            "{}",
            serde_json::to_string(&Report {
                dry_run,
                users: results,
                totals,
            })?
        )?;
        return Ok(());
    }
    for result in results {
        let e = &result.erased;
        // A dry run writes no receipt, so it names none.
        let receipt = if dry_run {
            String::new()
        } else {
            format!(" (receipt {})", hex::encode(&e.user_hash))
        };
        let source = &result.source;
        if e.logins + e.vault_entries + e.quarantined + e.domain_rows > 0 {
            let verb = if dry_run { "would erase" } else { "erased" };
            outln!(
                "{source}: {verb} user_logins={} vault_entries={} quarantined={} domain_rows={}{receipt}",
                e.logins,
                e.vault_entries,
                e.quarantined,
                e.domain_rows
            )?;
        } else if e.newly_suppressed {
            let verb = if dry_run { "would be added" } else { "added" };
            outln!(
                "{source}: nothing found (never seen, or expired); {verb} to the suppression list, so later events are dropped{receipt}"
            )?;
        } else {
            outln!("{source}: already forgotten; nothing changed")?;
        }
    }
    outln!(
        "{}: user_logins={} vault_entries={} quarantined={} newly_suppressed={} domain_rows={}{}",
        human::count(totals.users as i64, "user"),
        totals.user_logins,
        totals.vault_entries,
        totals.quarantined,
        totals.newly_suppressed,
        totals.domain_rows,
        if dry_run {
            " (dry run: nothing changed)"
        } else {
            ""
        }
    )?;
    Ok(())
}
