//! Least privilege, proven from the catalog: every grant each role (and PUBLIC) holds on the
//! product's tables, columns, functions and schemas, compared with the list below. A grant added
//! by mistake, or one that went missing, fails here.

use std::collections::BTreeSet;

use sqlx::{Connection, PgConnection};

use crate::helpers::{event, TestApp};

const ROLES: [&str; 8] = [
    "etl_ingest",
    "etl_analyst",
    "etl_recoverer",
    "etl_auditor",
    "etl_privacy",
    "etl_opener",
    "etl_approver",
    "public",
];

/// `role privilege object`, with `table(column)` where a role holds a privilege on some columns
/// only. The owner (the migrating user) is not listed: it is the operator.
const EXPECTED: &[&str] = &[
    // schemas
    "etl_ingest USAGE schema domains",
    "etl_ingest USAGE schema etl",
    "etl_ingest USAGE schema keyring",
    "etl_ingest USAGE schema public",
    "etl_ingest USAGE schema recovery",
    "etl_ingest USAGE schema vault",
    "etl_analyst USAGE schema public",
    "etl_recoverer USAGE schema etl",
    "etl_recoverer USAGE schema public",
    "etl_recoverer USAGE schema recovery",
    "etl_auditor USAGE schema public",
    "etl_auditor USAGE schema recovery",
    "etl_privacy USAGE schema etl",
    "etl_privacy USAGE schema keyring",
    "etl_privacy USAGE schema public",
    "etl_opener USAGE schema public",
    "etl_opener USAGE schema recovery",
    "etl_approver USAGE schema public",
    "etl_approver USAGE schema recovery",
    "public USAGE schema public",
    // tables: ingest writes, and reads only its claims and the mask and vault keys
    "etl_ingest INSERT user_logins",
    "etl_ingest INSERT etl.processed_messages",
    "etl_ingest SELECT etl.processed_messages",
    "etl_ingest INSERT etl.file_batches",
    "etl_ingest SELECT etl.file_batches",
    "etl_ingest INSERT etl.quarantine",
    "etl_ingest INSERT vault.entries",
    "etl_ingest SELECT keyring.data_keys(created_at)",
    "etl_ingest SELECT keyring.data_keys(kms_key_id)",
    "etl_ingest SELECT keyring.data_keys(public_key)",
    "etl_ingest SELECT keyring.data_keys(public_key_attestation)",
    "etl_ingest SELECT keyring.data_keys(purpose)",
    "etl_ingest SELECT keyring.data_keys(version)",
    "etl_ingest SELECT keyring.data_keys(wrapped_key)",
    "etl_ingest SELECT etl.forgotten_users",
    // pseudonymisation domains: which exist, and their wrapped mask keys (each domain's table
    // gets INSERT when `etl domains add` makes it)
    "etl_ingest SELECT etl.domains",
    "etl_ingest SELECT keyring.domain_keys",
    "etl_analyst SELECT user_logins",
    "etl_recoverer SELECT etl.quarantine(detail)",
    "etl_recoverer SELECT etl.quarantine(message_id)",
    "etl_recoverer SELECT etl.quarantine(reason)",
    "etl_recoverer SELECT etl.quarantine(receive_count)",
    "etl_recoverer SELECT etl.quarantine(received_at)",
    "etl_recoverer SELECT etl.quarantine(sent_at)",
    "etl_auditor SELECT recovery.audit_log",
    // recoverers collect their own sealed replies (row level security)
    "etl_recoverer SELECT recovery.replies",
    "etl_recoverer DELETE recovery.replies",
    // erasure: the user key's rows (row level security), to hash user ids with; not their checks
    "etl_privacy SELECT keyring.data_keys(created_at)",
    "etl_privacy SELECT keyring.data_keys(kms_key_id)",
    "etl_privacy SELECT keyring.data_keys(public_key)",
    "etl_privacy SELECT keyring.data_keys(public_key_attestation)",
    "etl_privacy SELECT keyring.data_keys(purpose)",
    "etl_privacy SELECT keyring.data_keys(version)",
    "etl_privacy SELECT keyring.data_keys(wrapped_key)",
    // functions
    "etl_ingest EXECUTE keyring.quarantine_public_key()",
    "etl_ingest EXECUTE recovery.audit_head()",
    "etl_ingest EXECUTE etl.hold_vault_epoch()",
    "etl_ingest EXECUTE etl.vault_epoch()",
    "etl_ingest EXECUTE etl.key_state()",
    "etl_ingest EXECUTE etl.check_quarantine_version(integer)",
    "etl_ingest EXECUTE etl.check_seal_versions(integer, integer)",
    "etl_ingest EXECUTE keyring.active_mask_key_version()",
    "etl_ingest EXECUTE etl.missing_user_key_versions()",
    "etl_ingest EXECUTE etl.keep_vault_entries(bytea[])",
    "etl_ingest EXECUTE etl.domain_key_versions()",
    "etl_privacy EXECUTE etl.missing_user_key_versions()",
    "etl_privacy EXECUTE etl.forget(text[], bytea[], integer, bytea, text, text, bytea[], integer[])",
    "etl_recoverer EXECUTE recovery.subject_access(text, text, text)",
    "etl_recoverer EXECUTE recovery.subject_rows(bigint, text)",
    "etl_recoverer EXECUTE recovery.audit_head()",
    "etl_recoverer EXECUTE recovery.request(text, text[], text, text, bytea, boolean)",
    "etl_recoverer EXECUTE recovery.request_quarantine(text[], text, text, bytea, boolean)",
    "etl_recoverer EXECUTE recovery.request_state(bigint)",
    "etl_recoverer EXECUTE recovery.cancel(bigint)",
    // the recovery service: the only role that reads ciphertexts and wrapped keys
    "etl_opener EXECUTE recovery.audit_head()",
    "etl_opener EXECUTE recovery.claim_request()",
    "etl_opener EXECUTE recovery.record_opening(bigint)",
    "etl_opener EXECUTE recovery.opening_material(bigint)",
    "etl_opener EXECUTE recovery.store_replies(bigint, text[], text[], bytea[])",
    "etl_opener EXECUTE recovery.expire_replies(interval)",
    "etl_opener EXECUTE recovery.expire_pending()",
    "etl_opener EXECUTE recovery.unreviewed_count()",
    "etl_opener EXECUTE recovery.close_failed(bigint)",
    // approvers decide and review, and see no value
    "etl_approver EXECUTE recovery.pending()",
    "etl_approver EXECUTE recovery.approve(bigint, text)",
    "etl_approver EXECUTE recovery.deny(bigint, text)",
    "etl_approver EXECUTE recovery.unreviewed()",
    "etl_approver EXECUTE recovery.review(bigint, text)",
    "etl_auditor EXECUTE recovery.audit_head()",
];

