//! Reading the hash-chained audit log (`recovery.audit_log`) to verify and anchor it.

use chrono::{DateTime, Utc};
use futures_util::TryStreamExt;
use sqlx::PgPool;

use crate::crypto::{encode_payload, ChainRow, ChainVerifier};

/// The newest row's id and hash; `None` when the log is empty.
pub async fn head(pool: &PgPool) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, row_hash FROM recovery.audit_head()")
        .fetch_optional(pool)
        .await
}

/// An audit row's raw columns, in the order the payload encodes them.
#[derive(sqlx::FromRow)]
struct AuditRow {
    id: i64,
    logged_at: DateTime<Utc>,
    kind: String,
    request_id: Option<i64>,
    db_user: String,
    client_addr: Option<String>,
    application_name: Option<String>,
    field: Option<String>,
    subject: Option<String>,
    reason: Option<String>,
    ticket: Option<String>,
    outcome: String,
    detail: Option<String>,
    request_txid: Option<i64>,
    prev_hash: Vec<u8>,
    row_hash: Vec<u8>,
}

impl AuditRow {
    /// The payload the row's hash covers, built here rather than by a database function.
    fn payload(&self) -> Vec<u8> {
        let id = self.id.to_string();
        let logged_at = self.logged_at.timestamp_micros().to_string();
        let request_id = self.request_id.map(|v| v.to_string());
        let request_txid = self.request_txid.map(|v| v.to_string());
        encode_payload(&[
            Some(&id),
            Some(&logged_at),
            Some(&self.kind),
            request_id.as_deref(),
            Some(&self.db_user),
            self.client_addr.as_deref(),
            self.application_name.as_deref(),
            self.field.as_deref(),
            self.subject.as_deref(),
            self.reason.as_deref(),
            self.ticket.as_deref(),
            Some(&self.outcome),
            self.detail.as_deref(),
            request_txid.as_deref(),
        ])
    }
}

/// Streams every row, in chain order, through the verifier. Only built-in casts are used
/// (`pg_catalog.text(inet)`), nothing the schema owner could replace.
pub async fn verify(pool: &PgPool, verifier: &mut ChainVerifier) -> Result<(), sqlx::Error> {
    let mut rows = sqlx::query_as::<_, AuditRow>(
        "SELECT id, logged_at, kind, request_id, db_user, pg_catalog.text(client_addr) AS client_addr, \
         application_name, field, subject, reason, ticket, outcome, detail, request_txid, \
         prev_hash, row_hash FROM recovery.audit_log ORDER BY id",
    )
    .fetch(pool);
    while let Some(row) = rows.try_next().await? {
        verifier.push(&ChainRow {
            id: row.id,
            prev_hash: &row.prev_hash,
            row_hash: &row.row_hash,
            payload: &row.payload(),
        });
    }
    Ok(())
}
