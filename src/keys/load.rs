//! Loading the data keys a process masks and seals with: the active mask key, every user key
//! version, the newest vault key, the quarantine public key, checked with KMS, and each
//! pseudonymisation domain's mask key.

use sqlx::PgPool;

use crate::adapters::kms::{Kms, KmsError, UnwrapError};
use crate::adapters::postgres::{domains, keyring, DatabaseError};
use crate::crypto::{
    DomainMasker, DomainMaskers, KeyPurpose, Masker, QuarantineSealer, Sealer, UserKey, UserKeys,
};
use crate::pipeline::Transformer;

#[derive(Debug, thiserror::Error)]
pub enum KeyLoadError {
    #[error("{0}")]
    Database(#[from] DatabaseError),
    #[error("no {0} data key exists yet: run `etl keys init --kms-key-id <id>` first")]
    MissingKey(&'static str),
    #[error("the stored quarantine public key (version {0}) is not an X25519 public key")]
    BadPublicKey(i32),
    #[error("user key version {0} is not a user key's 64 bytes")]
    BadUserKey(i32),
    #[error(
        "stored user hashes name user key versions {0:?}, which the keyring lacks: a user \
         forgotten under them would not be recognised; run `etl keys init` as the owner to carry \
         them over from the mask keys, or restore the keyring"
    )]
    MissingUserKeyVersions(Vec<i32>),
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
            | Self::BadUserKey(_)
            | Self::MissingUserKeyVersions(_)
            | Self::VaultKeyBelowMinimum { .. }
            | Self::QuarantineKeyBelowMinimum { .. }
            | Self::CannotReload => false,
        }
    }
}

/// Loads the active mask key, every user key version (the suppression list holds hashes under
/// each) and the newest vault key, which must not be below the lowest
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
    let mask = keyring::version(pool, KeyPurpose::Mask, active)
        .await
        .map_err(DatabaseError::on(pool))?
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::Mask.as_str()))?;
    let masker = Masker::new(&unwrap_stored(kms, KeyPurpose::Mask, &mask).await?);
    let users = load_user_keys(pool, kms).await?;
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
    let domains = load_domain_maskers(pool, kms).await?;
    Ok(Transformer::new(masker, users, Sealer::new(&vault), quarantine).with_domains(domains))
}

/// Every pseudonymisation domain's active mask key, and its pending one if any, unwrapped once
/// with KMS, in name order.
async fn load_domain_maskers(pool: &PgPool, kms: &Kms) -> Result<Vec<DomainMaskers>, KeyLoadError> {
    let mut maskers: Vec<DomainMaskers> = Vec::new();
    for stored in domains::write_keys(pool)
        .await
        .map_err(DatabaseError::on(pool))?
    {
        let key = kms
            .unwrap_domain_key(
                &stored.kms_key_id,
                &stored.domain,
                stored.version,
                &stored.wrapped_key,
            )
            .await?;
        let masker = DomainMasker::new(stored.domain, &key);
        // Listed by name, then version: a domain's second key is its pending one.
        match maskers.last_mut() {
            Some(last) if last.name() == masker.name() => last.pending = Some(masker),
            _ => maskers.push(DomainMaskers {
                active: masker,
                pending: None,
            }),
        }
    }
    Ok(maskers)
}

/// Unwraps every stored user key version once with KMS: the newest hashes, all recognise.
/// Refuses when a stored hash names a version the keyring lacks.
pub async fn load_user_keys(pool: &PgPool, kms: &Kms) -> Result<UserKeys, KeyLoadError> {
    let missing = keyring::missing_user_key_versions(pool)
        .await
        .map_err(DatabaseError::on(pool))?;
    if !missing.is_empty() {
        return Err(KeyLoadError::MissingUserKeyVersions(missing));
    }
    let mut keys = Vec::new();
    for stored in keyring::versions(pool, KeyPurpose::User)
        .await
        .map_err(DatabaseError::on(pool))?
    {
        let key = unwrap_stored(kms, KeyPurpose::User, &stored).await?;
        keys.push(UserKey::new(&key).ok_or(KeyLoadError::BadUserKey(stored.version))?);
    }
    // Oldest first: the newest is the last.
    let newest = keys
        .pop()
        .ok_or(KeyLoadError::MissingKey(KeyPurpose::User.as_str()))?;
    keys.reverse();
    Ok(UserKeys::new(newest, keys))
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
