//! Database roles, `etl recover` with its audit trail, and the key lifecycle.

use std::process::Output;

use sqlx::{Connection, PgConnection};

use crate::helpers::{assert_exit, create_kms_key, event, TestApp};
use etl::crypto::ReplyKeyPair;

/// Whether `sql` fails with "permission denied" (SQLSTATE 42501) for this connection.
async fn denied(connection: &mut PgConnection, sql: &str) -> bool {
    match sqlx::query(sql).fetch_all(&mut *connection).await {
        Err(sqlx::Error::Database(err)) => err.code().as_deref() == Some("42501"),
        _ => false,
    }
}

async fn first_masks(app: &TestApp) -> (String, String) {
    sqlx::query_as("SELECT masked_ip, masked_device_id FROM user_logins ORDER BY user_id LIMIT 1")
        .fetch_one(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn analysts_read_user_logins_and_nothing_else() {
    let app = TestApp::spawn().await;
    app.ingest(&[event("10.9.0.1", "900-00-0001")]).await;
    let (_, url) = app.login_user("etl_analyst").await;
    let mut analyst = PgConnection::connect(&url).await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM user_logins")
        .fetch_one(&mut analyst)
        .await
        .unwrap();
    assert_eq!(rows, 1);
    for sql in [
        "SELECT * FROM vault.entries",
        "SELECT * FROM keyring.data_keys",
        "SELECT * FROM etl.quarantine",
        "SELECT * FROM recovery.audit_log",
        "SELECT recovery.request('ip', ARRAY['x'], 'curious', NULL, '\\x00'::bytea, false)",
        "SELECT * FROM recovery.opening_material(1)",
    ] {
        assert!(
            denied(&mut analyst, sql).await,
            "analyst was not denied: {sql}"
        );
    }
}

#[tokio::test]
async fn the_ingest_role_ingests_end_to_end_but_cannot_read_the_vault() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    let (_, url) = app.login_user("etl_ingest").await;
    app.send(&[
        event("10.9.1.1", "901-00-0001"),
        event("10.9.1.2", "901-00-0002"),
        "oops".into(),
    ])
    .await;
    let output = app
        .etl_as(&url, &["ingest", "--drain", "--summary-json"])
        .await;
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let summary: etl::pipeline::Summary = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!((summary.written, summary.quarantined), (2, 1));
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 4);

    let mut ingest = PgConnection::connect(&url).await.unwrap();
    assert!(denied(&mut ingest, "SELECT ciphertext FROM vault.entries").await);
    assert!(denied(&mut ingest, "SELECT * FROM user_logins").await);
    assert!(denied(&mut ingest, "SELECT * FROM recovery.opening_material(1)").await);
}

/// One ingested login (ip 10.9.2.1, device_id 902-00-0001), its masks, and a member of
/// etl_recoverer: where each recovery test below starts.
struct Recoverable {
    app: TestApp,
    masked_ip: String,
    masked_device: String,
    /// The recoverer's database user, as the audit log names it.
    user: String,
    /// The app's database as the recoverer.
    url: String,
}

async fn recoverable() -> Recoverable {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[event("10.9.2.1", "902-00-0001")]).await;
    let (masked_ip, masked_device) = first_masks(&app).await;
    let (user, url) = app.login_user("etl_recoverer").await;
    Recoverable {
        app,
        masked_ip,
        masked_device,
        user,
        url,
    }
}

impl Recoverable {
    /// `etl recover <args>` as the recoverer.
    async fn recover(&self, args: &[&str]) -> Output {
        let mut all = vec!["recover"];
        all.extend_from_slice(args);
        self.app.etl_as(&self.url, &all).await
    }
}

/// A `recover` row of the audit log: db_user, field, subject (the mask), reason, ticket, outcome.
type AuditRow = (String, String, String, String, Option<String>, String);

fn audit_row(
    user: &str,
    field: &str,
    subject: &str,
    reason: &str,
    ticket: Option<&str>,
    outcome: &str,
) -> AuditRow {
    (
        user.to_owned(),
        field.to_owned(),
        subject.to_owned(),
        reason.to_owned(),
        ticket.map(str::to_owned),
        outcome.to_owned(),
    )
}

