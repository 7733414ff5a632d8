//! Pseudonymisation domains (migration `pseudonymisation_domains`): the domains, their wrapped
//! mask keys, and their tables `domains.<name>`.

use chrono::{DateTime, NaiveDate, Utc};
use futures_util::Stream;
use sqlx::{PgConnection, PgPool};

use super::rekey::SealedEntry;

/// A domain's table, quoted: its name is checked by `etl.domains`' constraint (and by the
/// commands before), lowercase letters, digits and underscores only.
pub fn table(name: &str) -> String {
    format!("domains.\"{name}\"")
}

/// A domain as listed: its name, its reader role, its active key version, and the pending one
/// while a rotation waits for its re-mask.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct Domain {
    pub name: String,
    pub role: String,
    pub key_version: i32,
    pub pending_key_version: Option<i32>,
    /// The highest key version the domain ever had: the next rotation takes the one after.
    #[serde(skip)]
    pub last_key_version: i32,
    pub created_at: DateTime<Utc>,
    pub created_by: String,
}

/// A domain's newest mask key, still wrapped. `Debug` prints the blob's length only.
#[derive(Clone, sqlx::FromRow)]
pub struct DomainKey {
    pub domain: String,
    pub version: i32,
    pub kms_key_id: String,
    pub wrapped_key: Vec<u8>,
}

impl std::fmt::Debug for DomainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainKey")
            .field("domain", &self.domain)
            .field("version", &self.version)
            .field("kms_key_id", &self.kms_key_id)
            .field("wrapped_key_len", &self.wrapped_key.len())
            .finish()
    }
}

/// Creates a domain with its first key; returns its reader role. On record, and every running
/// ingest reloads its keys before its next commit.
pub async fn add(
    conn: impl sqlx::PgExecutor<'_>,
    name: &str,
    kms_key_id: &str,
    wrapped_key: &[u8],
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.add_domain($1, $2, $3)")
        .bind(name)
        .bind(kms_key_id)
        .bind(wrapped_key)
        .fetch_one(conn)
        .await
}

pub async fn list(pool: &PgPool) -> Result<Vec<Domain>, sqlx::Error> {
    sqlx::query_as(
        "SELECT d.name, 'etl_domain_' || d.name AS role, d.active_version AS key_version, \
                (SELECT max(k.version) FROM keyring.domain_keys k \
                 WHERE k.domain = d.name AND k.version > d.active_version) AS pending_key_version, \
                d.last_version AS last_key_version, d.created_at, d.created_by \
         FROM etl.domains d ORDER BY d.name COLLATE \"C\"",
    )
    .fetch_all(pool)
    .await
}

/// The keys ingest masks each domain's rows under: the active version, and the pending one if
/// any (the newest above the active), by name in byte order (the order of
/// `etl.domain_key_versions()`), then by version.
pub async fn write_keys(pool: &PgPool) -> Result<Vec<DomainKey>, sqlx::Error> {
    sqlx::query_as(
        "SELECT k.domain, k.version, k.kms_key_id, k.wrapped_key \
         FROM keyring.domain_keys k JOIN etl.domains d ON d.name = k.domain \
         WHERE k.version = d.active_version \
            OR k.version = (SELECT max(n.version) FROM keyring.domain_keys n \
                            WHERE n.domain = d.name AND n.version > d.active_version) \
         ORDER BY k.domain COLLATE \"C\", k.version",
    )
    .fetch_all(pool)
    .await
}

/// Every version of every domain's key, as stored: whether each is a KMS ciphertext.
pub async fn stored_keys(pool: &PgPool) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as("SELECT kms_key_id, octet_length(wrapped_key) FROM keyring.domain_keys")
        .fetch_all(pool)
        .await
}

/// Adds `version` (the next) of a domain's key, pending; on record, and every running ingest
/// writes the domain's rows under it too before its next commit.
pub async fn rotate(
    pool: &PgPool,
    name: &str,
    version: i32,
    kms_key_id: &str,
    wrapped_key: &[u8],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT etl.rotate_domain_key($1, $2, $3, $4)")
        .bind(name)
        .bind(version)
        .bind(kms_key_id)
        .bind(wrapped_key)
        .execute(pool)
        .await
        .map(drop)
}

/// Cancels a domain's pending key version: its masks leave the rows and its key is deleted; on
/// record, and ingest writes the active version only from its next commit. Returns the version.
pub async fn cancel_rotation(pool: &PgPool, name: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.cancel_domain_rotation($1)")
        .bind(name)
        .fetch_one(pool)
        .await
}

