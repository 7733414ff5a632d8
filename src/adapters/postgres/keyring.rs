//! `keyring.data_keys`: wrapped data keys, one row per (purpose, version).

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use crate::crypto::KeyPurpose;

/// A stored, still wrapped, data key. `Debug` prints the blob's length only.
#[derive(Clone, sqlx::FromRow)]
pub struct StoredKey {
    pub purpose: String,
    pub version: i32,
    pub kms_key_id: String,
    pub wrapped_key: Vec<u8>,
    pub created_at: DateTime<Utc>,
    /// The quarantine key pair's public half and its KMS attestation.
    pub public_key: Option<Vec<u8>>,
    pub public_key_attestation: Option<Vec<u8>>,
}

const KEY_COLUMNS: &str =
    "purpose, version, kms_key_id, wrapped_key, created_at, public_key, public_key_attestation";

impl std::fmt::Debug for StoredKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredKey")
            .field("purpose", &self.purpose)
            .field("version", &self.version)
            .field("kms_key_id", &self.kms_key_id)
            .field("wrapped_key_len", &self.wrapped_key.len())
            .field("created_at", &self.created_at)
            .finish()
    }
}

/// The newest version of a purpose's key.
pub async fn latest(pool: &PgPool, purpose: KeyPurpose) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys WHERE purpose = $1 \
         ORDER BY version DESC LIMIT 1"
    ))
    .bind(purpose.as_str())
    .fetch_optional(pool)
    .await
}

/// The newest quarantine public key as ingest reads it, through the function that shows it
/// without the wrapped private key.
#[derive(Clone, sqlx::FromRow)]
pub struct PublicKey {
    pub version: i32,
    pub kms_key_id: String,
    pub public_key: Vec<u8>,
    pub public_key_attestation: Vec<u8>,
}

pub async fn quarantine_public_key(pool: &PgPool) -> Result<Option<PublicKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, kms_key_id, public_key, public_key_attestation \
         FROM keyring.quarantine_public_key()",
    )
    .fetch_optional(pool)
    .await
}

/// A quarantine public key and its attestation, to store beside the wrapped seed.
pub struct PublicHalf<'a> {
    pub public_key: &'a [u8],
    pub attestation: &'a [u8],
}

/// Stores a wrapped key (and, for the quarantine key pair, its public key) unless that
/// (purpose, version) exists; returns whether it was stored.
pub async fn insert_if_absent(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    public: Option<PublicHalf<'_>>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO keyring.data_keys (purpose, version, kms_key_id, wrapped_key, public_key, \
         public_key_attestation) VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (purpose, version) DO NOTHING",
    )
    .bind(purpose.as_str())
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .bind(public.as_ref().map(|p| p.public_key))
    .bind(public.as_ref().map(|p| p.attestation))
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<StoredKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys ORDER BY purpose, version"
    ))
    .fetch_all(pool)
    .await
}

/// Replaces a key's wrapping (same data key, wrapped under another KMS key), and its public
/// key's attestation if it has one.
pub async fn rewrap(
    pool: &PgPool,
    purpose: &str,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    attestation: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keyring.data_keys SET kms_key_id = $3, wrapped_key = $4, \
         public_key_attestation = coalesce($5, public_key_attestation) \
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose)
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .bind(attestation)
    .execute(pool)
    .await?;
    Ok(())
}
