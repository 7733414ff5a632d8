//! The re-identification risk of `user_logins`, computed on the server in one statement that reads
//! the table once: k-anonymity over quasi-identifiers, the l-diversity of `masked_ip` within their
//! classes, and the masks that only one user's rows carry. Only counts leave the server. Also the
//! catalog reads of `etl privacy check`, and the statements of `etl privacy fill-networks`.

use serde::Serialize;
use sqlx::PgPool;

use super::copy::BinaryCopy;
use super::rekey::SealedEntry;
use crate::domain::Network;

/// A column of `user_logins` that, with others, can single a person out. Closed set: the names
/// go into SQL as identifiers, so none comes from input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum QuasiIdentifier {
    DeviceType,
    Locale,
    AppVersion,
    AppVersionText,
    CreateDate,
    /// The ip's network, where ingest writes it (`--ip-prefix`).
    IpNetwork,
}

impl QuasiIdentifier {
    /// The default set: what a row says about a login apart from who and where.
    pub const DEFAULT: [Self; 4] = [
        Self::DeviceType,
        Self::Locale,
        Self::AppVersion,
        Self::CreateDate,
    ];

    pub fn column(self) -> &'static str {
        match self {
            Self::DeviceType => "device_type",
            Self::Locale => "locale",
            Self::AppVersion => "app_version",
            Self::AppVersionText => "app_version_text",
            Self::CreateDate => "create_date",
            Self::IpNetwork => "ip_network",
        }
    }
}

/// The figures of a report. An equivalence class is the rows that agree on every
/// quasi-identifier; its size is the number of users among them (one person's many logins do not
/// hide each other). Masks of different key versions count apart, as they compare apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, sqlx::FromRow)]
pub struct RiskReport {
    pub rows: i64,
    pub users: i64,
    pub classes: i64,
    /// Users in the smallest class; `None` for an empty table.
    pub smallest_class: Option<i64>,
    pub classes_below_k: i64,
    pub rows_below_k: i64,
    pub users_below_k: i64,
    /// The fewest distinct masked ips in a class; `None` for an empty table.
    pub l_diversity: Option<i64>,
    /// Classes of two or more users whose rows all carry one masked ip: knowing someone is in
    /// the class tells their network mask.
    pub homogeneous_classes: i64,
    pub single_user_masked_ip: i64,
    pub single_user_masked_device_id: i64,
}

/// The report's statement. The grouping sets read `user_logins` once and give, per set (told
/// apart by `GROUPING`): class × user (3), class × masked ip (5), masked ip × user (9), masked
/// device id × user (10) and user (11); everything after works on those groups, hashed (only the
/// class size of each class × user needs a sort).
fn report_sql(quasi_identifiers: &[QuasiIdentifier]) -> String {
    let columns: Vec<&str> = quasi_identifiers.iter().map(|q| q.column()).collect();
    let qi = columns.join(", ");
    let first = columns.first().copied().unwrap_or("device_type");
    format!(
        "WITH per AS (
            SELECT {qi}, user_id, masked_ip, masked_device_id, count(*) AS n,
                   GROUPING({first}, user_id, masked_ip, masked_device_id) AS set_id
            FROM user_logins
            GROUP BY GROUPING SETS (({qi}, user_id), ({qi}, masked_ip), (masked_ip, user_id),
                                    (masked_device_id, user_id), (user_id))
        ),
        classes AS (
            SELECT count(*) FILTER (WHERE set_id = 3) AS users,
                   coalesce(sum(n) FILTER (WHERE set_id = 3), 0) AS n,
                   count(*) FILTER (WHERE set_id = 5) AS ips
            FROM per WHERE set_id IN (3, 5)
            GROUP BY {qi}
        ),
        members AS (
            SELECT user_id, count(*) OVER (PARTITION BY {qi}) AS size
            FROM per WHERE set_id = 3
        ),
        masks AS (
            SELECT set_id, count(*) AS users
            FROM per WHERE set_id IN (9, 10)
            GROUP BY set_id, masked_ip, masked_device_id
        )
        SELECT (SELECT coalesce(sum(n), 0) FROM classes)::int8 AS rows,
               (SELECT count(*) FROM per WHERE set_id = 11) AS users, c.classes, c.smallest_class, c.classes_below_k, c.rows_below_k,
               m.users_below_k, c.l_diversity, c.homogeneous_classes,
               s.single_user_masked_ip, s.single_user_masked_device_id
        FROM (SELECT count(*) AS classes,
                     min(users) AS smallest_class,
                     count(*) FILTER (WHERE users < $1) AS classes_below_k,
                     coalesce(sum(n) FILTER (WHERE users < $1), 0)::int8 AS rows_below_k,
                     min(ips) AS l_diversity,
                     count(*) FILTER (WHERE ips = 1 AND users > 1) AS homogeneous_classes
              FROM classes) AS c,
             (SELECT count(DISTINCT user_id) FILTER (WHERE size < $1) AS users_below_k
              FROM members) AS m,
             (SELECT count(*) FILTER (WHERE set_id = 9 AND users = 1) AS single_user_masked_ip,
                     count(*) FILTER (WHERE set_id = 10 AND users = 1)
                         AS single_user_masked_device_id
              FROM masks) AS s"
    )
}

