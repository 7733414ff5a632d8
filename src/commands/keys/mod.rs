//! `etl keys`: the data keys (mask, vault, quarantine, user) wrapped by KMS. `init`, `rotate`,
//! `rewrap`, `retire` and `list` are here; the two long jobs, `reseal` and `remask`, have a
//! module each.

mod remask;
mod reseal;

use anyhow::Context;
use clap::{Args, Subcommand, ValueEnum};

use super::{DatabaseArgs, KmsPinArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::kms::{Kms, WrappedKey};
use crate::adapters::postgres::keyring::Retirement;
use crate::adapters::postgres::{keyring, rekey, DatabaseError};
use crate::crypto::{quarantine_key_pair, KeyPurpose, UserKey};
use crate::human;
use crate::keys;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Create the mask key, the vault key, the quarantine key pair and the user key under a KMS
    /// key. Idempotent: the keys that exist stay as they are. A deployment with user hashes or
    /// backfill claims made before the user key existed gets it carried over from its mask keys,
    /// so they stay valid.
    Init(InitArgs),
    /// Create a new version of a data key. Vault: ingest seals new entries with it at once
    /// (running processes reload), and no longer with older versions; `etl keys reseal` moves the
    /// existing entries to it. Quarantine: new bodies are sealed to it. Mask: the new version is
    /// pending until `etl keys remask` has moved every mask to it (see SECURITY.md, "Rotation").
    /// User: new erasures and backfills hash with it; every version stays, to recognise the
    /// hashes made before.
    Rotate(RotateArgs),
    /// Re-wrap every stored data key under another KMS key (for a KMS key retirement). The data
    /// keys themselves, and so every mask and ciphertext, stay the same.
    Rewrap(RewrapArgs),
    /// List the data keys: purpose, version, state, KMS key, creation time, and how many vault
    /// entries, quarantine rows, user_logins rows and suppression-list rows use each version
    /// (never key material).
    List(ListArgs),
    /// Re-encrypt every vault entry, and every quarantined body sealed under a vault key, under
    /// the newest vault key version: in batches, each its own transaction, safe beside ingest and
    /// recover, resumable (run it again after an interruption). Needs KMS Decrypt on every vault
    /// key version.
    Reseal(KeyJobArgs),
    /// Delete the wrapped key of a vault, quarantine or mask key version that nothing uses any
    /// more. Refused (exit 2, with the counts) while vault entries, quarantine rows or user_logins
    /// rows use it, while ingest may still seal (or mask) with it, or while it is a pending mask
    /// key version. User key versions are never retired: the suppression list cannot be hashed
    /// again.
    #[command(disable_version_flag = true)]
    Retire(RetireArgs),
    /// Move every mask to the pending mask key version (`etl keys rotate --purpose mask`), then
    /// make it the active one: new vault entries first (beside a running ingest, resumable), then
    /// one switch transaction that rewrites user_logins while ingest waits, then the old entries
    /// are deleted. Running ingest processes switch without a restart; `etl keys retire
    /// --purpose mask` can then retire the old version. Needs KMS Decrypt on the vault keys and
    /// the mask keys.
    Remask(KeyJobArgs),
}

/// `etl keys reseal` and `etl keys remask`: long jobs in short transactions.
#[derive(Debug, Args)]
pub struct KeyJobArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    pub kms: KmsPinArgs,
    /// Vault entries (or quarantined bodies) per transaction.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub batch: i64,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// KMS key that wraps the data keys: key id, key ARN, alias name or alias ARN.
    #[arg(long, env = "ETL_KMS_KEY_ID")]
    pub kms_key_id: String,
}

#[derive(Debug, Args)]
pub struct RotateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Which key to rotate.
    #[arg(long, value_enum)]
    pub purpose: PurposeArg,
    /// KMS key for the new version [default: the KMS key of the current version].
    #[arg(long, env = "ETL_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct RewrapArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// The KMS key to wrap under from now on.
    #[arg(long)]
    pub kms_key_id: String,
    /// The KMS key the data keys are wrapped under now (the pin the other commands use): a
    /// keyring row under any other key is refused rather than re-wrapped into trust. Change
    /// ETL_KMS_KEY_ID everywhere to the new key after the re-wrap.
    #[arg(long, env = "ETL_KMS_KEY_ID", value_name = "KMS_KEY_ID")]
    pub from_kms_key_id: Option<String>,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub format: OutputFormat,
}

