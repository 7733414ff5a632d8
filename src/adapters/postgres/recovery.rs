//! The two-step, audited recovery functions of the `recovery` schema (see the migration).

use sqlx::PgPool;

use crate::domain::PiiField;

/// One requested mask as `recovery.fetch` returns it.
#[derive(Clone, sqlx::FromRow)]
pub struct RecoveryRow {
    pub mask: String,
    /// `found`, `not_found` or `refused`.
    pub outcome: String,
    pub ciphertext: Option<Vec<u8>>,
    pub vault_key_version: Option<i32>,
    pub kms_key_id: Option<String>,
    pub wrapped_key: Option<Vec<u8>>,
}

/// Records the request (one audit row per mask) and commits it; returns the request id.
pub async fn request(
    pool: &PgPool,
    field: PiiField,
    masks: &[String],
    reason: &str,
    ticket: Option<&str>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.request($1, $2, $3, $4)")
        .bind(field.as_str())
        .bind(masks)
        .bind(reason)
        .bind(ticket)
        .fetch_one(pool)
        .await
}

/// The ciphertexts and wrapped vault keys of a committed request.
pub async fn fetch(pool: &PgPool, request_id: i64) -> Result<Vec<RecoveryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT mask, outcome, ciphertext, vault_key_version, kms_key_id, wrapped_key \
         FROM recovery.fetch($1)",
    )
    .bind(request_id)
    .fetch_all(pool)
    .await
}