/// Every privilege the catalog grants the roles on the product's objects.
const ACTUAL: &str = r#"
WITH roles(role) AS (SELECT unnest($1::text[])),
schemas(name) AS (VALUES ('public'), ('etl'), ('vault'), ('keyring'), ('recovery'), ('domains')),
tables AS (
    SELECT c.oid, CASE WHEN n.nspname = 'public' THEN c.relname
                       ELSE n.nspname || '.' || c.relname END AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname IN (SELECT name FROM schemas) AND c.relkind IN ('r', 'v', 'm', 'p', 'S')
      AND NOT (n.nspname = 'public' AND c.relname NOT IN ('user_logins', '_sqlx_migrations'))
),
table_privileges(privilege) AS (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('DELETE'),
                                      ('TRUNCATE'), ('REFERENCES'), ('TRIGGER')),
column_privileges(privilege) AS (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('REFERENCES')),
granted_tables AS (
    SELECT r.role, p.privilege, t.oid, t.name
    FROM roles r, tables t, table_privileges p
    WHERE has_table_privilege(r.role, t.oid, p.privilege)
)
SELECT role || ' ' || privilege || ' schema ' || s.name
FROM roles, schemas s, (VALUES ('USAGE'), ('CREATE')) AS p(privilege)
WHERE has_schema_privilege(role, s.name, privilege)
UNION ALL
SELECT role || ' ' || privilege || ' ' || name FROM granted_tables
UNION ALL
SELECT r.role || ' ' || p.privilege || ' ' || t.name || '(' || a.attname || ')'
FROM roles r, tables t, column_privileges p, pg_attribute a
WHERE a.attrelid = t.oid AND a.attnum > 0 AND NOT a.attisdropped
  AND has_column_privilege(r.role, t.oid, a.attnum, p.privilege)
  AND NOT EXISTS (SELECT 1 FROM granted_tables g
                  WHERE g.role = r.role AND g.oid = t.oid AND g.privilege = p.privilege)
