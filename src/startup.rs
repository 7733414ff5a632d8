//! Building what a command needs: SDK clients, the database pool, unwrapped keys.

use std::time::Duration;

use sqlx::PgPool;

use crate::adapters::kms::{Kms, KmsError};
use crate::adapters::postgres::keyring;
use crate::crypto::{KeyPurpose, Masker, Sealer};
use crate::pipeline::Transformer;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot read the data keys from the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("no {0} data key exists yet: run `etl keys init --kms-key-id <id>` first")]
    MissingKey(&'static str),
    #[error("cannot unwrap the {purpose} data key (version {version}) with KMS: {source}")]
    Unwrap {
        purpose: &'static str,
        version: i32,
        source: KmsError,
    },
}

impl StartupError {
    /// Whether trying again may succeed: a lost database connection or a KMS call that failed
    /// for a reason other than a denial or a mismatched key.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(err) => crate::adapters::postgres::is_transient(err),
            Self::Unwrap { source, .. } => matches!(source, KmsError::Call { .. }),
            Self::MissingKey(_) => false,
        }
    }
}

/// Loads the newest mask and vault keys, unwraps each once with KMS (key id and encryption context
/// presented), and keeps only the derived, zeroizing states.
pub async fn load_transformer(pool: &PgPool, kms: &Kms) -> Result<Transformer, StartupError> {
    let mask = unwrap_latest(pool, kms, KeyPurpose::Mask).await?;
    let vault = unwrap_latest(pool, kms, KeyPurpose::Vault).await?;
    Ok(Transformer::new(Masker::new(&mask), Sealer::new(&vault)))
}

async fn unwrap_latest(
    pool: &PgPool,
    kms: &Kms,
    purpose: KeyPurpose,
) -> Result<crate::crypto::DataKey, StartupError> {
    let stored = keyring::latest(pool, purpose)
        .await?
        .ok_or(StartupError::MissingKey(purpose.as_str()))?;
    kms.decrypt_data_key(
        &stored.kms_key_id,
        purpose,
        stored.version,
        &stored.wrapped_key,
    )
    .await
    .map_err(|source| StartupError::Unwrap {
        purpose: purpose.as_str(),
        version: stored.version,
        source,
    })
}

/// KMS calls are short; this bounds each attempt.
pub const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);