/// The session's map of a domain's masks under the active key to its masks under the pending
/// one, by field (`ip`, `device_id`, `user_id`), empty: a temporary table, gone with the
/// connection.
pub async fn create_remask_map(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMPORARY TABLE domain_remask (field text, old_mask varchar(256), \
         new_mask varchar(256) NOT NULL, PRIMARY KEY (field, old_mask))",
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Adds (field, old mask, new mask) triples to the map; a value seen twice (two entries of one
/// value while the main masks are re-masked) once.
pub async fn add_to_remask_map(
    conn: &mut PgConnection,
    fields: &[&str],
    old: &[String],
    new: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pg_temp.domain_remask (field, old_mask, new_mask) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(fields)
    .bind(old)
    .bind(new)
    .execute(conn)
    .await
    .map(drop)
}

/// Every distinct user id of `user_logins`, streamed: the values behind the domain's user masks.
pub fn user_ids(conn: &mut PgConnection) -> impl Stream<Item = Result<String, sqlx::Error>> + '_ {
    sqlx::query_scalar("SELECT DISTINCT user_id FROM user_logins WHERE user_id IS NOT NULL")
        .fetch(conn)
}

/// Whether rows of the domain have no masks under the pending key yet (the rows written before
/// the rotation, until the re-mask has mapped them).
pub async fn rows_to_remask(conn: &mut PgConnection, name: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT EXISTS (SELECT 1 FROM {} WHERE next_mask_key_version IS NULL)",
        table(name)
    ))
    .fetch_one(conn)
    .await
}

/// Statistics of the session's map, for the plans that join it.
pub async fn analyze_remask_map(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("ANALYZE pg_temp.domain_remask")
        .execute(conn)
        .await
        .map(drop)
}

/// The days (NULL among them, if a row has none) with rows of the domain that have no masks
/// under the pending key yet, oldest first.
pub async fn days_to_remask(
    conn: &mut PgConnection,
    name: &str,
) -> Result<Vec<Option<NaiveDate>>, sqlx::Error> {
    sqlx::query_scalar(&format!(
        "SELECT DISTINCT create_date FROM {} WHERE next_mask_key_version IS NULL ORDER BY 1",
        table(name)
    ))
    .fetch_all(conn)
    .await
}

/// Gives one day's rows of the domain under key version `from` their masks under `to`, from
/// the map, where they lack them; how many. A short transaction of its own beside a running
/// ingest (which only inserts); the day is found by its index.
pub async fn remask_day(
    conn: &mut PgConnection,
    name: &str,
    day: Option<NaiveDate>,
    from: i32,
    to: i32,
) -> Result<u64, sqlx::Error> {
    let rows_of_the_day = match day {
        Some(_) => "d.create_date = $1",
        None => "d.create_date IS NULL AND $1::date IS NULL",
    };
    sqlx::query(&format!(
        "UPDATE {} d SET next_masked_user_id = mu.new_mask, \
             next_masked_ip = mi.new_mask, next_masked_device_id = md.new_mask, \
             next_mask_key_version = $3 \
         FROM pg_temp.domain_remask mi, pg_temp.domain_remask md, pg_temp.domain_remask mu \
         WHERE {rows_of_the_day} AND d.next_mask_key_version IS NULL AND d.mask_key_version = $2 \
           AND mi.field = 'ip' AND mi.old_mask = d.masked_ip \
           AND md.field = 'device_id' AND md.old_mask = d.masked_device_id \
           AND mu.field = 'user_id' AND mu.old_mask = d.masked_user_id",
        table(name)
    ))
    .bind(day)
    .bind(from)
    .bind(to)
    .execute(conn)
    .await
    .map(|done| done.rows_affected())
}

/// The switch, one transaction holding the vault epoch: every row takes its masks under `to`,
/// which becomes active; the older keys go. Returns how many rows moved.
pub async fn switch(pool: &PgPool, name: &str, to: i32) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.switch_domain_key($1, $2)")
        .bind(name)
        .bind(to)
        .fetch_one(pool)
        .await
}

/// The session's maps for filling a new domain with the rows `user_logins` holds: each vault
/// value's `user_logins` mask → its domain mask, and each user id → its domain mask and erasure
/// hash. Temporary tables, gone with the connection.
pub async fn create_history_maps(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMPORARY TABLE history_values (field text, main_mask bytea, \
         domain_mask varchar(256) NOT NULL, PRIMARY KEY (field, main_mask))",
    )
    .execute(&mut *conn)
    .await?;
    sqlx::query(
        "CREATE TEMPORARY TABLE history_users (user_id varchar(128) PRIMARY KEY, \
         domain_mask varchar(256) NOT NULL, user_hash bytea NOT NULL)",
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Adds (field, `user_logins` mask as the vault keys it, domain mask) triples to the value map.
pub async fn add_history_values(
    conn: &mut PgConnection,
    fields: &[&str],
    main: &[&[u8]],
    domain: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pg_temp.history_values (field, main_mask, domain_mask) \
         SELECT * FROM unnest($1::text[], $2::bytea[], $3::text[]) ON CONFLICT DO NOTHING",
    )
    .bind(fields)
    .bind(main)
    .bind(domain)
    .execute(conn)
    .await
    .map(drop)
}

