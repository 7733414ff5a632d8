//! Loading the data keys a process masks and seals with: the active mask key (and the other stored
//! mask key versions), the newest vault key, and the quarantine public key, checked with KMS.

use sqlx::PgPool;

use crate::adapters::kms::{Kms, KmsError, UnwrapError};
use crate::adapters::postgres::{keyring, DatabaseError};
use crate::crypto::{KeyPurpose, Masker, QuarantineSealer, Sealer};
use crate::pipeline::Transformer;

#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
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
    #[error(
        "cannot check the stored quarantine public key (version {version}) with KMS: {source}"
    )]
    PublicKeyUnchecked { version: i32, source: KmsError },
    #[error(
        "the newest vault key is version {newest}, below version {minimum}, the lowest ingest may \
         seal with: a newer keyring row was deleted or restored from an older backup; restore it, \
         or run `etl keys rotate --purpose vault`"
    )]
    VaultKeyBelowMinimum { newest: i32, minimum: i32 },
    #[error(
        "the newest quarantine key is version {newest}, below version {minimum}, the lowest \
         ingest may seal to: a newer keyring row was deleted or restored from an older backup; \
         restore it, or run `etl keys rotate --purpose quarantine`"
    )]
    QuarantineKeyBelowMinimum { newest: i32, minimum: i32 },
    #[error(
        "the data keys changed (a rotation or a re-mask switch) and this process cannot reload \
         them; restart it"
    )]
    CannotReload,
    #[error(transparent)]
    Unwrap(#[from] UnwrapError),
}

impl KeyLoadError {
    /// Whether trying again may succeed: a lost database connection or a KMS call that failed
    /// for a reason other than a denial or a mismatched key.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Database(err) => err.is_transient(),
            Self::Unwrap(err) => err.is_transient(),
            Self::UnattestedPublicKey { source, .. } | Self::PublicKeyUnchecked { source, .. } => {
                source.is_transient()
            }
            Self::MissingKey(_)
            | Self::BadPublicKey(_)
            | Self::VaultKeyBelowMinimum { .. }
            | Self::QuarantineKeyBelowMinimum { .. }
            | Self::CannotReload => false,
        }
    }
}

/// Loads the active mask key (and the other stored mask key versions, whose user hashes the
/// suppression list may hold) and the newest vault key, which must not be below the lowest
/// version ingest may seal with; unwraps each once with KMS (key id and encryption context
/// presented), and keeps only the derived, zeroizing states; and the newest quarantine public
/// key, which needs no unwrapping.
pub async fn load_transformer(pool: &PgPool, kms: &Kms) -> Result<Transformer, KeyLoadError> {
    let stored = keyring::quarantine_public_key(pool)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::Quarantine.as_str()))?;
    let version = stored.version;
    // Stored in clear, so checked with KMS before anything is sealed to it.
    kms.verify_public_key(
        &stored.kms_key_id,
        version,
        &stored.public_key,
        &stored.public_key_attestation,
    )
    .await
    .map_err(|source| match source {
        // Only KMS's refusal to decrypt the attestation says the key is not the one it attested.
        KmsError::InvalidCiphertext { .. } => KeyLoadError::UnattestedPublicKey { version, source },
        source => KeyLoadError::PublicKeyUnchecked { version, source },
    })?;
    let quarantine = QuarantineSealer::from_public_key(version, &stored.public_key)
        .ok_or(KeyLoadError::BadPublicKey(version))?;
    let state = keyring::key_state(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    if let Some(minimum) = state.min_quarantine_key_version.filter(|m| version < *m) {
        return Err(KeyLoadError::QuarantineKeyBelowMinimum {
            newest: version,
            minimum,
        });
    }
    let active = state
        .mask_key_version
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::Mask.as_str()))?;
    let Maskers {
        active: masker,
        others,
    } = maskers(pool, kms, active).await?;
    let vault = keyring::latest(pool, KeyPurpose::Vault)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::Vault.as_str()))?;
    if let Some(minimum) = state.min_vault_key_version.filter(|m| vault.version < *m) {
        return Err(KeyLoadError::VaultKeyBelowMinimum {
            newest: vault.version,
            minimum,
        });
    }
    let vault = unwrap_stored(kms, KeyPurpose::Vault, &vault).await?;
    Ok(Transformer::new(masker, Sealer::new(&vault), quarantine).with_other_mask_versions(others))
}

/// The maskers of every stored mask key version: the active one (not the newest: a pending
/// version masks nothing yet) and the others, whose user hashes the suppression list may hold.
pub struct Maskers {
    pub active: Masker,
    pub others: Vec<Masker>,
}

/// [`Maskers`], for what needs the mask key alone (erasure).
pub async fn load_maskers(pool: &PgPool, kms: &Kms) -> Result<Maskers, KeyLoadError> {
    let active = keyring::active_mask_version(pool)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::Mask.as_str()))?;
    maskers(pool, kms, active).await
}

/// Unwraps every stored mask key version once with KMS.
async fn maskers(pool: &PgPool, kms: &Kms, active: i32) -> Result<Maskers, KeyLoadError> {
    let mut masker = None;
    let mut others = Vec::new();
    for stored in keyring::versions(pool, KeyPurpose::Mask)
        .await
        .map_err(DatabaseError::on(pool))?
    {
        let key = unwrap_stored(kms, KeyPurpose::Mask, &stored).await?;
        if stored.version == active {
            masker = Some(Masker::new(&key));
        } else {
            others.push(Masker::new(&key));
        }
    }
    Ok(Maskers {
        active: masker.ok_or(KeyLoadError::MissingKey(KeyPurpose::Mask.as_str()))?,
        others,
    })
}

/// Unwraps a stored data key with KMS (key id and encryption context presented).
pub async fn unwrap_stored(
    kms: &Kms,
    purpose: KeyPurpose,
    stored: &keyring::StoredKey,
) -> Result<crate::crypto::DataKey, KeyLoadError> {
    Ok(kms
        .unwrap_data_key(
            &stored.kms_key_id,
            purpose,
            stored.version,
            &stored.wrapped_key,
        )
        .await?)
}