#[derive(Debug, Args)]
pub struct RetireArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Which key.
    #[arg(long, value_enum)]
    pub purpose: PurposeArg,
    /// The version to retire.
    #[arg(long)]
    pub version: i32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PurposeArg {
    Mask,
    Vault,
    Quarantine,
    User,
}

impl From<PurposeArg> for KeyPurpose {
    fn from(purpose: PurposeArg) -> Self {
        match purpose {
            PurposeArg::Vault => Self::Vault,
            PurposeArg::Quarantine => Self::Quarantine,
            PurposeArg::Mask => Self::Mask,
            PurposeArg::User => Self::User,
        }
    }
}

pub async fn run(command: KeysCommand) -> anyhow::Result<Outcome> {
    match command {
        KeysCommand::Init(args) => init(&args.database, &args.kms_key_id).await,
        KeysCommand::Rotate(args) => {
            rotate(
                &args.database,
                args.purpose.into(),
                args.kms_key_id.as_deref(),
            )
            .await
        }
        KeysCommand::Rewrap(args) => rewrap(&args).await,
        KeysCommand::List(args) => list(&args.database, args.format).await,
        KeysCommand::Reseal(args) => reseal::run(&args).await,
        KeysCommand::Retire(args) => {
            retire(&args.database, args.purpose.into(), args.version).await
        }
        KeysCommand::Remask(args) => remask::run(&args).await,
    }
    .map(|()| Outcome::Success)
}

/// The first version of each key.
const FIRST_VERSION: i32 = 1;

/// Creates whichever of the mask, vault, quarantine and user keys does not exist yet. KMS
/// generates the mask and vault keys with `GenerateDataKeyWithoutPlaintext`, so this command never
/// holds them; the quarantine seed is held for a moment, to compute the public key that ingest
/// seals with, and the user key (64 bytes from KMS's random source, wrapped with `Encrypt`) to
/// compute its key check. The user key of a deployment that already holds hashes made with its
/// mask keys is carried over from them instead, and so are versions a carry-over cut short.
async fn init(database: &DatabaseArgs, kms_key_id: &str) -> anyhow::Result<()> {
    let kms_key_id = kms_key_id.trim();
    anyhow::ensure!(
        !kms_key_id.is_empty(),
        "--kms-key-id / ETL_KMS_KEY_ID is empty"
    );
    let pool = super::audit_pool(database).await?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let mut created = 0;
    for purpose in KeyPurpose::ALL {
        let name = purpose.as_str();
        let existing = keyring::latest(&pool, purpose)
            .await
            .map_err(DatabaseError::on(&pool))
            .context("reading keyring.data_keys")?;
        if purpose == KeyPurpose::User {
            let carry = user_versions_to_carry(&pool, existing.is_none()).await?;
            if !carry.is_empty() {
                created += carry_over_user_keys(&pool, &kms, kms_key_id, &carry).await?;
                continue;
            }
        }
        if let Some(existing) = existing {
            outln!(
                "{name} key: already present (version {}, wrapped by {}, created {})",
                existing.version,
                existing.kms_key_id,
                existing.created_at
            )?;
            continue;
        }
        let (stored, wrapped) = create_key(&pool, &kms, kms_key_id, purpose, FIRST_VERSION).await?;
        if stored {
            created += 1;
            outln!(
                "{name} key: created (version {FIRST_VERSION}, wrapped by {})",
                wrapped.kms_key_arn
            )?;
        } else {
            outln!("{name} key: created concurrently by another run; kept that one")?;
        }
    }
    if created == 0 {
        outln!("nothing changed: every data key already exists")?;
    }
    Ok(())
}

