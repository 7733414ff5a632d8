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
    /// The quarantine key pair's public half and its KMS attestation.
    pub public_key: Option<Vec<u8>>,
    pub public_key_attestation: Option<Vec<u8>>,
}

const KEY_COLUMNS: &str =
    "purpose, version, kms_key_id, wrapped_key, created_at, public_key, public_key_attestation";

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
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys WHERE purpose = $1 \
         ORDER BY version DESC LIMIT 1"
    ))
    .bind(purpose.as_str())
    .fetch_optional(pool)
    .await
}

/// The newest quarantine public key as ingest reads it, through the function that shows it
/// without the wrapped private key.
#[derive(Clone, sqlx::FromRow)]
pub struct PublicKey {
    pub version: i32,
    pub kms_key_id: String,
    pub public_key: Vec<u8>,
    pub public_key_attestation: Vec<u8>,
}

pub async fn quarantine_public_key(pool: &PgPool) -> Result<Option<PublicKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT version, kms_key_id, public_key, public_key_attestation \
         FROM keyring.quarantine_public_key()",
    )
    .fetch_optional(pool)
    .await
}

/// What a keyring row stores beside the wrapped key: the quarantine key pair's public half and
/// its KMS attestation, or a user key's check value.
pub enum Beside {
    Nothing,
    PublicHalf {
        public_key: Vec<u8>,
        attestation: Vec<u8>,
    },
    KeyCheck([u8; 32]),
}

/// Stores a wrapped key and what goes beside it unless that (purpose, version) exists; returns
/// whether it was stored.
pub async fn insert_if_absent(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    beside: &Beside,
) -> Result<bool, sqlx::Error> {
    let mut conn = pool.acquire().await?;
    insert(&mut conn, purpose, version, kms_key_id, wrapped, beside).await
}

/// The insert of [`insert_if_absent`], on a connection or in a transaction.
async fn insert(
    conn: &mut sqlx::PgConnection,
    purpose: KeyPurpose,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    beside: &Beside,
) -> Result<bool, sqlx::Error> {
    let (public_key, attestation, key_check) = match beside {
        Beside::Nothing => (None, None, None),
        Beside::PublicHalf {
            public_key,
            attestation,
        } => (
            Some(public_key.as_slice()),
            Some(attestation.as_slice()),
            None,
        ),
        Beside::KeyCheck(check) => (None, None, Some(check.as_slice())),
    };
    let result = sqlx::query(
        "INSERT INTO keyring.data_keys (purpose, version, kms_key_id, wrapped_key, public_key, \
         public_key_attestation, key_check) VALUES ($1, $2, $3, $4, $5, $6, $7) \
         ON CONFLICT (purpose, version) DO NOTHING",
    )
    .bind(purpose.as_str())
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .bind(public_key)
    .bind(attestation)
    .bind(key_check)
    .execute(conn)
    .await?;
    Ok(result.rows_affected() == 1)
}

/// Every stored key, by purpose then version.
pub async fn list(pool: &PgPool) -> Result<Vec<StoredKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys ORDER BY purpose, version"
    ))
    .fetch_all(pool)
    .await
}

/// Replaces a key's wrapping (same data key, wrapped under another KMS key), and its public
/// key's attestation if it has one.
pub async fn rewrap(
    pool: &PgPool,
    purpose: &str,
    version: i32,
    kms_key_id: &str,
    wrapped: &[u8],
    attestation: Option<&[u8]>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keyring.data_keys SET kms_key_id = $3, wrapped_key = $4, \
         public_key_attestation = coalesce($5, public_key_attestation) \
         WHERE purpose = $1 AND version = $2",
    )
    .bind(purpose)
    .bind(version)
    .bind(kms_key_id)
    .bind(wrapped)
    .bind(attestation)
    .execute(pool)
    .await?;
    Ok(())
}

/// One stored version of a purpose's key.
pub async fn version(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
) -> Result<Option<StoredKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys WHERE purpose = $1 AND version = $2"
    ))
    .bind(purpose.as_str())
    .bind(version)
    .fetch_optional(pool)
    .await
}

/// Every stored version of a purpose's key, oldest first.
pub async fn versions(pool: &PgPool, purpose: KeyPurpose) -> Result<Vec<StoredKey>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {KEY_COLUMNS} FROM keyring.data_keys WHERE purpose = $1 ORDER BY version"
    ))
    .bind(purpose.as_str())
    .fetch_all(pool)
    .await
}

