//! `etl domains add|list|rotate|remask`: pseudonymisation domains, each with a mask key of its
//! own, a table `domains.<name>` that ingest fills with every row's masks under that key, and a
//! reader role `etl_domain_<name>` (see `docs/privacy.md`). The re-mask, a long job, has a module
//! of its own.

mod history;
mod remask;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::{DatabaseArgs, KmsPinArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::rekey::{self, SealedEntry};
use crate::adapters::postgres::{domains, keyring};
use crate::crypto::KeyPurpose;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Subcommand)]
pub enum DomainsCommand {
    /// Create a domain (for the schema owner): its mask key, wrapped by KMS under the KMS key of
    /// the active mask key (so every process that unwraps that key can unwrap it); its table
    /// domains.NAME, which ingest fills from then on; its reader role etl_domain_NAME. A domain
    /// that exists is left as it is. With --backfill, the domain also gets every row
    /// user_logins holds already.
    Add {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        kms: KmsPinArgs,
        /// 1 to 40 lowercase letters, digits or underscores, starting with a letter.
        #[arg(value_name = "NAME")]
        name: String,
        /// Also write every row user_logins holds into the domain, so that it agrees with
        /// user_logins from the first day: opens every vault entry (on record; KMS Decrypt on the
        /// vault and user keys), and ingest waits while the creating transaction writes the rows.
        #[arg(long)]
        backfill: bool,
    },
    /// List the domains, their reader roles and key versions (active, and pending while a
    /// rotation waits for its re-mask).
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Output format.
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        format: OutputFormat,
    },
    /// Create the next version of a domain's mask key, pending (for the schema owner): from now
    /// on ingest writes every row's masks under both versions, the pending ones in columns the
    /// domain's role cannot read (running processes too). `etl domains remask NAME` then moves
    /// the rows written before to it and makes it active. One version may be pending at a time;
    /// --cancel withdraws it.
    Rotate {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The domain's name.
        #[arg(value_name = "NAME")]
        name: String,
        /// KMS key for the new version [default: the KMS key of the active version].
        #[arg(long, env = "ETL_KMS_KEY_ID")]
        kms_key_id: Option<String>,
        /// Cancel the pending version instead (a rotation made by mistake, or whose re-mask
        /// cannot finish): its masks leave the rows, its key is deleted, and ingest writes the
        /// active version only again.
        #[arg(long, conflicts_with = "kms_key_id")]
        cancel: bool,
    },
    /// Move a domain to its pending key version (for the schema owner, with KMS Decrypt on the
    /// vault keys and the domain's keys): the rows written before the rotation get their masks
    /// under it from the vault's values and user_logins' user ids, a day at a time beside a
    /// running ingest (resumable: run it again); then one switch transaction, while ingest
    /// waits, gives every row its new masks, makes the version active and deletes the older keys.
    /// On record in the audit log.
    Remask(RemaskArgs),
}

/// `etl domains remask`: a long job in short transactions.
#[derive(Debug, Args)]
pub struct RemaskArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kms: KmsPinArgs,
    /// The domain's name.
    #[arg(value_name = "NAME")]
    pub name: String,
    /// Vault entries (or user ids) opened and mapped per statement.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

/// Longest name: its role `etl_domain_<name>` stays well within PostgreSQL's 63 bytes.
const NAME_MAX: usize = 40;

/// Whether `name` can name a domain, its table and its role without quoting surprises.
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() <= NAME_MAX
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

pub async fn run(command: DomainsCommand) -> anyhow::Result<Outcome> {
    match command {
        DomainsCommand::Add {
            database,
            kms,
            name,
            backfill,
        } => add(&database, &kms, &name, backfill).await,
        DomainsCommand::List { database, format } => list(&database, format).await,
        DomainsCommand::Rotate {
            database,
            name,
            cancel: true,
            ..
        } => cancel_rotation(&database, &name).await,
        DomainsCommand::Rotate {
            database,
            name,
            kms_key_id,
            cancel: false,
        } => rotate(&database, &name, kms_key_id.as_deref()).await,
        DomainsCommand::Remask(args) => remask::run(&args).await,
    }
}

