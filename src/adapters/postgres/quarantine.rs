//! Reading `etl.quarantine` for operators. Bodies stay sealed: they are never selected here.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

/// One quarantined message as shown to operators.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct QuarantineEntry {
    pub message_id: String,
    pub reason: String,
    pub detail: String,
    pub received_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
    pub receive_count: Option<i32>,
}

/// The newest `limit` entries, oldest first.
pub async fn list(pool: &PgPool, limit: i64) -> Result<Vec<QuarantineEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT * FROM (SELECT message_id, reason, detail, received_at, sent_at, receive_count \
         FROM etl.quarantine ORDER BY received_at DESC, message_id LIMIT $1) AS newest \
         ORDER BY received_at, message_id",
    )
    .bind(limit)
    .fetch_all(pool)
    .await
}
