//! The statements of `etl keys reseal` and `etl keys remask` (migration `key_lifecycle`). Both
//! walk the vault by primary key from a cursor, so a run that was stopped starts again where the
//! work is left: rows already moved no longer match.

use sqlx::{PgConnection, PgPool};

/// A vault entry as stored.
#[derive(Clone, sqlx::FromRow)]
pub struct SealedEntry {
    pub mask: Vec<u8>,
    pub field: String,
    pub vault_key_version: i32,
    pub ciphertext: Vec<u8>,
}

/// Where a walk of the vault goes on from: the last `(mask, field)` seen. The empty key sorts
/// before every entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VaultCursor {
    pub mask: Vec<u8>,
    pub field: String,
}

impl VaultCursor {
    /// The cursor after the last entry of a chunk.
    pub fn after(entries: &[SealedEntry]) -> Option<Self> {
        entries.last().map(|e| Self {
            mask: e.mask.clone(),
            field: e.field.clone(),
        })
    }
}

/// Every vault entry, streamed.
pub fn all_entries(
    conn: &mut PgConnection,
) -> impl futures_util::Stream<Item = Result<SealedEntry, sqlx::Error>> + '_ {
    sqlx::query_as("SELECT mask, field, vault_key_version, ciphertext FROM vault.entries")
        .fetch(conn)
}

/// Vault entries and quarantined bodies not sealed under `target`.
pub async fn count_to_reseal(pool: &PgPool, target: i32) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(
        "SELECT (SELECT count(*) FROM vault.entries WHERE vault_key_version <> $1), \
                (SELECT count(*) FROM etl.quarantine \
                 WHERE vault_key_version IS NOT NULL AND vault_key_version <> $1)",
    )
    .bind(target)
    .fetch_one(pool)
    .await
}

/// Up to `limit` entries after `after`, in key order, not sealed under `target`.
pub async fn entries_to_reseal(
    pool: &PgPool,
    target: i32,
    after: &VaultCursor,
    limit: i64,
) -> Result<Vec<SealedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT mask, field, vault_key_version, ciphertext FROM vault.entries \
         WHERE (mask, field) > ($2, $3) AND vault_key_version <> $1 \
         ORDER BY mask, field LIMIT $4",
    )
    .bind(target)
    .bind(&after.mask)
    .bind(&after.field)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// Replaces ciphertext and key version together, in one statement: a recovery sees either the
