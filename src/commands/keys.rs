use anyhow::Context;

use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::keyring;
use crate::cli::DatabaseArgs;
use crate::crypto::KeyPurpose;
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// The first version of each key.
const FIRST_VERSION: i32 = 1;

/// Creates whichever of the mask and vault keys does not exist yet. KMS generates them with
/// `GenerateDataKeyWithoutPlaintext`, so this command never holds key material.
pub async fn init(database: &DatabaseArgs, kms_key_id: &str) -> anyhow::Result<()> {
    let kms_key_id = kms_key_id.trim();
    anyhow::ensure!(
        !kms_key_id.is_empty(),
        "--kms-key-id / ETL_KMS_KEY_ID is empty"
    );
    let pool = super::pool(database)?;
    let kms = Kms::new(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await);
    let mut created = 0;
    for purpose in KeyPurpose::ALL {
        let name = purpose.as_str();
        if let Some(existing) = keyring::latest(&pool, purpose)
            .await
            .context("reading keyring.data_keys")?
        {
            println!(
                "{name} key: already present (version {}, wrapped by {}, created {})",
                existing.version, existing.kms_key_id, existing.created_at
            );
            continue;
        }
        let wrapped = kms
            .generate_data_key(kms_key_id, purpose, FIRST_VERSION)
            .await
            .with_context(|| format!("generating the {name} data key"))?;
        let stored = keyring::insert_if_absent(
            &pool,
            purpose,
            FIRST_VERSION,
            &wrapped.kms_key_arn,
            &wrapped.blob,
        )
        .await
        .context("storing the wrapped data key")?;
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
        println!("nothing changed: both data keys already exist");
    }
    Ok(())
}