UNION ALL
SELECT r.role || ' EXECUTE ' || n.nspname || '.' || f.proname
       || '(' || oidvectortypes(f.proargtypes) || ')'
FROM roles r, pg_proc f JOIN pg_namespace n ON n.oid = f.pronamespace
WHERE n.nspname IN ('etl', 'vault', 'keyring', 'recovery')
  AND has_function_privilege(r.role, f.oid, 'EXECUTE')
"#;

/// Every grant of the catalog, as `role privilege object` lines.
async fn actual_grants(app: &TestApp) -> BTreeSet<String> {
    sqlx::query_scalar(ACTUAL)
        .bind(ROLES)
        .fetch_all(&app.pool)
        .await
        .unwrap()
        .into_iter()
        .collect()
}

#[tokio::test]
async fn every_role_holds_exactly_the_privileges_listed() {
    let app = TestApp::spawn().await;
    let actual = actual_grants(&app).await;
    let expected: BTreeSet<String> = EXPECTED.iter().map(|s| (*s).to_owned()).collect();
    let extra: Vec<_> = actual.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&actual).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "granted but not listed: {extra:#?}\nlisted but not granted: {missing:#?}"
    );
}

const ROLES_MD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/roles.md");

/// `docs/roles.md` is the catalog's answer to "what may each role do": the test renders it from
/// the grants of a freshly migrated database, and when the committed file differs it writes the
/// new one and fails, so a change of grants cannot land without the page that says it.
#[tokio::test]
async fn docs_roles_md_is_the_matrix_of_the_catalog() {
    let app = TestApp::spawn().await;
    let rendered = roles_markdown(&actual_grants(&app).await);
    let committed = std::fs::read_to_string(ROLES_MD).unwrap_or_default();
    if committed != rendered {
        std::fs::write(ROLES_MD, &rendered).unwrap();
        panic!(
            "docs/roles.md did not match the catalog; it has been rewritten: review and commit it"
        );
    }
}

