//! The two-step, audited functions of the `recovery` schema (see the migrations): recovering
//! masks, opening quarantined bodies, and the recovery policy.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use crate::domain::PiiField;

/// One requested mask as `recovery.fetch` returns it.
#[derive(Clone, sqlx::FromRow)]
pub struct RecoveryRow {
    pub mask: String,
    /// `found`, `not_found` or `refused`.
    pub outcome: String,
    /// Why a refused request was refused.
    pub detail: Option<String>,
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
        "SELECT mask, outcome, detail, ciphertext, vault_key_version, kms_key_id, wrapped_key \
         FROM recovery.fetch($1)",
    )
    .bind(request_id)
    .fetch_all(pool)
    .await
}

/// One requested quarantined message as `recovery.fetch_quarantine` returns it.
#[derive(Clone, sqlx::FromRow)]
pub struct QuarantineOpening {
    pub message_id: String,
    pub outcome: String,
    pub detail: Option<String>,
    pub body_ciphertext: Option<Vec<u8>>,
    /// `quarantine` (sealed to the key pair) or `vault` (rows sealed before it existed).
    pub key_purpose: Option<String>,
    pub key_version: Option<i32>,
    pub kms_key_id: Option<String>,
    pub wrapped_key: Option<Vec<u8>>,
}

/// Records a request to open quarantined messages and commits it; returns the request id.
pub async fn request_quarantine(
    pool: &PgPool,
    message_ids: &[String],
    reason: &str,
    ticket: Option<&str>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.request_quarantine($1, $2, $3)")
        .bind(message_ids)
        .bind(reason)
        .bind(ticket)
        .fetch_one(pool)
        .await
}

/// The sealed bodies and wrapped keys of a committed quarantine request.
pub async fn fetch_quarantine(
    pool: &PgPool,
    request_id: i64,
) -> Result<Vec<QuarantineOpening>, sqlx::Error> {
    sqlx::query_as(
        "SELECT message_id, outcome, detail, body_ciphertext, key_purpose, key_version, \
         kms_key_id, wrapped_key FROM recovery.fetch_quarantine($1)",
    )
    .bind(request_id)
    .fetch_all(pool)
    .await
}

/// The recovery policy as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub require_ticket: bool,
    /// Values one database user may open per UTC day; 0: no limit.
    pub daily_limit: i32,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const POLICY_COLUMNS: &str = "require_ticket, daily_limit, updated_at, updated_by";

pub async fn policy(pool: &PgPool) -> Result<Policy, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM recovery.policy WHERE singleton"
    ))
    .fetch_one(pool)
    .await
}

/// Changes the given settings (the others stay) and records the change in the audit log.
pub async fn set_policy(
    pool: &PgPool,
    require_ticket: Option<bool>,
    daily_limit: Option<i32>,
) -> Result<Policy, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM recovery.set_policy($1, $2)"
    ))
    .bind(require_ticket)
    .bind(daily_limit)
    .fetch_one(pool)
    .await
}