async fn add(
    database: &DatabaseArgs,
    kms: &KmsPinArgs,
    name: &str,
    backfill: bool,
) -> anyhow::Result<Outcome> {
    anyhow::ensure!(
        valid_name(name),
        "a domain name is 1 to {NAME_MAX} lowercase letters, digits or underscores, starting with \
         a letter"
    );
    // A backfill's job lock, its maps' session and its reading stream, and the audit rows.
    let pool = super::audit_pool_of(database, if backfill { 4 } else { 1 }).await?;
    let existing = domains::list(&pool)
        .await
        .context("reading etl.domains (the schema owner may)")?;
    if let Some(domain) = existing.iter().find(|d| d.name == name) {
        outln!(
            "domain {name} exists (mask key v{}, read by {}): nothing changed",
            domain.key_version,
            domain.role
        )?;
        return Ok(Outcome::Success);
    }
    // Under the mask key's KMS key: a process pinned to it (`--kms-key-id`) unwraps both.
    let kms_key_id = keyring::latest(&pool, KeyPurpose::Mask)
        .await
        .context("reading the mask key's KMS key")?
        .map(|key| key.kms_key_id)
        .ok_or_else(|| {
            anyhow::anyhow!("no mask key yet: run `etl keys init --kms-key-id <id>` first")
        })?;
    let client = kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    let wrapped = client
        .generate_domain_key(&kms_key_id, name, 1)
        .await
        .context("generating the domain's mask key")?;
    let (role, filled) = if backfill {
        let (role, filled) = history::add(&pool, &client, name, &wrapped).await?;
        let filled = format!(
            "; filled with the {} rows user_logins held ({} vault entries and {} user ids \
             opened; ingest waited {:.1} s)",
            filled.rows, filled.vault_entries, filled.user_ids, filled.held_seconds
        );
        (role, filled)
    } else {
        let role = domains::add(&pool, name, &wrapped.kms_key_arn, &wrapped.blob)
            .await
            .map_err(|err| refused_add(name, &pool, err))?;
        (role, String::new())
    };
    outln!(
        "domain {name} added: table domains.{name}, filled by ingest from now on (running \
         processes too){filled}; read by {role} (GRANT {role} TO <login>); mask key v1 wrapped \
         under {}",
        wrapped.kms_key_arn
    )?;
    Ok(Outcome::Success)
}

/// What the database's refusal to add a domain means.
fn refused_add(name: &str, pool: &sqlx::PgPool, err: sqlx::Error) -> anyhow::Error {
    match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("23505") => {
            anyhow::anyhow!("domain {name} was added meanwhile: nothing changed")
        }
        _ => super::owner_only(pool, "add a domain")(err),
    }
}

async fn rotate(
    database: &DatabaseArgs,
    name: &str,
    kms_key_id: Option<&str>,
) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(database).await?;
    let domain = find(&pool, name).await?;
    if let Some(pending) = domain.pending_key_version {
        anyhow::bail!(
            "domain {name} has a pending key version {pending}: `etl domains remask {name}` moves \
             it to that version first"
        );
    }
    let kms_key_id = match kms_key_id {
        Some(id) => id.to_owned(),
        None => domains::write_keys(&pool)
            .await
            .context("reading the domain's key")?
            .into_iter()
            .find(|key| key.domain == name && key.version == domain.key_version)
            .map(|key| key.kms_key_id)
            .with_context(|| format!("domain {name} has no key version {}", domain.key_version))?,
    };
    // No number names two keys, a cancelled rotation's included: ingest tells keys apart by it.
    let version = domain.last_key_version + 1;
    let client = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let wrapped = client
        .generate_domain_key(&kms_key_id, name, version)
        .await
        .context("generating the domain's next mask key")?;
    domains::rotate(&pool, name, version, &wrapped.kms_key_arn, &wrapped.blob)
        .await
        .map_err(|err| match &err {
            // Another rotation committed since this one read the versions.
            sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("55000" | "23505")) =>
            {
                anyhow::anyhow!("domain {name}'s key was rotated meanwhile: nothing changed")
            }
            _ => super::owner_only(&pool, "rotate a domain's key")(err),
        })?;
    outln!(
        "domain {name}: mask key v{version} pending, wrapped under {}; ingest writes every row's \
         masks under v{} and v{version} from now on (running processes too); `etl domains remask \
         {name}` moves the rows to v{version}",
        wrapped.kms_key_arn,
        domain.key_version
    )?;
    Ok(Outcome::Success)
}