/// Whether user hashes or backfill claims were made before the user key existed, with subkeys
/// of the mask keys: the suppression list, quarantined rows' hashes, the file claims.
pub async fn hashed_under_mask_keys(pool: &PgPool) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM etl.forgotten_users) \
             OR EXISTS (SELECT 1 FROM etl.quarantine WHERE user_hash IS NOT NULL) \
             OR EXISTS (SELECT 1 FROM etl.file_batches)",
    )
    .fetch_one(pool)
    .await
}

/// Raises the vault epoch, so that running ingest processes compare their keys with
/// `etl.key_state()` at their next batch. Waits for batches committing now.
pub async fn raise_vault_epoch(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT etl.raise_vault_epoch()")
        .execute(pool)
        .await
        .map(drop)
}

/// User key versions that stored hashes name and the keyring lacks.
pub async fn missing_user_key_versions(pool: &PgPool) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.missing_user_key_versions()")
        .fetch_one(pool)
        .await
}

/// A user key version carried over from a mask key version, wrapped, to store.
pub struct CarriedUserKey {
    pub version: i32,
    pub kms_key_id: String,
    pub wrapped: Vec<u8>,
    pub key_check: [u8; 32],
}

/// Stores carried-over user key versions in one transaction (all or none), keeping any that
/// exists; returns how many were stored.
pub async fn insert_carried(pool: &PgPool, keys: &[CarriedUserKey]) -> Result<u64, sqlx::Error> {
    let mut tx = pool.begin().await?;
    let mut stored = 0;
    for key in keys {
        let beside = Beside::KeyCheck(key.key_check);
        let inserted = insert(
            &mut tx,
            KeyPurpose::User,
            key.version,
            &key.kms_key_id,
            &key.wrapped,
            &beside,
        )
        .await?;
        stored += u64::from(inserted);
    }
    tx.commit().await?;
    Ok(stored)
}

/// The mask key version ingest masks with (`None` before `etl keys init`).
pub async fn active_mask_version(pool: &PgPool) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT keyring.active_mask_key_version()")
        .fetch_one(pool)
        .await
}

/// What ingest compares its keys with, read with the vault epoch in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct KeyState {
    pub epoch: i64,
    pub mask_key_version: Option<i32>,
    pub vault_key_version: Option<i32>,
    pub min_vault_key_version: Option<i32>,
    pub quarantine_key_version: Option<i32>,
    pub min_quarantine_key_version: Option<i32>,
    pub user_key_version: Option<i32>,
    /// The pseudonymisation domains and their key versions, as `etl.domain_key_versions()`
    /// states them (`name:active` or `name:active>pending`, joined by commas).
    pub domains: String,
}

pub async fn key_state(pool: &PgPool) -> Result<KeyState, sqlx::Error> {
    sqlx::query_as(
        "SELECT epoch, mask_key_version, vault_key_version, min_vault_key_version, \
                quarantine_key_version, min_quarantine_key_version, user_key_version, \
                etl.domain_key_versions() AS domains \
         FROM etl.key_state()",
    )
    .fetch_one(pool)
    .await
}

/// Raises the lowest vault (or quarantine) key version ingest may seal with to `version` (never
/// lowers it).
pub async fn raise_min_version(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
) -> Result<(), sqlx::Error> {
    let column = match purpose {
        KeyPurpose::Quarantine => "min_quarantine_key_version",
        _ => "min_vault_key_version",
    };
    sqlx::query(&format!(
        "UPDATE keyring.key_settings SET \
             {column} = greatest(coalesce({column}, 0), $1), \
             updated_at = now(), updated_by = session_user \
         WHERE singleton AND coalesce({column}, 0) < $1"
    ))
    .bind(version)
    .execute(pool)
    .await
    .map(|_| ())
}

/// How many stored things use one key version.
#[derive(Debug, Clone, Default, sqlx::FromRow)]
pub struct Usage {
    pub purpose: String,
    pub version: i32,
    /// Vault entries sealed under it (vault) or masked under it (mask).
    pub entries: i64,
    /// Quarantined bodies sealed under it (vault, quarantine) or whose user hash is under it
    /// (user).
    pub quarantine_rows: i64,
    /// `user_logins` rows masked under it (mask).
    pub logins: i64,
    /// Suppression-list hashes under it (user).
    pub forgotten_users: i64,
}