/// The audit log's `recover` rows, oldest first.
async fn recover_audit(app: &TestApp) -> Vec<AuditRow> {
    sqlx::query_as(
        "SELECT db_user, field, subject, reason, ticket, outcome FROM recovery.audit_log \
         WHERE kind = 'recover' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

/// A member of etl_recoverer gets the original ip, alone on a line of stdout, from its mask.
#[tokio::test]
async fn a_recoverer_gets_the_original_ip_from_its_mask() {
    let case = recoverable().await;
    let output = case
        .recover(&[
            "--masked-ip",
            &case.masked_ip,
            "--reason",
            "fraud case",
            "--ticket",
            "SEC-1",
        ])
        .await;
    assert_exit(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.9.2.1\n");
}

/// A masked_device_id given in upper case still finds its value, and `--format json` prints the
/// original device_id as the `value` of a JSON object.
#[tokio::test]
async fn an_upper_case_device_id_mask_recovers_the_device_id_as_json() {
    let case = recoverable().await;
    let output = case
        .recover(&[
            "--masked-device-id",
            &case.masked_device.to_uppercase(),
            "--reason",
            "fraud case",
            "--format",
            "json",
        ])
        .await;
    assert_exit(&output, 0);
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["value"], "902-00-0001");
}

/// A well-formed mask that no value has: exit 1, "not found" on stderr, nothing on stdout.
#[tokio::test]
async fn a_mask_that_is_not_in_the_vault_exits_1_and_prints_no_value() {
    let case = recoverable().await;
    let missing = "0".repeat(64);
    let output = case
        .recover(&["--masked-ip", &missing, "--reason", "check"])
        .await;
    assert_exit(&output, 1);
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("not found"), "{stderr}");
}

/// A blank reason is refused by `etl recover` itself: exit 2, nothing on stdout, and no request
/// reaches the database, so the audit log has no row for it.
#[tokio::test]
async fn a_blank_reason_exits_2_before_any_request_is_made() {
    let case = recoverable().await;
    let output = case
        .recover(&["--masked-ip", &case.masked_ip, "--reason", "  "])
        .await;
    assert_exit(&output, 2);
    assert!(output.stdout.is_empty());
    let audit = recover_audit(&case.app).await;
    assert!(audit.is_empty(), "{audit:?}");
}

/// `--from-file` recovers many masks of one field, blank lines skipped: one line per mask with
/// its value or NOT FOUND, in file order, and exit 1 because one was missing.
#[tokio::test]
async fn bulk_recovery_from_a_file_prints_each_mask_with_its_value_or_not_found() {
    let case = recoverable().await;
    let missing = "0".repeat(64);
    let file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{}\n\n{missing}\n", case.masked_ip)).unwrap();
    let path = file.display().to_string();
    let output = case
        .recover(&[
            "--masked-ip",
            "--from-file",
            &path,
            "--reason",
            "bulk review",
        ])
        .await;
    std::fs::remove_file(&file).unwrap();
    assert_exit(&output, 1);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{}\t10.9.2.1\n{missing}\tNOT FOUND\n", case.masked_ip)
    );
}

/// Every `etl recover` call that reaches the database leaves one audit row per mask, found or
/// not, in call order: who (the database user), the field, the mask (lower case however it was
/// given), why and the ticket. The call refused for a blank reason leaves none.
#[tokio::test]
async fn every_recovery_found_or_not_writes_one_audit_row_per_mask_with_who_and_why() {
    let case = recoverable().await;
    let missing = "0".repeat(64);
    let upper_device = case.masked_device.to_uppercase();
    let file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{}\n\n{missing}\n", case.masked_ip)).unwrap();
    let path = file.display().to_string();
    let calls: [(Vec<&str>, i32); 5] = [
        (
            vec![
                "--masked-ip",
                case.masked_ip.as_str(),
                "--reason",
                "fraud case",
                "--ticket",
                "SEC-1",
            ],
            0,
        ),
        (
            vec![
                "--masked-device-id",
                upper_device.as_str(),
                "--reason",
                "fraud case",
                "--format",
                "json",
            ],
            0,
        ),
        (
            vec!["--masked-ip", missing.as_str(), "--reason", "check"],
            1,
        ),
        (
            vec!["--masked-ip", case.masked_ip.as_str(), "--reason", "  "],
            2,
        ),
        (
            vec![
                "--masked-ip",
                "--from-file",
                path.as_str(),
                "--reason",
                "bulk review",
            ],
            1,
        ),
    ];
    let mut outputs = Vec::new();
    for (args, _) in &calls {
        outputs.push(case.recover(args).await);
    }
    std::fs::remove_file(&file).unwrap();
    for ((_, code), output) in calls.iter().zip(&outputs) {
        assert_exit(output, *code);
    }

    let user = case.user.as_str();
    let expected = vec![
        audit_row(
            user,
            "ip",
            &case.masked_ip,
            "fraud case",
            Some("SEC-1"),
            "found",
        ),
        audit_row(
            user,
            "device_id",
            &case.masked_device,
            "fraud case",
            None,
            "found",
        ),
        audit_row(user, "ip", &missing, "check", None, "not_found"),
        audit_row(user, "ip", &case.masked_ip, "bulk review", None, "found"),
        audit_row(user, "ip", &missing, "bulk review", None, "not_found"),
    ];
    assert_eq!(recover_audit(&case.app).await, expected);
}