/// The mask key versions whose user hashes and backfill claims a user key version must be
/// carried over from: every stored one when there is no user key yet and something was hashed
/// with them; else the ones stored hashes name and the keyring lacks (a carry-over cut short).
async fn user_versions_to_carry(
    pool: &sqlx::PgPool,
    no_user_key: bool,
) -> anyhow::Result<Vec<i32>> {
    let masks: Vec<i32> = keyring::versions(pool, KeyPurpose::Mask)
        .await
        .map_err(DatabaseError::on(pool))?
        .iter()
        .map(|key| key.version)
        .collect();
    if no_user_key {
        let hashed = keyring::hashed_under_mask_keys(pool)
            .await
            .map_err(DatabaseError::on(pool))?;
        return Ok(if hashed { masks } else { Vec::new() });
    }
    let missing = keyring::missing_user_key_versions(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    if let Some(lost) = missing.iter().find(|version| !masks.contains(version)) {
        anyhow::bail!(
            "stored user hashes name user key version {lost}, which the keyring lacks, and no \
             mask key version {lost} exists to carry it over from: restore the keyring from a \
             backup"
        );
    }
    Ok(missing)
}

/// User key versions made of the two subkeys the mask key versions `versions` derived, stored in
/// one transaction, so that everything hashed with them stays valid and the mask key versions can
/// be retired. Returns how many were stored.
async fn carry_over_user_keys(
    pool: &sqlx::PgPool,
    kms: &Kms,
    kms_key_id: &str,
    versions: &[i32],
) -> anyhow::Result<usize> {
    let mut carried = Vec::with_capacity(versions.len());
    for &version in versions {
        let stored = keyring::version(pool, KeyPurpose::Mask, version)
            .await
            .map_err(DatabaseError::on(pool))?
            .with_context(|| format!("mask key version {version} is gone"))?;
        let mask = keys::unwrap_stored(kms, KeyPurpose::Mask, &stored).await?;
        let user = UserKey::carried_from_mask(&mask);
        let key_check = UserKey::new(&user)
            .context("a carried-over user key is 64 bytes")?
            .key_check();
        let wrapped = kms
            .wrap_data_key(kms_key_id, KeyPurpose::User, &user)
            .await
            .context("wrapping the user key")?;
        carried.push(keyring::CarriedUserKey {
            version,
            kms_key_id: wrapped.kms_key_arn,
            wrapped: wrapped.blob,
            key_check,
        });
    }
    let stored = keyring::insert_carried(pool, &carried)
        .await
        .map_err(DatabaseError::on(pool))
        .context("storing the carried-over user keys")?;
    for key in &carried {
        outln!(
            "user key: version {0} carried over from mask key version {0} (wrapped by {1}): the \
             user hashes and backfill claims made under it stay valid",
            key.version,
            key.kms_key_id
        )?;
    }
    if stored < carried.len() as u64 {
        outln!("user key: another run stored some of these versions first; kept those")?;
    }
    Ok(usize::try_from(stored).unwrap_or(usize::MAX))
}

/// Generates a data key under `kms_key_id` and stores it unless that version exists; returns
/// whether it was stored, and the wrapping.
async fn create_key(
    pool: &sqlx::PgPool,
    kms: &Kms,
    kms_key_id: &str,
    purpose: KeyPurpose,
    version: i32,
) -> anyhow::Result<(bool, WrappedKey)> {
    let name = purpose.as_str();
    let (wrapped, beside) = match purpose {
        KeyPurpose::Quarantine => {
            let (wrapped, seed) = kms
                .generate_data_key_with_plaintext(kms_key_id, purpose, version)
                .await
                .with_context(|| format!("generating the {name} key pair's seed"))?;
            let key = quarantine_key_pair(&seed).1;
            let attestation = kms
                .attest_public_key(&wrapped.kms_key_arn, version, &key)
                .await
                .context("attesting the quarantine public key with KMS")?;
            let beside = keyring::Beside::PublicHalf {
                public_key: key,
                attestation,
            };
            (wrapped, beside)
        }
        KeyPurpose::User => {
            let (wrapped, key) = kms
                .generate_user_key(kms_key_id, version)
                .await
                .context("generating the user data key")?;
            let check = UserKey::new(&key)
                .context("KMS returned a user key of the wrong length")?
                .key_check();
            (wrapped, keyring::Beside::KeyCheck(check))
        }
        KeyPurpose::Mask | KeyPurpose::Vault => {
            let wrapped = kms
                .generate_data_key(kms_key_id, purpose, version)
                .await
                .with_context(|| format!("generating the {name} data key"))?;
            (wrapped, keyring::Beside::Nothing)
        }
    };
    let stored = keyring::insert_if_absent(
        pool,
        purpose,
        version,
        &wrapped.kms_key_arn,
        &wrapped.blob,
        &beside,
    )
    .await
    .map_err(DatabaseError::on(pool))
    .context("storing the wrapped data key")?;
    Ok((stored, wrapped))
}

/// A new version of a data key. Vault: the lowest version ingest may seal with is raised to it,
/// so running processes reload and seal with it from their next new value. Mask: the version is
/// pending until `etl keys remask` switches to it.
async fn rotate(
    database: &DatabaseArgs,
    purpose: KeyPurpose,
    kms_key_id: Option<&str>,
) -> anyhow::Result<()> {
    let name = purpose.as_str();
    let pool = super::audit_pool(database).await?;
    let current = keyring::latest(&pool, purpose)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?
        .ok_or_else(|| anyhow::anyhow!("no {name} key exists yet: run `etl keys init` first"))?;
    if purpose == KeyPurpose::Mask {
        let active = keyring::active_mask_version(&pool)
            .await
            .map_err(DatabaseError::on(&pool))?;
        let unfinished = rekey::mappings_left(&pool)
            .await
            .map_err(DatabaseError::on(&pool))?;
        anyhow::ensure!(
            unfinished == 0,
            "a re-mask is not finished ({unfinished} mappings left): run `etl keys remask` first"
        );
        anyhow::ensure!(
            active == Some(current.version),
            "mask key version {} is already pending: run `etl keys remask` to move every mask to \
             it before rotating again",
            current.version
        );
    }
    let kms_key_id = kms_key_id
        .map(str::trim)
        .filter(|id| !id.is_empty())
        .unwrap_or(&current.kms_key_id);
    let version = current.version + 1;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let (stored, wrapped) = create_key(&pool, &kms, kms_key_id, purpose, version).await?;
    anyhow::ensure!(
        stored,
        "another rotation created {name} key version {version} at the same time; nothing changed"
    );
    if purpose == KeyPurpose::User {
        // Running ingest processes compare their keys with `etl.key_state()` when the epoch
        // moves: so they hash with the new version from their next batch.
        keyring::raise_vault_epoch(&pool)
            .await
            .map_err(DatabaseError::on(&pool))
            .context("telling running ingest processes to reload their keys")?;
    }
    if matches!(purpose, KeyPurpose::Vault | KeyPurpose::Quarantine) {
        keyring::raise_min_version(&pool, purpose, version)
            .await
            .map_err(DatabaseError::on(&pool))
            .with_context(|| {
                format!("raising the lowest {name} key version ingest may seal with")
            })?;
    }
    // The keyring's trigger appended the rotation's audit row in the insert's transaction.
    let next = match purpose {
        KeyPurpose::Mask => "pending: nothing masks with it until `etl keys remask` moves every mask to it",
        KeyPurpose::Vault => "ingest seals new entries with it from now on (running processes reload); `etl keys reseal` re-encrypts the existing ones",
        KeyPurpose::Quarantine => "ingest seals quarantined bodies to it from now on (running processes reload)",
        KeyPurpose::User => "new erasures and backfills hash with it from now on (running processes reload); every earlier version stays, to recognise the hashes made with it",
    };
    outln!(
        "{name} key: version {version} created (wrapped by {}); {next}",
        wrapped.kms_key_arn
    )?;
    Ok(())
}

/// Deletes the wrapped key of a vault or quarantine key version nothing uses; refused (an error,
/// exit 2) with the counts while anything does.
async fn retire(database: &DatabaseArgs, purpose: KeyPurpose, version: i32) -> anyhow::Result<()> {
    let name = purpose.as_str();
    anyhow::ensure!(
        purpose != KeyPurpose::User,
        "user key versions are not retired: the suppression list and backfill claims keep the \
         hashes made with them, and the ids to hash again are not kept (SECURITY.md, \"Rotation\")"
    );
    let pool = super::audit_pool(database).await?;
    let outcome = keyring::retire(&pool, purpose, version)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("retiring the key version")?;
    match outcome {
        Retirement::Retired => {
            outln!("{name} key version {version}: retired (its wrapped key is deleted)")?;
            Ok(())
        }
        Retirement::NotFound => anyhow::bail!("there is no {name} key version {version}"),
        Retirement::InUse if purpose == KeyPurpose::Quarantine => anyhow::bail!(
            "{name} key version {version} is the one ingest seals with (or may seal with); rotate \
             first, and retire it once its quarantined messages have left"
        ),
        Retirement::InUse if purpose == KeyPurpose::Mask => anyhow::bail!(
            "mask key version {version} is the active one: rotate (`etl keys rotate --purpose \
             mask`) and re-mask (`etl keys remask`) first"
        ),
        Retirement::InUse => anyhow::bail!(
            "{name} key version {version} is the one ingest seals with (or may seal with); rotate \
             first, then reseal"
        ),
        Retirement::Pending => anyhow::bail!(
            "mask key version {version} is pending: `etl keys remask` is to move every mask to it"
        ),
        Retirement::RemaskUnfinished { mappings } => anyhow::bail!(
            "a re-mask is not finished ({}): run `etl keys remask` to the end first",
            human::count(mappings, "mapping left")
        ),
        Retirement::Used {
            entries, logins, ..
        } if purpose == KeyPurpose::Mask => anyhow::bail!(
            "mask key version {version} is still used by {} and {}; run `etl keys remask` to the \
             end first",
            human::count(entries, "vault entry"),
            human::count(logins, "user_logins row")
        ),
        Retirement::Used {
            entries,
            quarantine_rows,
            ..
        } if purpose == KeyPurpose::Quarantine => anyhow::bail!(
            "{name} key version {version} is still used by {}; they leave by retention, \
             `etl quarantine purge` or `etl quarantine replay` (bodies sealed to a quarantine key \
             are never re-sealed)",
            human::count(quarantine_rows + entries, "quarantined message")
        ),
        Retirement::Used {
            entries,
            quarantine_rows,
            ..
        } => anyhow::bail!(
            "{name} key version {version} is still used by {} and {}; run `etl keys reseal` first",
            human::count(entries, "vault entry"),
            human::count(quarantine_rows, "quarantine row")
        ),
    }
}

/// Re-wraps every data key under `kms_key_id`, inside KMS.
async fn rewrap(args: &RewrapArgs) -> anyhow::Result<()> {
    let kms_key_id = args.kms_key_id.trim();
    anyhow::ensure!(!kms_key_id.is_empty(), "--kms-key-id is empty");
    let pool = super::audit_pool(&args.database).await?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let arn_of = |id: String| {
        let kms = kms.clone();
        async move {
            match kms.describe_usable_key(&id).await? {
                Ok(arn) => Ok::<_, anyhow::Error>(arn),
                Err(problem) => anyhow::bail!("KMS key {id}: {problem}"),
            }
        }
    };
    let destination = arn_of(kms_key_id.to_owned()).await?;
    let pinned = match args.from_kms_key_id.as_deref().map(str::trim) {
        Some(id) if !id.is_empty() => Some(arn_of(id.to_owned()).await?),
        _ => None,
    };
    let keys = keyring::list(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?;
    anyhow::ensure!(
        !keys.is_empty(),
        "no data keys exist yet: run `etl keys init` first"
    );
    // Every row checked before any is re-wrapped: a planted one stops the whole run.
    if let Some(pinned) = &pinned {
        if let Some(planted) = keys
            .iter()
            .find(|key| key.kms_key_id != *pinned && key.kms_key_id != destination)
        {
            anyhow::bail!(
                "refusing to re-wrap: {} key version {} is wrapped under KMS key {}, not the \
                 pinned {pinned} (a row planted in the keyring?)",
                planted.purpose,
                planted.version,
                planted.kms_key_id
            );
        }
    }
    for key in keys {
        let purpose = KeyPurpose::parse(&key.purpose).ok_or_else(|| {
            anyhow::anyhow!("unknown key purpose {:?} in keyring.data_keys", key.purpose)
        })?;
        let wrapped = kms
            .re_encrypt(
                &key.kms_key_id,
                kms_key_id,
                purpose,
                key.version,
                &key.wrapped_key,
            )
            .await
            .with_context(|| {
                format!(
                    "re-wrapping the {} key version {}",
                    key.purpose, key.version
                )
            })?;
        let attestation = match (&key.public_key, &key.public_key_attestation) {
            (Some(public_key), Some(attestation)) => Some(
                kms.re_encrypt_attestation(
                    &key.kms_key_id,
                    kms_key_id,
                    key.version,
                    public_key,
                    attestation,
                )
                .await
                .with_context(|| {
                    format!(
                        "re-wrapping the attestation of {} key version {}",
                        key.purpose, key.version
                    )
                })?
                .blob,
            ),
            _ => None,
        };
        keyring::rewrap(
            &pool,
            &key.purpose,
            key.version,
            &wrapped.kms_key_arn,
            &wrapped.blob,
            attestation.as_deref(),
        )
        .await
        .map_err(DatabaseError::on(&pool))
        .context("storing the re-wrapped key")?;
        outln!(
            "{} key version {}: now wrapped by {}",
            key.purpose,
            key.version,
            wrapped.kms_key_arn
        )?;
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct KeyInfo<'a> {
    purpose: &'a str,
    version: i32,
    /// mask: active, pending or previous; vault, quarantine and user: active (the newest) or
    /// previous.
    state: &'static str,
    kms_key_id: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
    /// Vault entries sealed (vault) or masked (mask) under it.
    entries: i64,
    /// Quarantined bodies sealed under it (vault, quarantine), or whose user hash is under it
    /// (user).
    quarantine_rows: i64,
    /// user_logins rows masked under it (mask).
    logins: i64,
    /// Suppression-list rows hashed under it (user).
    forgotten_users: i64,
}

/// Versions, purposes, states, KMS keys, creation times and how much uses each; never key
/// material.
async fn list(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<()> {
    let pool = super::pool(database).await?;
    let keys = keyring::list(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?;
    let usage = keyring::usage(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("counting what uses each key version")?;
    let settings = keyring::settings(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.key_settings")?;
    let newest = |purpose: &str| {
        keys.iter()
            .filter(|k| k.purpose == purpose)
            .map(|k| k.version)
            .max()
    };
    let infos: Vec<KeyInfo> = keys
        .iter()
        .map(|key| {
            let used = usage
                .iter()
                .find(|u| u.purpose == key.purpose && u.version == key.version)
                .cloned()
                .unwrap_or_default();
            let state = match (key.purpose.as_str(), settings.active_mask_key_version) {
                ("mask", Some(active)) if key.version == active => "active",
                ("mask", Some(active)) if key.version > active => "pending",
                (purpose, _) if purpose != "mask" && newest(purpose) == Some(key.version) => {
                    "active"
                }
                _ => "previous",
            };
            KeyInfo {
                purpose: &key.purpose,
                version: key.version,
                state,
                kms_key_id: &key.kms_key_id,
                created_at: key.created_at,
                entries: used.entries,
                quarantine_rows: used.quarantine_rows,
                logins: used.logins,
                forgotten_users: used.forgotten_users,
            }
        })
        .collect();
    match format {
        OutputFormat::Json => outln!("{}", serde_json::to_string_pretty(&infos)?)?,
        OutputFormat::Text => {
            outln!(
                "{:<10} {:>7}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>9}  kms key",
                "purpose",
                "version",
                "state",
                "created",
                "entries",
                "quarantine",
                "logins",
                "forgotten"
            )?;
            for info in &infos {
                outln!(
                    "{:<10} {:>7}  {:<8}  {:<20}  {:>10}  {:>10}  {:>10}  {:>9}  {}",
                    info.purpose,
                    info.version,
                    info.state,
                    info.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    info.entries,
                    info.quarantine_rows,
                    info.logins,
                    info.forgotten_users,
                    info.kms_key_id
                )?;
            }
            if let Some(minimum) = settings.min_vault_key_version {
                outln!("ingest seals with vault key version {minimum} or newer")?;
            }
        }
    }
    Ok(())
}