/// The report over `quasi_identifiers` (at least one) with classes of fewer than `k` users
/// counted as below k. Needs SELECT on `user_logins` only (the owner, `etl_analyst`).
pub async fn risk_report(
    pool: &PgPool,
    quasi_identifiers: &[QuasiIdentifier],
    k: i64,
) -> Result<RiskReport, sqlx::Error> {
    let mut tx = pool.begin().await?;
    // The groups of a large table fit in memory rather than spill; for this statement only.
    sqlx::query("SET LOCAL work_mem = '256MB'")
        .execute(&mut *tx)
        .await?;
    // Before PostgreSQL 13 a hash aggregate does not spill: past its estimate it grows without
    // bound. There, the groups are sorted instead.
    let version: i32 = sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
        .fetch_one(&mut *tx)
        .await?;
    if version < 130_000 {
        sqlx::query("SET LOCAL enable_hashagg = off")
            .execute(&mut *tx)
            .await?;
    }
    let report = sqlx::query_as::<_, RiskReport>(&report_sql(quasi_identifiers))
        .bind(k)
        .fetch_one(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(report)
}

/// A role that may read `user_logins` (apart from its owner, the owner's members and superusers,
/// who hold everything), and the tables of the additional information it may read: the vault,
/// the keyring and quarantine.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Reader {
    pub role: String,
    pub login: bool,
    pub reaches: Vec<String>,
}

/// Who reads a table of pseudonymised rows (`user_logins`, `domains.<name>`), from the catalog:
/// grants, inherited ones (`pg_read_all_data` among them) and column grants alike.
pub async fn readers(pool: &PgPool, table: &str) -> Result<Vec<Reader>, sqlx::Error> {
    sqlx::query_as(
        r"SELECT r.rolname::text AS role, r.rolcanlogin AS login,
                 array(SELECT format('%I.%I', n.nspname, c.relname)
                       FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                       WHERE c.relkind IN ('r', 'p', 'v', 'm')
                         AND (n.nspname IN ('vault', 'keyring')
                              OR (n.nspname = 'etl' AND c.relname = 'quarantine'))
                         AND has_any_column_privilege(r.oid, c.oid, 'SELECT')
                       ORDER BY 1) AS reaches
          FROM pg_roles r
          WHERE r.rolname NOT LIKE 'pg\_%' AND NOT r.rolsuper
            AND NOT pg_has_role(r.oid, (SELECT relowner FROM pg_class
                                        WHERE oid = $1::regclass), 'USAGE')
            AND has_any_column_privilege(r.oid, $1::regclass, 'SELECT')
          ORDER BY r.rolname",
    )
    .bind(table)
    .fetch_all(pool)
    .await
}

/// Whether PUBLIC, every role present and future, holds SELECT on a table or any of its columns.
pub async fn public_reads(pool: &PgPool, table: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_class c, aclexplode(c.relacl) a \
                        WHERE c.oid = $1::regclass AND a.grantee = 0 \
                          AND a.privilege_type = 'SELECT') \
             OR EXISTS (SELECT 1 FROM pg_attribute t, aclexplode(t.attacl) a \
                        WHERE t.attrelid = $1::regclass AND a.grantee = 0 \
                          AND a.privilege_type = 'SELECT')",
    )
    .bind(table)
    .fetch_one(pool)
    .await
}

/// The audit log's triggers that are enabled: the one that chains each appended row and the two
/// that refuse changing or emptying it.
pub async fn audit_guards_enabled(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_trigger \
         WHERE tgrelid = 'recovery.audit_log'::regclass AND tgenabled <> 'D' \
           AND tgname IN ('audit_append', 'audit_no_update_or_delete', 'audit_no_truncate')",
    )
    .fetch_one(pool)
    .await
}

