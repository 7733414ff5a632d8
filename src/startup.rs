//! Building what a command needs: SDK clients, the database pool, unwrapped keys.

use std::time::Duration;

use sqlx::PgPool;

use crate::adapters::kms::{Kms, KmsError, UnwrapError};
use crate::adapters::postgres::{keyring, DatabaseError};
use crate::crypto::{KeyPurpose, Masker, QuarantineSealer, Sealer};
use crate::pipeline::Transformer;

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("{0}")]
    Database(#[from] DatabaseError),
    #[error("no {0} data key exists yet: run `etl keys init --kms-key-id <id>` first")]
    MissingKey(&'static str),
    #[error("the stored quarantine public key (version {0}) is not an X25519 public key")]
    BadPublicKey(i32),
    #[error(
        "refusing the stored quarantine public key (version {version}): its KMS attestation does \
         not verify, so it is not the key `etl keys` created ({source})"
    )]
    UnattestedPublicKey { version: i32, source: KmsError },
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
}

impl StartupError {
    /// Whether trying again may succeed: a lost database connection or a KMS call that failed
    /// for a reason other than a denial or a mismatched key.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(err) => err.is_transient(),
            Self::Unwrap(err) => err.is_transient(),
            Self::UnattestedPublicKey { source, .. } => source.is_transient(),
            Self::MissingKey(_) | Self::BadPublicKey(_) => false,
        }
    }
}

/// Loads the newest mask and vault keys, unwraps each once with KMS (key id and encryption context
/// presented), and keeps only the derived, zeroizing states; and the newest quarantine public key,
/// which needs no unwrapping.
pub async fn load_transformer(pool: &PgPool, kms: &Kms) -> Result<Transformer, StartupError> {
    let stored = keyring::quarantine_public_key(pool)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(StartupError::MissingKey(KeyPurpose::Quarantine.as_str()))?;
    let version = stored.version;
    // Stored in clear, so checked with KMS before anything is sealed to it.
    kms.verify_public_key(
        &stored.kms_key_id,
        version,
        &stored.public_key,
        &stored.public_key_attestation,
    )
    .await
    .map_err(|source| StartupError::UnattestedPublicKey { version, source })?;
    let quarantine = QuarantineSealer::from_public_key(version, &stored.public_key)
        .ok_or(StartupError::BadPublicKey(version))?;
    let mask = unwrap_latest(pool, kms, KeyPurpose::Mask).await?;
    let vault = unwrap_latest(pool, kms, KeyPurpose::Vault).await?;
    Ok(Transformer::new(
        Masker::new(&mask),
        Sealer::new(&vault),
        quarantine,
    ))
}

async fn unwrap_latest(
    pool: &PgPool,
    kms: &Kms,
    purpose: KeyPurpose,
) -> Result<crate::crypto::DataKey, StartupError> {
    let stored = keyring::latest(pool, purpose)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(StartupError::MissingKey(purpose.as_str()))?;
    Ok(kms
        .unwrap_data_key(
            &stored.kms_key_id,
            purpose,
            stored.version,
            &stored.wrapped_key,
        )
        .await?)
}

/// KMS calls are short; this bounds each attempt.
pub const KMS_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// Keeps unwrapped keys out of core dumps: the process becomes non-dumpable (no core file, no
/// ptrace attach by other processes of the same user) and its core size limit 0. Called first in
/// `main`, before any key is unwrapped.
#[cfg(target_os = "linux")]
pub fn disable_core_dumps() -> Result<(), nix::Error> {
    use nix::sys::resource::{setrlimit, Resource};
    nix::sys::prctl::set_dumpable(false)?;
    setrlimit(Resource::RLIMIT_CORE, 0, 0)
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_process_becomes_non_dumpable_without_core_files() {
        use nix::sys::resource::{getrlimit, Resource};
        super::disable_core_dumps().unwrap();
        assert!(!nix::sys::prctl::get_dumpable().unwrap());
        assert_eq!(getrlimit(Resource::RLIMIT_CORE).unwrap(), (0, 0));
    }
}