/// old pair or the new one. An entry whose version changed meanwhile is left alone.
pub async fn store_resealed(
    pool: &PgPool,
    target: i32,
    entries: &[SealedEntry],
    ciphertexts: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    let masks: Vec<&[u8]> = entries.iter().map(|e| e.mask.as_slice()).collect();
    let fields: Vec<&str> = entries.iter().map(|e| e.field.as_str()).collect();
    let versions: Vec<i32> = entries.iter().map(|e| e.vault_key_version).collect();
    let done = sqlx::query(
        "UPDATE vault.entries e SET ciphertext = u.ciphertext, vault_key_version = $1 \
         FROM UNNEST($2::bytea[], $3::text[], $4::int4[], $5::bytea[]) \
              AS u(mask, field, old_version, ciphertext) \
         WHERE e.mask = u.mask AND e.field = u.field AND e.vault_key_version = u.old_version",
    )
    .bind(target)
    .bind(masks)
    .bind(fields)
    .bind(versions)
    .bind(ciphertexts)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// A quarantined body sealed under a vault key version.
#[derive(Clone, sqlx::FromRow)]
pub struct VaultSealedBody {
    pub message_id: String,
    pub vault_key_version: i32,
    pub body_ciphertext: Vec<u8>,
}

/// Up to `limit` quarantined bodies after `after` sealed under a vault key version not `target`.
pub async fn bodies_to_reseal(
    pool: &PgPool,
    target: i32,
    after: &str,
    limit: i64,
) -> Result<Vec<VaultSealedBody>, sqlx::Error> {
    sqlx::query_as(
        "SELECT message_id, vault_key_version, body_ciphertext FROM etl.quarantine \
         WHERE message_id > $2 AND vault_key_version IS NOT NULL AND vault_key_version <> $1 \
         ORDER BY message_id LIMIT $3",
    )
    .bind(target)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

pub async fn store_resealed_bodies(
    pool: &PgPool,
    target: i32,
    bodies: &[VaultSealedBody],
    ciphertexts: &[Vec<u8>],
) -> Result<u64, sqlx::Error> {
    let ids: Vec<&str> = bodies.iter().map(|b| b.message_id.as_str()).collect();
    let versions: Vec<i32> = bodies.iter().map(|b| b.vault_key_version).collect();
    let done = sqlx::query(
        "UPDATE etl.quarantine q SET body_ciphertext = u.body, vault_key_version = $1 \
         FROM UNNEST($2::text[], $3::int4[], $4::bytea[]) AS u(message_id, old_version, body) \
         WHERE q.message_id = u.message_id AND q.vault_key_version = u.old_version",
    )
    .bind(target)
    .bind(ids)
    .bind(versions)
    .bind(ciphertexts)
    .execute(pool)
    .await?;
    Ok(done.rows_affected())
}

/// Vault entries of mask key version `from` that have no mapping to `to` yet.
pub async fn count_to_remask(pool: &PgPool, from: i32, to: i32) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM vault.entries e WHERE e.mask_key_version = $1 \
         AND NOT EXISTS (SELECT 1 FROM vault.remask_map m \
                         WHERE m.old_mask = e.mask AND m.field = e.field AND m.to_version = $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_one(pool)
    .await
}

/// Up to `limit` entries after `after`, in key order, of mask key version `from` and not mapped
/// to `to` yet.
pub async fn entries_to_remask(
    conn: &mut PgConnection,
    from: i32,
    to: i32,
    after: &VaultCursor,
    limit: i64,
) -> Result<Vec<SealedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.mask, e.field, e.vault_key_version, e.ciphertext FROM vault.entries e \
         WHERE (e.mask, e.field) > ($3, $4) AND e.mask_key_version = $1 \
           AND NOT EXISTS (SELECT 1 FROM vault.remask_map m \
                           WHERE m.old_mask = e.mask AND m.field = e.field AND m.to_version = $2) \
         ORDER BY e.mask, e.field LIMIT $5",
    )
    .bind(from)
    .bind(to)
    .bind(&after.mask)
    .bind(&after.field)
    .bind(limit)
    .fetch_all(conn)
    .await
}

/// In the switch: every entry of mask key version `from` not mapped to `to` yet (those added
/// behind phase 1's cursor), in one scan.
pub async fn unmapped_entries(
    conn: &mut PgConnection,
    from: i32,
    to: i32,
) -> Result<Vec<SealedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.mask, e.field, e.vault_key_version, e.ciphertext FROM vault.entries e \
         WHERE e.mask_key_version = $1 \
           AND NOT EXISTS (SELECT 1 FROM vault.remask_map m \
                           WHERE m.old_mask = e.mask AND m.field = e.field AND m.to_version = $2)",
    )
    .bind(from)
    .bind(to)
    .fetch_all(conn)
    .await
}

/// Records each entry's mask under `to` and inserts its entry under that mask, sealed under
/// `vault_key_version`, in one statement.
pub async fn store_remasked(
    conn: &mut PgConnection,
    to: i32,
    vault_key_version: i32,
    entries: &[SealedEntry],
    new_masks: &[[u8; 32]],
    ciphertexts: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    let old: Vec<&[u8]> = entries.iter().map(|e| e.mask.as_slice()).collect();
    let fields: Vec<&str> = entries.iter().map(|e| e.field.as_str()).collect();
    let new: Vec<&[u8]> = new_masks.iter().map(|m| m.as_slice()).collect();
    sqlx::query(
        "WITH mapped AS ( \
             INSERT INTO vault.remask_map (old_mask, field, new_mask, to_version) \
             SELECT u.old_mask, u.field, u.new_mask, $1 \
             FROM UNNEST($3::bytea[], $4::text[], $5::bytea[]) AS u(old_mask, field, new_mask) \
             ON CONFLICT (old_mask, field) DO UPDATE \
                 SET new_mask = EXCLUDED.new_mask, to_version = EXCLUDED.to_version \
         ) \
         INSERT INTO vault.entries (field, mask, mask_key_version, vault_key_version, ciphertext) \
         SELECT u.field, u.new_mask, $1, $2, u.ciphertext \
         FROM UNNEST($4::text[], $5::bytea[], $6::bytea[]) AS u(field, new_mask, ciphertext) \
         ORDER BY u.new_mask, u.field \
         ON CONFLICT DO NOTHING",
    )
    .bind(to)
    .bind(vault_key_version)
    .bind(old)
    .bind(fields)
    .bind(new)
    .bind(ciphertexts)
    .execute(conn)
    .await
    .map(|_| ())
}