/// Straight to the database, a recoverer can read neither the vault, nor the audit log, nor what
/// opens a request: only `recovery.request` and its own sealed replies are open to it.
#[tokio::test]
async fn recoverers_cannot_read_the_vault_or_the_audit_log_directly() {
    let case = recoverable().await;
    let mut recoverer = PgConnection::connect(&case.url).await.unwrap();
    assert!(denied(&mut recoverer, "SELECT ciphertext FROM vault.entries").await);
    assert!(denied(&mut recoverer, "SELECT * FROM recovery.audit_log").await);
    assert!(denied(&mut recoverer, "SELECT * FROM recovery.opening_material(1)").await);
    assert!(denied(&mut recoverer, "SELECT * FROM recovery.claim_request()").await);
    assert!(denied(&mut recoverer, "SELECT * FROM keyring.data_keys").await);
}

/// A request made straight to the database with a one-time key, as `etl recover` makes it.
async fn direct_request(
    recoverer: &mut PgConnection,
    masks: &[&str],
    reason: &str,
    keys: &ReplyKeyPair,
) -> i64 {
    sqlx::query_scalar("SELECT recovery.request('ip', $1, $2, NULL, $3, false)")
        .bind(masks)
        .bind(reason)
        .bind(keys.public_key().as_slice())
        .fetch_one(recoverer)
        .await
        .unwrap()
}

/// The replies of a request, as its requester reads them, once the service stored them.
async fn replies(
    recoverer_url: &str,
    request: i64,
) -> Vec<(String, Option<String>, Option<Vec<u8>>)> {
    let mut recoverer = PgConnection::connect(recoverer_url).await.unwrap();
    let mut found = Vec::new();
    for _ in 0..200 {
        found = sqlx::query_as(
            "SELECT outcome, detail, sealed FROM recovery.replies WHERE request_id = $1 ORDER BY ord",
        )
        .bind(request)
        .fetch_all(&mut recoverer)
        .await
        .unwrap();
        if !found.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(!found.is_empty(), "no replies for request {request}");
    found
}

/// A caller that skips etl's validation and asks with a blank reason is refused by the database,
/// on the record: the request is logged as refused, and its reply holds no value.
#[tokio::test]
async fn a_direct_request_with_a_blank_reason_is_recorded_as_refused_and_yields_nothing() {
    let case = recoverable().await;
    let mut recoverer = PgConnection::connect(&case.url).await.unwrap();
    let keys = ReplyKeyPair::generate();
    let refused = direct_request(&mut recoverer, &[&case.masked_ip], " ", &keys).await;
    let rows = replies(&case.url, refused).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].0, "refused");
    assert_eq!(rows[0].2, None);
    assert_eq!(
        case.app
            .count("SELECT count(*) FROM recovery.audit_log WHERE outcome = 'refused'")
            .await,
        1
    );
}

/// A caller that skips etl's validation and asks for a mask that is not hex: that mask is on
/// record as not found (not refused), and the valid mask beside it is still opened, sealed to the
/// caller's key and to nobody else's.
#[tokio::test]
async fn a_direct_request_for_a_mask_that_is_not_hex_records_it_as_not_found() {
    let case = recoverable().await;
    let mut recoverer = PgConnection::connect(&case.url).await.unwrap();
    let mut keys = ReplyKeyPair::generate();
    let odd = direct_request(&mut recoverer, &["zz", &case.masked_ip], "typo", &keys).await;
    let rows = replies(&case.url, odd).await;
    let outcomes: Vec<(&str, bool)> = rows
        .iter()
        .map(|(outcome, _, sealed)| (outcome.as_str(), sealed.is_some()))
        .collect();
    assert_eq!(outcomes, vec![("not_found", false), ("found", true)]);
    let sealed = rows[1].2.as_deref().unwrap();
    let value = keys.open(odd, "ip", &case.masked_ip, sealed).unwrap();
    assert_eq!(value.as_slice(), b"10.9.2.1");
    assert!(ReplyKeyPair::generate()
        .open(odd, "ip", &case.masked_ip, sealed)
        .is_err());
    assert_eq!(
        case.app
            .count("SELECT count(*) FROM recovery.audit_log WHERE outcome = 'refused'")
            .await,
        0
    );
}

