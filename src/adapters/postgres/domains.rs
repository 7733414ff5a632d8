//! Pseudonymisation domains (migration `pseudonymisation_domains`): the domains, their wrapped
//! mask keys, and their tables `domains.<name>`.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// A domain as listed: its name, its reader role, its newest key version.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Domain {
    pub name: String,
    pub role: String,
    pub key_version: i32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A domain's newest mask key, still wrapped. `Debug` prints the blob's length only.
#[derive(Clone, sqlx::FromRow)]
pub struct DomainKey {
    pub domain: String,
    pub version: i32,
    pub kms_key_id: String,
    pub wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKey")
            .field("domain", &self.domain)
            .field("version", &self.version)
            .field("kms_key_id", &self.kms_key_id)
            .field("wrapped_key_len", &self.wrapped_key.len())
            .finish()
    }
}

/// Creates a domain with its first key; returns its reader role. On record, and every running
/// ingest reloads its keys before its next commit.
pub async fn add(
    pool: &PgPool,
    name: &str,
    kms_key_id: &str,
    wrapped_key: &[u8],
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.add_domain($1, $2, $3)")
        .bind(name)
        .bind(kms_key_id)
        .bind(wrapped_key)
        .fetch_one(pool)
        .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<Domain>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.name, 'etl_domain_' || d.name AS role, max(k.version) AS key_version, \
                d.created_at, d.created_by \
         FROM etl.domains d JOIN keyring.domain_keys k ON k.domain = d.name \
         GROUP BY d.name, d.created_at, d.created_by ORDER BY d.name COLLATE \"C\"",
    )
    .fetch_all(pool)
    .await
}

/// Each domain's newest key, by name in byte order (the order of
/// `etl.domain_key_versions()`).
pub async fn newest_keys(pool: &PgPool) -> Result<Vec<DomainKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT DISTINCT ON (k.domain COLLATE \"C\") k.domain, k.version, k.kms_key_id, \
                k.wrapped_key \
         FROM keyring.domain_keys k JOIN etl.domains d ON d.name = k.domain \
         ORDER BY k.domain COLLATE \"C\", k.version DESC",
    )
    .fetch_all(pool)
    .await
}

/// Every version of every domain's key, as stored: whether each is a KMS ciphertext.
pub async fn stored_keys(pool: &PgPool) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as("SELECT kms_key_id, octet_length(wrapped_key) FROM keyring.domain_keys")
        .fetch_all(pool)
        .await
}