/// In the switch: the new entries of values whose old entry was deleted since they were mapped
/// (an erasure or a retention sweep), and their mappings. Returns how many entries went.
pub async fn drop_orphaned_remasks(conn: &mut PgConnection, to: i32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "WITH orphaned AS ( \
             DELETE FROM vault.remask_map m \
             WHERE m.to_version = $1 AND NOT EXISTS ( \
                 SELECT 1 FROM vault.entries o WHERE o.mask = m.old_mask AND o.field = m.field) \
             RETURNING m.new_mask, m.field \
         ) \
         DELETE FROM vault.entries n USING orphaned o \
         WHERE n.mask = o.new_mask AND n.field = o.field AND n.mask_key_version = $1",
    )
    .bind(to)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// In the switch: every `user_logins` row of mask key version `from` takes the masks mapped to
/// `to`, in one statement. Returns how many rows moved.
pub async fn remask_logins(
    conn: &mut PgConnection,
    from: i32,
    to: i32,
) -> Result<u64, sqlx::Error> {
    let done = sqlx::query(
        "UPDATE public.user_logins u \
         SET masked_ip = encode(mi.new_mask, 'hex'), \
             masked_device_id = encode(md.new_mask, 'hex'), \
             mask_key_version = $2 \
         FROM vault.remask_map mi, vault.remask_map md \
         WHERE u.mask_key_version = $1 \
           AND mi.field = 'ip' AND mi.old_mask = decode(u.masked_ip, 'hex') AND mi.to_version = $2 \
           AND md.field = 'device_id' AND md.old_mask = decode(u.masked_device_id, 'hex') \
           AND md.to_version = $2",
    )
    .bind(from)
    .bind(to)
    .execute(conn)
    .await?;
    Ok(done.rows_affected())
}

/// `user_logins` rows written by etl under another mask key version than `to`.
pub async fn logins_not_on(conn: &mut PgConnection, to: i32) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM public.user_logins \
         WHERE mask_key_version IS NOT NULL AND mask_key_version <> $1",
    )
    .bind(to)
    .fetch_one(conn)
    .await
}

/// In the switch: `to` becomes the active mask key version.
pub async fn activate_mask_version(conn: &mut PgConnection, to: i32) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE keyring.key_settings SET active_mask_key_version = $1, updated_at = now(), \
             updated_by = session_user WHERE singleton",
    )
    .bind(to)
    .execute(conn)
    .await
    .map(|_| ())
}

/// After the switch: up to `limit` mappings to `active` go, with the old entries they map from.
/// Returns how many mappings went.
pub async fn delete_remasked_chunk(
    pool: &PgPool,
    active: i32,
    limit: i64,
) -> Result<u64, sqlx::Error> {
    let done: i64 = sqlx::query_scalar(
        "WITH chunk AS ( \
             DELETE FROM vault.remask_map m \
             WHERE (m.old_mask, m.field) IN ( \
                 SELECT old_mask, field FROM vault.remask_map ORDER BY old_mask, field LIMIT $2) \
             RETURNING m.old_mask, m.field \
         ), gone AS ( \
             DELETE FROM vault.entries e USING chunk c \
             WHERE e.mask = c.old_mask AND e.field = c.field AND e.mask_key_version <> $1 \
         ) \
         SELECT count(*) FROM chunk",
    )
    .bind(active)
    .bind(limit)
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(done).unwrap_or(0))
}

/// After the switch and the mapped deletions: entries under any other mask key version (none
/// are expected; a process holding the old key is refused by `etl.check_seal_versions`).
pub async fn delete_other_mask_versions(pool: &PgPool, active: i32) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM vault.entries WHERE mask_key_version <> $1")
        .bind(active)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// Mappings left (a re-mask not finished).
pub async fn mappings_left(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM vault.remask_map")
        .fetch_one(pool)
        .await
}