/// Per stored key version, how many vault entries, quarantine rows, `user_logins` rows and
/// suppression-list rows use it. Counts whole tables: a few seconds on millions of rows.
pub async fn usage(pool: &PgPool) -> Result<Vec<Usage>, sqlx::Error> {
    sqlx::query_as(
        "WITH vault_entries AS (SELECT vault_key_version AS v, count(*) AS n FROM vault.entries GROUP BY 1), \
         mask_entries AS (SELECT mask_key_version AS v, count(*) AS n FROM vault.entries GROUP BY 1), \
         vault_bodies AS (SELECT vault_key_version AS v, count(*) AS n FROM etl.quarantine \
                          WHERE vault_key_version IS NOT NULL GROUP BY 1), \
         quarantine_bodies AS (SELECT quarantine_key_version AS v, count(*) AS n FROM etl.quarantine \
                               WHERE quarantine_key_version IS NOT NULL GROUP BY 1), \
         hashed_bodies AS (SELECT user_hash_key_version AS v, count(*) AS n FROM etl.quarantine \
                           WHERE user_hash IS NOT NULL GROUP BY 1), \
         logins AS (SELECT mask_key_version AS v, count(*) AS n FROM public.user_logins GROUP BY 1), \
         forgotten AS (SELECT user_key_version AS v, count(*) AS n FROM etl.forgotten_users GROUP BY 1) \
         SELECT k.purpose, k.version, \
                coalesce(CASE k.purpose WHEN 'vault' THEN ve.n WHEN 'mask' THEN me.n END, 0)::bigint AS entries, \
                coalesce(CASE k.purpose WHEN 'vault' THEN vb.n WHEN 'quarantine' THEN qb.n \
                                        WHEN 'user' THEN hb.n END, 0)::bigint AS quarantine_rows, \
                coalesce(CASE k.purpose WHEN 'mask' THEN l.n END, 0)::bigint AS logins, \
                coalesce(CASE k.purpose WHEN 'user' THEN f.n END, 0)::bigint AS forgotten_users \
         FROM keyring.data_keys k \
         LEFT JOIN vault_entries ve ON ve.v = k.version \
         LEFT JOIN mask_entries me ON me.v = k.version \
         LEFT JOIN vault_bodies vb ON vb.v = k.version \
         LEFT JOIN quarantine_bodies qb ON qb.v = k.version \
         LEFT JOIN hashed_bodies hb ON hb.v = k.version \
         LEFT JOIN logins l ON l.v = k.version \
         LEFT JOIN forgotten f ON f.v = k.version \
         ORDER BY k.purpose, k.version",
    )
    .fetch_all(pool)
    .await
}

/// The key settings as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Settings {
    pub active_mask_key_version: Option<i32>,
    pub min_vault_key_version: Option<i32>,
}

pub async fn settings(pool: &PgPool) -> Result<Settings, sqlx::Error> {
    sqlx::query_as(
        "SELECT keyring.active_mask_key_version() AS active_mask_key_version, \
                min_vault_key_version FROM keyring.key_settings WHERE singleton",
    )
    .fetch_one(pool)
    .await
}

/// Why a key version cannot be retired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retirement {
    Retired,
    NotFound,
    /// Ingest may still seal with it (the newest version, or not below the minimum), or mask
    /// with it (the active mask key version).
    InUse,
    /// A pending mask key version, which `etl keys remask` is to move the masks to.
    Pending,
    /// A re-mask has not finished: its mapping still links old masks to new ones.
    RemaskUnfinished {
        mappings: i64,
    },
    /// Stored things still use it: vault entries, quarantine rows and `user_logins` rows.
    Used {
        entries: i64,
        quarantine_rows: i64,
        logins: i64,
    },
}

