//! Database roles, `etl recover` with its audit trail, and the key lifecycle.

use sqlx::{Connection, PgConnection};

use crate::helpers::{assert_exit, create_kms_key, event, TestApp};

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
        "SELECT recovery.request('ip', ARRAY['x'], 'curious', NULL)",
        "SELECT * FROM recovery.fetch(1)",
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
    let summary: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (summary["written"].as_u64(), summary["quarantined"].as_u64()),
        (Some(2), Some(1))
    );
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 4);

    let mut ingest = PgConnection::connect(&url).await.unwrap();
    assert!(denied(&mut ingest, "SELECT ciphertext FROM vault.entries").await);
    assert!(denied(&mut ingest, "SELECT * FROM user_logins").await);
    assert!(denied(&mut ingest, "SELECT * FROM recovery.fetch(1)").await);
}

#[tokio::test]
async fn recoverers_get_original_values_and_every_call_is_audited() {
    let app = TestApp::spawn().await;
    app.ingest(&[event("10.9.2.1", "902-00-0001")]).await;
    let (masked_ip, masked_device) = first_masks(&app).await;
    let (user, url) = app.login_user("etl_recoverer").await;
    let recover = |args: Vec<String>| {
        let mut command = app.command(&[]);
        command.arg("recover").args(args).env("DATABASE_URL", &url);
        command
    };

    let output = recover(vec![
        "--masked-ip".into(),
        masked_ip.clone(),
        "--reason".into(),
        "fraud case".into(),
        "--ticket".into(),
        "SEC-1".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_exit(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.9.2.1\n");

    let output = recover(vec![
        "--masked-device-id".into(),
        masked_device.to_uppercase(),
        "--reason".into(),
        "fraud case".into(),
        "--format".into(),
        "json".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(0));
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["value"], "902-00-0001");

    let missing = "0".repeat(64);
    let output = recover(vec![
        "--masked-ip".into(),
        missing.clone(),
        "--reason".into(),
        "check".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());

    let output = recover(vec![
        "--masked-ip".into(),
        masked_ip.clone(),
        "--reason".into(),
        "  ".into(),
    ])
    .output()
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());

    let file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{masked_ip}\n\n{missing}\n")).unwrap();
    let output = recover(vec![
        "--masked-ip".into(),
        "--from-file".into(),
        file.display().to_string(),
        "--reason".into(),
        "bulk review".into(),
    ])
    .output()
    .await
    .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{masked_ip}\t10.9.2.1\n{missing}\tNOT FOUND\n")
    );

    let audit: Vec<(String, String, String, String, Option<String>, String)> = sqlx::query_as(
        "SELECT db_user, field, subject, reason, ticket, outcome FROM recovery.audit_log \
         WHERE kind = 'recover' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let expected = vec![
        (
            user.clone(),
            "ip".to_owned(),
            masked_ip.clone(),
            "fraud case".to_owned(),
            Some("SEC-1".to_owned()),
            "found".to_owned(),
        ),
        (
            user.clone(),
            "device_id".into(),
            masked_device.clone(),
            "fraud case".into(),
            None,
            "found".into(),
        ),
        (
            user.clone(),
            "ip".into(),
            missing.clone(),
            "check".into(),
            None,
            "not_found".into(),
        ),
        (
            user.clone(),
            "ip".into(),
            masked_ip.clone(),
            "bulk review".into(),
            None,
            "found".into(),
        ),
        (
            user.clone(),
            "ip".into(),
            missing.clone(),
            "bulk review".into(),
            None,
            "not_found".into(),
        ),
    ];
    assert_eq!(audit, expected);

    // Straight to the database: no table access, a blank reason is refused on the record, and a
    // request must be committed before anything can be fetched.
    let mut recoverer = PgConnection::connect(&url).await.unwrap();
    assert!(denied(&mut recoverer, "SELECT ciphertext FROM vault.entries").await);
    assert!(denied(&mut recoverer, "SELECT * FROM recovery.audit_log").await);
    let refused: i64 = sqlx::query_scalar("SELECT recovery.request('ip', ARRAY[$1], ' ', NULL)")
        .bind(&masked_ip)
        .fetch_one(&mut recoverer)
        .await
        .unwrap();
    let rows: Vec<(String, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT outcome, ciphertext FROM recovery.fetch($1)")
            .bind(refused)
            .fetch_all(&mut recoverer)
            .await
            .unwrap();
    assert_eq!(rows, vec![("refused".to_owned(), None)]);
    // A caller that skips etl's validation: a mask that is not hex is on record, not found.
    let odd: i64 =
        sqlx::query_scalar("SELECT recovery.request('ip', ARRAY['zz', $1], 'typo', NULL)")
            .bind(&masked_ip)
            .fetch_one(&mut recoverer)
            .await
            .unwrap();
    let rows: Vec<(String, bool)> =
        sqlx::query_as("SELECT outcome, ciphertext IS NOT NULL FROM recovery.fetch($1)")
            .bind(odd)
            .fetch_all(&mut recoverer)
            .await
            .unwrap();
    assert_eq!(
        rows,
        vec![("not_found".to_owned(), false), ("found".to_owned(), true)]
    );
    let mut tx = recoverer.begin().await.unwrap();
    let request: i64 =
        sqlx::query_scalar("SELECT recovery.request('ip', ARRAY[$1], 'sneaky', NULL)")
            .bind(&masked_ip)
            .fetch_one(&mut *tx)
            .await
            .unwrap();
    let early = sqlx::query(&format!("SELECT * FROM recovery.fetch({request})"))
        .fetch_all(&mut *tx)
        .await;
    assert!(
        matches!(&early, Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55000")),
        "a fetch in the request's own transaction was not refused: {early:?}"
    );
    tx.rollback().await.unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE outcome = 'refused'")
            .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE reason = 'sneaky'")
            .await,
        0
    );
}

#[tokio::test]
async fn a_vault_key_under_the_wrong_encryption_context_fails_cleanly() {
    let app = TestApp::spawn().await;
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
    assert_eq!(listed.len(), 4, "mask, quarantine and two vault versions");
    assert!(
        listed
            .iter()
            .all(|k| k["kms_key_id"].as_str().unwrap().ends_with(&new_key)),
        "{listed:?}"
    );
    assert!(listed.iter().all(|k| k.get("wrapped_key").is_none()));
    assert_eq!(recover_all().await, vec!["10.9.4.1\n", "10.9.4.2\n"]);
}
