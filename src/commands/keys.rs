use anyhow::Context;

use crate::adapters::aws;
use crate::adapters::kms::{Kms, WrappedKey};
use crate::adapters::postgres::{keyring, DatabaseError};
use crate::cli::{DatabaseArgs, OutputFormat, PurposeArg};
use crate::crypto::{quarantine_key_pair, KeyPurpose};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// The first version of each key.
const FIRST_VERSION: i32 = 1;

/// Creates whichever of the mask, vault and quarantine keys does not exist yet. KMS generates the
/// mask and vault keys with `GenerateDataKeyWithoutPlaintext`, so this command never holds them;
/// the quarantine seed is held for a moment, to compute the public key that ingest seals with.
pub async fn init(database: &DatabaseArgs, kms_key_id: &str) -> anyhow::Result<()> {
    let kms_key_id = kms_key_id.trim();
    anyhow::ensure!(
        !kms_key_id.is_empty(),
        "--kms-key-id / ETL_KMS_KEY_ID is empty"
    );
    let pool = super::pool(database).await?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let mut created = 0;
    for purpose in KeyPurpose::ALL {
        let name = purpose.as_str();
        if let Some(existing) = keyring::latest(&pool, purpose)
            .await
            .map_err(DatabaseError::on(&pool))
            .context("reading keyring.data_keys")?
        {
            println!(
                "{name} key: already present (version {}, wrapped by {}, created {})",
                existing.version, existing.kms_key_id, existing.created_at
            );
            continue;
        }
        let (stored, wrapped) = create_key(&pool, &kms, kms_key_id, purpose, FIRST_VERSION).await?;
        if stored {
            created += 1;
            println!(
                "{name} key: created (version {FIRST_VERSION}, wrapped by {})",
                wrapped.kms_key_arn
            );
        } else {
            println!("{name} key: created concurrently by another run; kept that one");
        }
    }
    if created == 0 {
        println!("nothing changed: every data key already exists");
    }
    Ok(())
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
    let (wrapped, public) = if purpose == KeyPurpose::Quarantine {
        let (wrapped, seed) = kms
            .generate_data_key_with_plaintext(kms_key_id, purpose, version)
            .await
            .with_context(|| format!("generating the {name} key pair's seed"))?;
        let public_key = quarantine_key_pair(&seed).1;
        let attestation = kms
            .attest_public_key(&wrapped.kms_key_arn, version, &public_key)
            .await
            .context("attesting the quarantine public key with KMS")?;
        (wrapped, Some((public_key, attestation)))
    } else {
        let wrapped = kms
            .generate_data_key(kms_key_id, purpose, version)
            .await
            .with_context(|| format!("generating the {name} data key"))?;
        (wrapped, None)
    };
    let stored = keyring::insert_if_absent(
        pool,
        purpose,
        version,
        &wrapped.kms_key_arn,
        &wrapped.blob,
        public
            .as_ref()
            .map(|(public_key, attestation)| keyring::PublicHalf {
                public_key,
                attestation,
            }),
    )
    .await
    .map_err(DatabaseError::on(pool))
    .context("storing the wrapped data key")?;
    Ok((stored, wrapped))
}

/// A new version of the vault key or the quarantine key pair. The mask key is refused: see
/// SECURITY.md.
pub async fn rotate(
    database: &DatabaseArgs,
    purpose: PurposeArg,
    kms_key_id: Option<&str>,
) -> anyhow::Result<()> {
    let purpose = match purpose {
        PurposeArg::Vault => KeyPurpose::Vault,
        PurposeArg::Quarantine => KeyPurpose::Quarantine,
        PurposeArg::Mask => KeyPurpose::Mask,
    };
    let name = purpose.as_str();
    anyhow::ensure!(
        purpose != KeyPurpose::Mask,
        "the mask key is not rotated in place: masks are the analysts' join key, and a new mask key \
         would split every ip and device_id into two unrelated masks. See SECURITY.md, \"Rotation\", \
         for what to do instead"
    );
    let pool = super::pool(database).await?;
    let current = keyring::latest(&pool, purpose)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?
        .ok_or_else(|| anyhow::anyhow!("no {name} key exists yet: run `etl keys init` first"))?;
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
    println!(
        "{name} key: version {version} created (wrapped by {}); ingest processes use it from their next start",
        wrapped.kms_key_arn
    );
    Ok(())
}

/// Re-wraps every data key under `kms_key_id`, inside KMS.
pub async fn rewrap(database: &DatabaseArgs, kms_key_id: &str) -> anyhow::Result<()> {
    let kms_key_id = kms_key_id.trim();
    anyhow::ensure!(!kms_key_id.is_empty(), "--kms-key-id is empty");
    let pool = super::pool(database).await?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let keys = keyring::list(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?;
    anyhow::ensure!(
        !keys.is_empty(),
        "no data keys exist yet: run `etl keys init` first"
    );
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
        println!(
            "{} key version {}: now wrapped by {}",
            key.purpose, key.version, wrapped.kms_key_arn
        );
    }
    Ok(())
}

#[derive(serde::Serialize)]
struct KeyInfo<'a> {
    purpose: &'a str,
    version: i32,
    kms_key_id: &'a str,
    created_at: chrono::DateTime<chrono::Utc>,
}

/// Versions, purposes, KMS keys and creation times; never key material.
pub async fn list(database: &DatabaseArgs, format: OutputFormat) -> anyhow::Result<()> {
    let pool = super::pool(database).await?;
    let keys = keyring::list(&pool)
        .await
        .map_err(DatabaseError::on(&pool))
        .context("reading keyring.data_keys")?;
    let infos: Vec<KeyInfo> = keys
        .iter()
        .map(|key| KeyInfo {
            purpose: &key.purpose,
            version: key.version,
            kms_key_id: &key.kms_key_id,
            created_at: key.created_at,
        })
        .collect();
    match format {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&infos)?),
        OutputFormat::Text => {
            println!(
                "{:<8} {:>7}  {:<20}  kms key",
                "purpose", "version", "created"
            );
            for info in &infos {
                println!(
                    "{:<8} {:>7}  {:<20}  {}",
                    info.purpose,
                    info.version,
                    info.created_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    info.kms_key_id
                );
            }
        }
    }
    Ok(())
}