async fn cancel_rotation(database: &DatabaseArgs, name: &str) -> anyhow::Result<Outcome> {
    let pool = super::audit_pool(database).await?;
    let domain = find(&pool, name).await?;
    if domain.pending_key_version.is_none() {
        outln!(
            "domain {name} has no pending key version (mask key v{} is active): nothing changed",
            domain.key_version
        )?;
        return Ok(Outcome::Success);
    }
    let cancelled = domains::cancel_rotation(&pool, name)
        .await
        .map_err(super::owner_only(&pool, "cancel a domain's rotation"))?;
    outln!(
        "domain {name}: pending mask key v{cancelled} cancelled and deleted; ingest writes v{} only \
         from now on (running processes too)",
        domain.key_version
    )?;
    Ok(Outcome::Success)
}

/// What the domain jobs map, a chunk at a time.
enum Values<'a> {
    /// Vault entries, still sealed.
    Vault(&'a [SealedEntry]),
    /// Distinct user ids of `user_logins`.
    Users(&'a [String]),
}

/// Hands every vault entry, then every distinct user id of `user_logins`, to `each`, `chunk` at
/// a time, with the session whose temporary tables it fills (`maps`); they are read on a
/// connection of their own. The values behind a domain's masks, for `remask` and `--backfill`.
async fn each_value(
    pool: &sqlx::PgPool,
    maps: &mut sqlx::PgConnection,
    chunk: usize,
    mut each: impl AsyncFnMut(&mut sqlx::PgConnection, Values<'_>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    use futures_util::TryStreamExt;

    let database = |err| crate::adapters::postgres::DatabaseError::on(pool)(err);
    let mut reader = pool.acquire().await.map_err(database)?;
    let mut entries = rekey::all_entries(&mut reader).try_chunks(chunk);
    while let Some(entries) = entries.try_next().await.map_err(|err| database(err.1))? {
        each(maps, Values::Vault(&entries)).await?;
    }
    drop(entries);
    let mut users = domains::user_ids(&mut reader).try_chunks(chunk);
    while let Some(users) = users.try_next().await.map_err(|err| database(err.1))? {
        each(maps, Values::Users(&users)).await?;
    }
    Ok(())
}

/// The domain named `name`, or an error that says how to list them.
async fn find(pool: &sqlx::PgPool, name: &str) -> anyhow::Result<domains::Domain> {
    domains::list(pool)
        .await
        .context("reading etl.domains (the schema owner may)")?
        .into_iter()
        .find(|d| d.name == name)
        .with_context(|| format!("no domain {name} (`etl domains list` lists them)"))
}

async fn list(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<Outcome> {
    let pool = super::pool(database).await?;
    let listed = domains::list(&pool)
        .await
        .context("reading etl.domains (the schema owner may)")?;
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&listed)?)?,
        OutputFormat::Text => {
            for domain in &listed {
                let pending = domain
                    .pending_key_version
                    .map(|v| format!(" (v{v} pending)"))
                    .unwrap_or_default();
                outln!(
                    "{}  table domains.{}  read by {}  mask key v{}{pending}  created {} by {}",
                    domain.name,
                    domain.name,
                    domain.role,
                    domain.key_version,
                    domain.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    domain.created_by
                )?;
            }
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_identifiers() {
        for good in ["marketing", "a", "risk_2026", &"a".repeat(NAME_MAX)] {
            assert!(valid_name(good), "{good}");
        }
        for bad in [
            "",
            "Marketing",
            "2fa",
            "_x",
            "a-b",
            "a b",
            "x\"y",
            &"a".repeat(41),
        ] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