/// Deletes the wrapped key of a vault or quarantine key version that nothing uses, in one
/// transaction that holds vault.entries and etl.quarantine against writes while it counts (a
/// second or so on millions of rows), so no entry sealed under the version can appear between
/// the count and the deletion. Mask key versions: see [`retire_mask`].
pub async fn retire(
    pool: &PgPool,
    purpose: KeyPurpose,
    version: i32,
) -> Result<Retirement, sqlx::Error> {
    if purpose == KeyPurpose::Mask {
        return retire_mask(pool, version).await;
    }
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE vault.entries, etl.quarantine IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let (exists, newest, minimum): (bool, Option<i32>, Option<i32>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM keyring.data_keys WHERE purpose = $1 AND version = $2), \
                (SELECT max(version) FROM keyring.data_keys WHERE purpose = $1), \
                (SELECT CASE $1 WHEN 'quarantine' THEN min_quarantine_key_version \
                                ELSE min_vault_key_version END \
                 FROM keyring.key_settings WHERE singleton)",
    )
    .bind(purpose.as_str())
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Ok(Retirement::NotFound);
    }
    // Without a minimum, ingest may seal with (or to) any version.
    let sealing = Some(version) == newest || minimum.is_none_or(|minimum| version >= minimum);
    if sealing {
        return Ok(Retirement::InUse);
    }
    let (entries, quarantine_rows): (i64, i64) = match purpose {
        KeyPurpose::Vault => {
            sqlx::query_as(
                "SELECT (SELECT count(*) FROM vault.entries WHERE vault_key_version = $1), \
                        (SELECT count(*) FROM etl.quarantine WHERE vault_key_version = $1)",
            )
            .bind(version)
            .fetch_one(&mut *tx)
            .await?
        }
        _ => {
            sqlx::query_as(
                "SELECT 0::bigint, \
                        (SELECT count(*) FROM etl.quarantine WHERE quarantine_key_version = $1)",
            )
            .bind(version)
            .fetch_one(&mut *tx)
            .await?
        }
    };
    if entries + quarantine_rows > 0 {
        return Ok(Retirement::Used {
            entries,
            quarantine_rows,
            logins: 0,
        });
    }
    delete_retired(&mut tx, purpose, version).await?;
    tx.commit().await?;
    Ok(Retirement::Retired)
}

/// Deletes the wrapped key of a mask key version below the active one that no mask uses: after
/// `etl keys remask` moved every mask off it. In one transaction that holds vault.entries and
/// user_logins against writes while it counts (as `retire` does), so that a batch prepared under
/// the old version before the switch cannot commit between the count and the deletion; the
/// share lock on the settings row keeps a switch from changing which version is active.
async fn retire_mask(pool: &PgPool, version: i32) -> Result<Retirement, sqlx::Error> {
    let mut tx = pool.begin().await?;
    sqlx::query("LOCK TABLE vault.entries, public.user_logins IN SHARE MODE")
        .execute(&mut *tx)
        .await?;
    let (exists, active): (bool, Option<i32>) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM keyring.data_keys WHERE purpose = 'mask' AND version = $1), \
                (SELECT keyring.active_mask_key_version() FROM keyring.key_settings \
                 WHERE singleton FOR SHARE)",
    )
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if !exists {
        return Ok(Retirement::NotFound);
    }
    match active {
        Some(active) if version > active => return Ok(Retirement::Pending),
        Some(active) if version < active => {}
        _ => return Ok(Retirement::InUse),
    }
    let (entries, logins, mappings): (i64, i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM vault.entries WHERE mask_key_version = $1), \
                (SELECT count(*) FROM public.user_logins WHERE mask_key_version = $1), \
                (SELECT count(*) FROM vault.remask_map)",
    )
    .bind(version)
    .fetch_one(&mut *tx)
    .await?;
    if mappings > 0 {
        return Ok(Retirement::RemaskUnfinished { mappings });
    }
    if entries + logins > 0 {
        return Ok(Retirement::Used {
            entries,
            quarantine_rows: 0,
            logins,
        });
    }
    delete_retired(&mut tx, KeyPurpose::Mask, version).await?;
    tx.commit().await?;
    Ok(Retirement::Retired)
}

/// The deletion of a retired key version and its audit row, in the caller's transaction.
async fn delete_retired(
    tx: &mut sqlx::PgConnection,
    purpose: KeyPurpose,
    version: i32,
) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM keyring.data_keys WHERE purpose = $1 AND version = $2")
        .bind(purpose.as_str())
        .bind(version)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO recovery.audit_log (kind, outcome, detail) VALUES ('key_retirement', 'retired', $1)",
    )
    .bind(format!("purpose={} version={version}", purpose.as_str()))
    .execute(&mut *tx)
    .await?;
    Ok(())
}
