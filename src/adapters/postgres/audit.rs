//! Reading the hash-chained audit log (`recovery.audit_log`) to verify and anchor it.

use futures_util::TryStreamExt;
use sqlx::PgPool;

use crate::crypto::{ChainRow, ChainVerifier};

/// The newest row's id and hash; `None` when the log is empty.
pub async fn head(pool: &PgPool) -> Result<Option<(i64, Vec<u8>)>, sqlx::Error> {
    sqlx::query_as("SELECT id, row_hash FROM recovery.audit_head()")
        .fetch_optional(pool)
        .await
}

/// Streams every row, in chain order, through the verifier.
pub async fn verify(pool: &PgPool, verifier: &mut ChainVerifier) -> Result<(), sqlx::Error> {
    let mut rows = sqlx::query_as::<_, (i64, Vec<u8>, Vec<u8>, Vec<u8>)>(
        "SELECT a.id, a.prev_hash, a.row_hash, recovery.audit_payload(a) \
         FROM recovery.audit_log a ORDER BY a.id",
    )
    .fetch(pool);
    while let Some((id, prev_hash, row_hash, payload)) = rows.try_next().await? {
        verifier.push(&ChainRow {
            id,
            prev_hash: &prev_hash,
            row_hash: &row_hash,
            payload: &payload,
        });
    }
    Ok(())
}
