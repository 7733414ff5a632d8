//! `etl.file_batches` and the lock of a file source: what `etl ingest --from-file` reads before
//! it writes (its batches' claims are written by `writer`).

use sqlx::{Connection, PgConnection, PgPool};

use crate::domain::file_line::Fingerprint;

/// A range of lines an earlier run committed.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CommittedRange {
    pub first_line: i64,
    pub last_line: i64,
    pub lines_digest: Vec<u8>,
}

/// A session advisory lock on the input's fingerprint, on a connection of its own, or `None` if
/// another session holds it. Closing the connection releases it.
pub async fn lock_source(
    pool: &PgPool,
    source: Fingerprint,
) -> Result<Option<PgConnection>, sqlx::Error> {
    let mut conn = pool.acquire().await?.detach();
    let mut key = [0u8; 8];
    key.copy_from_slice(&source[..8]);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(i64::from_be_bytes(key))
        .fetch_one(&mut conn)
        .await?;
    if locked {
        Ok(Some(conn))
    } else {
        // The server drops the connection either way.
        let _ = conn.close().await;
        Ok(None)
    }
}

/// The input's committed ranges, in line order.
pub async fn committed_ranges(
    pool: &PgPool,
    source: Fingerprint,
) -> Result<Vec<CommittedRange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT first_line, last_line, lines_digest FROM etl.file_batches
         WHERE source = $1 ORDER BY first_line",
    )
    .bind(source.as_slice())
    .fetch_all(pool)
    .await
}
