//! Opening values on record: a request is committed to the audit log (under the recovery policy,
//! which the database enforces) before anything is fetched; then each vault key version named is
//! unwrapped once and the values opened. `etl recover`, `etl export` and `etl quarantine show`
//! all go this way.

use std::collections::hash_map::{Entry, HashMap};

use serde::Serialize;

use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, recovery};
use crate::crypto::{KeyPurpose, Sealer};
use crate::domain::{Justification, PiiField};

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "the database refused the recovery: your database user needs the etl_recoverer role \
         (an administrator runs: GRANT etl_recoverer TO <your user>)"
    )]
    NotRecoverer,
    #[error("a recovery request must be committed before its values are fetched")]
    NotCommitted,
    #[error(
        "the audit log is held by another session's open transaction; try again, and ask an \
         administrator to look for idle transactions of recoverers"
    )]
    Busy,
    #[error("the recovery policy refused the request: {0} (recorded in the audit log)")]
    Refused(String),
    #[error("during recovery: {0}")]
    Database(#[source] postgres::DatabaseError),
    #[error(transparent)]
    Unwrap(#[from] crate::adapters::kms::UnwrapError),
    #[error("vault entry for mask {mask} does not open: {source}")]
    Open {
        mask: String,
        source: crate::crypto::SealError,
    },
    #[error("vault entry for mask {mask} has no vault key on record")]
    MissingKey { mask: String },
}

/// The conversion of the recovery functions' errors on `pool`.
pub fn database_error(pool: &sqlx::PgPool) -> impl Fn(sqlx::Error) -> RecoverError + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            RecoverError::NotRecoverer
        }
        // recovery.fetch in the request's own transaction, or a wait for the audit chain that
        // timed out (another session holds it in an open transaction).
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55000") => {
            RecoverError::NotCommitted
        }
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => RecoverError::Busy,
        _ => RecoverError::Database(postgres::DatabaseError::on(pool)(err)),
    }
}

#[derive(Serialize)]
pub struct Recovered {
    pub field: &'static str,
    pub mask: String,
    pub outcome: String,
    pub value: Option<String>,
}

/// The audited recovery of masks of one field: the request is committed, then fetched, and each
/// vault key version unwrapped once. One result per mask, in the order given.
pub async fn recover_masks(
    pool: &sqlx::PgPool,
    kms: &Kms,
    field: PiiField,
    masks: &[String],
    why: &Justification,
) -> anyhow::Result<Vec<Recovered>> {
    let request_id = recovery::request(pool, field, masks, why.reason(), why.ticket())
        .await
        .map_err(database_error(pool))?;
    let rows = recovery::fetch(pool, request_id)
        .await
        .map_err(database_error(pool))?;
    if let Some(refused) = rows.iter().find(|row| row.outcome == "refused") {
        return Err(RecoverError::Refused(refused.detail.clone().unwrap_or_default()).into());
    }
    let mut sealers: HashMap<i32, Sealer> = HashMap::new();
    let mut results = Vec::with_capacity(rows.len());
    for row in rows {
        let value = match (&row.ciphertext, row.vault_key_version) {
            (Some(ciphertext), Some(version)) => {
                let sealer = match sealers.entry(version) {
                    Entry::Occupied(entry) => entry.into_mut(),
                    Entry::Vacant(slot) => {
                        let (Some(kms_key_id), Some(wrapped)) = (&row.kms_key_id, &row.wrapped_key)
                        else {
                            return Err(RecoverError::MissingKey { mask: row.mask }.into());
                        };
                        let key = kms
                            .unwrap_data_key(kms_key_id, KeyPurpose::Vault, version, wrapped)
                            .await
                            .map_err(RecoverError::from)?;
                        slot.insert(Sealer::new(&key))
                    }
                };
                let plain = sealer
                    .open_value(field, &row.mask, ciphertext)
                    .map_err(|source| RecoverError::Open {
                        mask: row.mask.clone(),
                        source,
                    })?;
                Some(plain.to_string())
            }
            _ => None,
        };
        results.push(Recovered {
            field: field.as_str(),
            mask: row.mask,
            outcome: row.outcome,
            value,
        });
    }
    anyhow::ensure!(
        results.len() == masks.len(),
        "the recovery request returned {} of {} masks",
        results.len(),
        masks.len()
    );
    Ok(results)
}
