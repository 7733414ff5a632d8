//! Data keys below the command line, in one place: loading them for ingest and `etl lambda`, the
//! live keys a running process swaps when a rotation or a re-mask changes them, one cache of
//! unwrapped versions for whatever opens values (the recovery service, the key jobs, the
//! replay), and the lock that keeps key jobs one at a time.

pub mod cache;
mod live;
mod load;
mod quarantine;
mod vault;

pub use cache::{KeyCache, Opener, StoredKeyRef};
pub use live::LiveKeys;
pub use load::{load_transformer, load_user_keys, unwrap_stored, KeyLoadError};
pub use quarantine::QuarantineOpeners;
pub use vault::VaultKeys;

use std::sync::Arc;

use anyhow::Context;
use sqlx::{PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adapters::kms::Kms;
use crate::adapters::postgres::{audit, DatabaseError};
use crate::crypto::GENESIS;
use crate::startup;

/// The advisory lock key of the key jobs (`reseal`, `remask`): one at a time per database.
const KEY_JOB_LOCK: i64 = 0x6574_6c5f_6b65_7973;

/// Held (on a connection of its own) for the life of a key job; closing it releases the lock.
pub async fn lock_key_job(pool: &PgPool) -> anyhow::Result<PgConnection> {
    let mut conn = pool
        .acquire()
        .await
        .map_err(DatabaseError::on(pool))?
        .detach();
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(KEY_JOB_LOCK)
        .fetch_one(&mut conn)
        .await
        .map_err(DatabaseError::on(pool))?;
    anyhow::ensure!(
        locked,
        "another key job (`etl keys reseal`, `etl keys remask`, `etl privacy fill-networks`, `etl domains remask` or `etl domains add --backfill`) is running on this database; wait for it to end"
    );
    Ok(conn)
}

/// Unwraps the keys (retrying transient failures until `shutdown`) and logs the audit chain head;
/// `ingest` and `lambda` start alike.
pub async fn load_live_keys(
    pool: &sqlx::PgPool,
    kms: Kms,
    shutdown: &CancellationToken,
) -> anyhow::Result<Arc<LiveKeys>> {
    // A database or KMS hiccup at start is retried beyond the SDK's own retries; a missing key,
    // a denial or a wrong encryption context is not.
    let transformer = startup::retrying(
        shutdown,
        "the data keys",
        || load_transformer(pool, &kms),
        KeyLoadError::is_transient,
    )
    .await
    .context("refusing to start without the data keys")?;
    log_audit_head(pool).await;
    Ok(Arc::new(LiveKeys::new(transformer, kms)))
}

/// The audit chain head at start, so that log storage outside the database keeps an anchor for
/// `etl audit verify --anchor`. Not a reason to stop ingesting if it cannot be read.
async fn log_audit_head(pool: &sqlx::PgPool) {
    match audit::head(pool).await {
        Ok(head) => {
            let (id, hash) = head.unwrap_or((0, GENESIS.to_vec()));
            info!(audit_head = %format!("{id}:{}", hex::encode(hash)), "audit chain head");
        }
        Err(err) => warn!(error = %err, "cannot read the audit chain head"),
    }
}