/// A request is opened only once committed: one rolled back leaves no audit row, no request for
/// a service to open, and nothing opened.
#[tokio::test]
async fn a_request_rolled_back_leaves_nothing_to_open() {
    let case = recoverable().await;
    let mut recoverer = PgConnection::connect(&case.url).await.unwrap();
    let keys = ReplyKeyPair::generate();
    let mut tx = recoverer.begin().await.unwrap();
    direct_request(&mut tx, &[&case.masked_ip], "sneaky", &keys).await;
    tx.rollback().await.unwrap();
    assert_eq!(
        case.app
            .count("SELECT count(*) FROM recovery.audit_log WHERE reason = 'sneaky'")
            .await,
        0
    );
    assert_eq!(
        case.app
            .count("SELECT count(*) FROM recovery.requests")
            .await,
        0
    );
    assert_eq!(
        case.app
            .count("SELECT count(*) FROM recovery.audit_log WHERE outcome = 'refused'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_vault_key_under_the_wrong_encryption_context_fails_cleanly() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[event("10.9.3.1", "903-00-0001")]).await;
    let (masked_ip, _) = first_masks(&app).await;
    // Relabel the vault key as version 9: KMS sees key_version=9 in the context and refuses.
    sqlx::query("UPDATE keyring.data_keys SET version = 9 WHERE purpose = 'vault'")
        .execute(&app.pool)
        .await
        .unwrap();
    sqlx::query("UPDATE vault.entries SET vault_key_version = 9")
        .execute(&app.pool)
        .await
        .unwrap();
    let (_, url) = app.login_user("etl_recoverer").await;
    let output = app
        .etl_as(
            &url,
            &["recover", "--masked-ip", &masked_ip, "--reason", "test"],
        )
        .await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("encryption context"), "{stderr}");
    assert!(output.stdout.is_empty());
}

#[tokio::test]
async fn rotated_and_rewrapped_keys_keep_every_value_recoverable() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[event("10.9.4.1", "904-00-0001")]).await;
    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    app.ingest(&[event("10.9.4.2", "904-00-0002")]).await;
    let versions: Vec<(String, i32)> =
        sqlx::query_as("SELECT encode(mask, 'hex'), vault_key_version FROM vault.entries WHERE field = 'ip' ORDER BY vault_key_version")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(versions.iter().map(|v| v.1).collect::<Vec<_>>(), vec![1, 2]);

    let (_, url) = app.login_user("etl_recoverer").await;
    let recover_all = || async {
        let mut values = Vec::new();
        for (mask, _) in &versions {
            let output = app
                .etl_as(
                    &url,
                    &["recover", "--masked-ip", mask, "--reason", "rotation check"],
                )
                .await;
            assert_exit(&output, 0);
            values.push(String::from_utf8(output.stdout).unwrap());
        }
        values
    };
    assert_eq!(recover_all().await, vec!["10.9.4.1\n", "10.9.4.2\n"]);

    let new_key = create_kms_key(&aws_sdk_kms::Client::new(&app.sdk)).await;
    app.etl_ok(&["keys", "rewrap", "--kms-key-id", &new_key])
        .await;
    let listed: serde_json::Value =
        serde_json::from_str(&app.etl_ok(&["keys", "list", "--format", "json"]).await).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(
        listed.len(),
        5,
        "mask, quarantine, user and two vault versions"
    );
    assert!(
        listed
            .iter()
            .all(|k| k["kms_key_id"].as_str().unwrap().ends_with(&new_key)),
        "{listed:?}"
    );
    assert!(listed.iter().all(|k| k.get("wrapped_key").is_none()));
    assert_eq!(recover_all().await, vec!["10.9.4.1\n", "10.9.4.2\n"]);
}