/// Members of a group role that can log in, directly or through other groups.
pub async fn logins_in(pool: &PgPool, group: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT r.rolname::text FROM pg_roles r \
         WHERE r.rolcanlogin AND NOT r.rolsuper AND r.rolname <> $1::name \
           AND pg_has_role(r.oid, $1::name, 'MEMBER') \
         ORDER BY 1",
    )
    .bind(group)
    .fetch_all(pool)
    .await
}

/// The masks of `user_logins` rows without a network, each once, streamed: what
/// `etl privacy fill-networks` opens, and no more.
pub fn masks_without_networks(
    conn: &mut sqlx::PgConnection,
) -> impl futures_util::Stream<Item = Result<String, sqlx::Error>> + '_ {
    sqlx::query_scalar(
        "SELECT DISTINCT masked_ip FROM user_logins \
         WHERE ip_network IS NULL AND masked_ip IS NOT NULL",
    )
    .fetch(conn)
}

/// The vault entries of these ip masks (lowercase hex, as `user_logins` holds them), found by
/// the vault's key.
pub async fn ip_entries(
    conn: &mut sqlx::PgConnection,
    masks: &[String],
) -> Result<Vec<SealedEntry>, sqlx::Error> {
    sqlx::query_as(
        "SELECT mask, field, vault_key_version, ciphertext FROM vault.entries \
         WHERE field = 'ip' AND mask = ANY (SELECT decode(m, 'hex') FROM unnest($1::text[]) m)",
    )
    .bind(masks)
    .fetch_all(conn)
    .await
}

/// Whether a row holds a network of another length than `v4` / `v6` bits: a fill with another
/// prefix would mix lengths in one column.
pub async fn other_network_lengths(pool: &PgPool, v4: u8, v6: u8) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM user_logins WHERE ip_network IS NOT NULL \
         AND masklen(ip_network) <> CASE family(ip_network) WHEN 4 THEN $1 ELSE $2 END)",
    )
    .bind(i32::from(v4))
    .bind(i32::from(v6))
    .fetch_one(pool)
    .await
}

/// The session's map of masks to networks, empty: a temporary table, gone with the connection.
pub async fn create_network_map(conn: &mut sqlx::PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TEMPORARY TABLE ip_networks (mask varchar(256) PRIMARY KEY, network cidr NOT NULL)",
    )
    .execute(conn)
    .await
    .map(drop)
}

/// Adds masks (lowercase hex, as `user_logins` holds them) and their networks to the map.
pub async fn add_to_network_map(
    conn: &mut sqlx::PgConnection,
    networks: &[(String, Network)],
) -> Result<(), sqlx::Error> {
    if networks.is_empty() {
        return Ok(());
    }
    let mut copy = BinaryCopy::with_capacity(networks.len() * 100);
    for (mask, network) in networks {
        copy.row(2);
        copy.text(mask);
        copy.optional_cidr(Some(*network));
    }
    let mut sink = conn
        .copy_in_raw("COPY pg_temp.ip_networks (mask, network) FROM STDIN (FORMAT binary)")
        .await?;
    sink.send(copy.finish()).await?;
    sink.finish().await.map(drop)
}

/// The days that still have rows without a network, oldest first.
pub async fn days_without_networks(
    conn: &mut sqlx::PgConnection,
) -> Result<Vec<Option<chrono::NaiveDate>>, sqlx::Error> {
    sqlx::query("ANALYZE pg_temp.ip_networks")
        .execute(&mut *conn)
        .await?;
    sqlx::query_scalar(
        "SELECT DISTINCT create_date FROM user_logins WHERE ip_network IS NULL ORDER BY 1",
    )
    .fetch_all(conn)
    .await
}

/// Gives one day's rows without a network theirs, from the map; how many. A short transaction
/// of its own, beside a running ingest (which only inserts); the day is found by its index.
pub async fn fill_day(
    conn: &mut sqlx::PgConnection,
    day: Option<chrono::NaiveDate>,
) -> Result<u64, sqlx::Error> {
    let rows_of_the_day = match day {
        Some(_) => "u.create_date = $1",
        None => "u.create_date IS NULL AND $1::date IS NULL",
    };
    sqlx::query(&format!(
        "UPDATE user_logins u SET ip_network = n.network FROM pg_temp.ip_networks n \
         WHERE {rows_of_the_day} AND u.ip_network IS NULL AND u.masked_ip = n.mask"
    ))
    .bind(day)
    .execute(conn)
    .await
    .map(|done| done.rows_affected())
}