/// The grants as three tables (schemas, tables and columns, functions), one row per object and
/// one column per role.
fn roles_markdown(grants: &BTreeSet<String>) -> String {
    use std::collections::BTreeMap;
    use std::fmt::Write;
    // object -> role -> privileges; column privileges as `SELECT(a, b)`.
    let mut sections: [BTreeMap<String, BTreeMap<&str, Vec<String>>>; 3] = Default::default();
    let mut columns: BTreeMap<(String, &str, &str), Vec<String>> = BTreeMap::new();
    for grant in grants {
        let mut parts = grant.splitn(3, ' ');
        let (Some(role), Some(privilege), Some(object)) =
            (parts.next(), parts.next(), parts.next())
        else {
            panic!("not a grant line: {grant}");
        };
        let role = ROLES.iter().find(|r| **r == role).expect("a listed role");
        if let Some(schema) = object.strip_prefix("schema ") {
            sections[0]
                .entry(format!("`{schema}`"))
                .or_default()
                .entry(role)
                .or_default()
                .push(privilege.to_owned());
        } else if privilege == "EXECUTE" {
            sections[2]
                .entry(format!("`{object}`"))
                .or_default()
                .entry(role)
                .or_default()
                .push(privilege.to_owned());
        } else if let Some((table, column)) =
            object.strip_suffix(')').and_then(|o| o.split_once('('))
        {
            columns
                .entry((table.to_owned(), role, privilege))
                .or_default()
                .push(column.to_owned());
        } else {
            sections[1]
                .entry(format!("`{object}`"))
                .or_default()
                .entry(role)
                .or_default()
                .push(privilege.to_owned());
        }
    }
    for ((table, role, privilege), names) in columns {
        let cell = format!("{privilege} ({})", names.join(", "));
        sections[1]
            .entry(format!("`{table}`"))
            .or_default()
            .entry(role)
            .or_default()
            .push(cell);
    }
    let mut page = String::from(
        "# What each role may do\n\n\
         Every privilege the group roles (and PUBLIC) hold on the product's schemas, tables, \
         columns and functions after `etl migrate`, read from the PostgreSQL catalog. \
         `tests/api/privileges.rs` writes this page and fails when the committed one differs, so \
         it is always what the catalog says. The owner (the migrating user) holds everything and \
         is not listed; what is not listed here, no role may do. Row level security narrows two \
         grants further: `etl_ingest` sees only the mask, vault and user keys' rows of \
         `keyring.data_keys`, `etl_privacy` only the user key's; neither reads the key checks. SECURITY.md explains why each \
         role holds what it holds. An administrator who creates a login role in one of these \
         groups also bounds its idle transactions, which PostgreSQL does not inherit from the \
         group: `ALTER ROLE <login> SET idle_in_transaction_session_timeout = '1min'` (`etl \
         doctor` checks it). Each pseudonymisation domain that `etl domains add NAME` makes \
         adds a table `domains.NAME`, which its own role `etl_domain_NAME` may SELECT and \
         `etl_ingest` may INSERT, and nothing else ([privacy.md](privacy.md#pseudonymisation-domains)). \
         Back to [README](../README.md).\n",
    );
    let headers = ["Schemas", "Tables and columns", "Functions"];
    for (header, rows) in headers.iter().zip(&sections) {
        write!(page, "\n## {header}\n\n| |").unwrap();
        for role in ROLES {
            write!(page, " {role} |").unwrap();
        }
        page.push_str("\n|---|");
        page.push_str(&"---|".repeat(ROLES.len()));
        page.push('\n');
        for (object, by_role) in rows {
            write!(page, "| {object} |").unwrap();
            for role in ROLES {
                let cell = by_role.get(role).map(|p| p.join(", ")).unwrap_or_default();
                write!(page, " {cell} |").unwrap();
            }
            page.push('\n');
        }
    }
    page
}

#[tokio::test]
async fn ingest_reads_no_vault_quarantine_or_quarantine_key_row() {
    let app = TestApp::spawn().await;
    let (_, url) = app.login_user("etl_ingest").await;
    // Ingest as the ingest role, with a value that meets an existing vault entry on the second
    // run: `ON CONFLICT DO NOTHING` without SELECT.
    for _ in 0..2 {
        app.send(&[event("10.8.0.1", "800-00-0001"), "not json".into()])
            .await;
        let output = app.etl_as(&url, &["ingest", "--drain"]).await;
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 2);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.quarantine WHERE quarantine_key_version = 1")
            .await,
        2,
        "bodies are sealed to the quarantine key pair"
    );

    let mut ingest = PgConnection::connect(&url).await.unwrap();
    for sql in [
        "SELECT mask FROM vault.entries",
        "SELECT field FROM vault.entries",
        "SELECT message_id FROM etl.quarantine",
        "SELECT body_ciphertext FROM etl.quarantine",
        "SELECT * FROM recovery.audit_log",
        "SELECT * FROM recovery.opening_material(1)",
    ] {
        let result = sqlx::query(sql).fetch_all(&mut ingest).await;
        assert!(
            matches!(&result, Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("42501")),
            "ingest was not denied: {sql}"
        );
    }
    // Row level security: the wrapped quarantine key's row is invisible to ingest.
    let purposes: Vec<String> =
        sqlx::query_scalar("SELECT purpose FROM keyring.data_keys ORDER BY purpose")
            .fetch_all(&mut ingest)
            .await
            .unwrap();
    assert_eq!(purposes, ["mask", "user", "vault"]);
    let public_keys: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keyring.quarantine_public_key()")
            .fetch_one(&mut ingest)
            .await
            .unwrap();
    assert_eq!(public_keys, 1);
}

#[tokio::test]
async fn no_role_but_the_owner_may_create_in_schema_public() {
    let app = TestApp::spawn().await;
    let (_, url) = app.login_user("etl_analyst").await;
    let mut analyst = PgConnection::connect(&url).await.unwrap();
    let result = sqlx::query("CREATE TABLE public.planted (x int)")
        .execute(&mut analyst)
        .await;
    assert!(
        matches!(&result, Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("42501")),
        "{result:?}"
    );
}
