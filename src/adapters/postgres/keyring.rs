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
}

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
    sqlx::query_as(
        "SELECT purpose, version, kms_key_id, wrapped_key, created_at FROM keyring.data_keys \
         WHERE purpose = $1 ORDER BY version DESC LIMIT 1",
    )
    .bind(purpose.as_str())
    .fetch_optional(pool)
    .await
}

/// The newest quarantine public key and its version, through the function that lets ingest
/// read it without seeing the wrapped private key's row.
pub async fn quarantine_public_key(pool: &PgPool) -> Result<Option<(i32, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT version, public_key FROM keyring.quarantine_public_key()")
        .fetch_optional(pool)
        .await
}

/// Stores a wrapped key (and, for the quarantine key pair, its public key) unless that
/// (purpose, version) exists; returns whether it was stored.
pub async fn insert_if_absent(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    public_key: Option<&[u8]>,
) -> Result<bool, sqlx::Error> {
    let result = sqlx::query(
        "INSERT INTO keyring.data_keys (purpose, version, kms_key_id, wrapped_key, public_key) \
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (purpose, version) DO NOTHING",
    )
    .bind(purpose.as_str())
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .bind(public_key)
    .execute(pool)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<StoredKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT purpose, version, kms_key_id, wrapped_key, created_at FROM keyring.data_keys \
         ORDER BY purpose, version",
    )
    .fetch_all(pool)
    .await
}

/// Replaces a key's wrapping (same data key, wrapped under another KMS key).
pub async fn rewrap(
    pool: &PgPool,
    purpose: &str,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keyring.data_keys SET kms_key_id = $3, wrapped_key = $4 \
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose)
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .execute(pool)
    .await?;
    Ok(())
}