/// Adds user ids, their domain masks and erasure hashes to the user map.
pub async fn add_history_users(
    conn: &mut PgConnection,
    user_ids: &[String],
    domain: &[String],
    hashes: &[Vec<u8>],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO pg_temp.history_users (user_id, domain_mask, user_hash) \
         SELECT * FROM unnest($1::text[], $2::text[], $3::bytea[]) ON CONFLICT DO NOTHING",
    )
    .bind(user_ids)
    .bind(domain)
    .bind(hashes)
    .execute(conn)
    .await
    .map(drop)
}

/// Statistics of the session's maps, for the plan that joins them: taken before the creating
/// transaction, which then adds only the few values first seen meanwhile.
pub async fn analyze_history_maps(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    // One table per statement: PostgreSQL 10 takes no list.
    sqlx::query("ANALYZE pg_temp.history_values")
        .execute(&mut *conn)
        .await?;
    sqlx::query("ANALYZE pg_temp.history_users")
        .execute(conn)
        .await
        .map(drop)
}

/// Vault entries the value map lacks (added since it was built), in one scan.
pub async fn unmapped_history_entries(
    conn: &mut PgConnection,
) -> Result<Vec<SealedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT e.mask, e.field, e.vault_key_version, e.ciphertext FROM vault.entries e \
         WHERE NOT EXISTS (SELECT 1 FROM pg_temp.history_values m \
                           WHERE m.field = e.field AND m.main_mask = e.mask)",
    )
    .fetch_all(conn)
    .await
}

/// User ids of `user_logins` the user map lacks (seen since it was built), in one scan.
pub async fn unmapped_history_users(conn: &mut PgConnection) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT DISTINCT u.user_id FROM user_logins u WHERE u.user_id IS NOT NULL \
         AND NOT EXISTS (SELECT 1 FROM pg_temp.history_users m WHERE m.user_id = u.user_id)",
    )
    .fetch_all(conn)
    .await
}

/// The domain's row, key, table and role, without its indexes, the record or the epoch:
/// `--backfill` writes its rows first.
pub async fn create(
    conn: &mut PgConnection,
    name: &str,
    kms_key_id: &str,
    wrapped_key: &[u8],
) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT etl.create_domain($1, $2, $3)")
        .bind(name)
        .bind(kms_key_id)
        .bind(wrapped_key)
        .fetch_one(conn)
        .await
}

/// The domain's indexes (erasure's and retention's), and the record of its creation.
pub async fn index_and_record(
    conn: &mut PgConnection,
    name: &str,
    kms_key_id: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT etl.index_domain($1), etl.record_domain_creation($1, $2)")
        .bind(name)
        .bind(kms_key_id)
        .execute(conn)
        .await
        .map(drop)
}

/// Writes every `user_logins` row etl wrote into the new domain, masked through the maps, in
/// one statement; in the transaction that creates the domain, which holds the vault epoch.
/// Returns (rows etl wrote, rows written): they differ when a row's value is in no map.
pub async fn fill_history(
    conn: &mut PgConnection,
    name: &str,
    key_version: i32,
    user_key_version: i32,
) -> Result<(i64, i64), sqlx::Error> {
    sqlx::query_as(&format!(
        "WITH written AS ( \
             INSERT INTO {} (masked_user_id, device_type, masked_ip, masked_device_id, locale, \
                             app_version, create_date, mask_key_version, user_hash, \
                             user_hash_key_version) \
             SELECT mu.domain_mask, u.device_type, mi.domain_mask, md.domain_mask, u.locale, \
                    u.app_version, u.create_date, $1, mu.user_hash, $2 \
             FROM user_logins u \
             JOIN pg_temp.history_values mi \
                  ON mi.field = 'ip' AND mi.main_mask = decode(u.masked_ip, 'hex') \
             JOIN pg_temp.history_values md \
                  ON md.field = 'device_id' AND md.main_mask = decode(u.masked_device_id, 'hex') \
             JOIN pg_temp.history_users mu ON mu.user_id = u.user_id \
             WHERE u.mask_key_version IS NOT NULL \
             RETURNING 1 \
         ) \
         SELECT (SELECT count(*) FROM user_logins WHERE mask_key_version IS NOT NULL), \
                (SELECT count(*) FROM written)",
        table(name)
    ))
    .bind(key_version)
    .bind(user_key_version)
    .fetch_one(conn)
    .await
}
