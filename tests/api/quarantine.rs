//! Quarantined bodies: listed as metadata, opened only by recoverers, on record.

use crate::helpers::{assert_exit, event, TestApp};

#[tokio::test]
async fn ingest_refuses_a_quarantine_public_key_that_kms_did_not_attest() {
    let app = TestApp::spawn().await;
    // Someone with write access to the keyring plants a public key of their own.
    sqlx::query(
        "UPDATE keyring.data_keys SET public_key = decode(repeat('11', 32), 'hex') \
         WHERE purpose = 'quarantine'",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    app.send(&["not json".to_owned()]).await;
    let output = app.etl(&["ingest", "--drain"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("KMS attestation does not verify"),
        "{stderr}"
    );
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
}

#[tokio::test]
async fn a_recoverer_opens_a_quarantined_body_on_record_and_nobody_else_can() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    let hostile = r#"{"user_id": "u-1", "ip": "10.6.0.1", "device_id": 42}"#;
    app.ingest(&[event("10.6.0.2", "600-00-0002"), hostile.to_owned()])
        .await;
    let message_id: String = sqlx::query_scalar("SELECT message_id FROM etl.quarantine")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (recoverer, url) = app.login_user("etl_recoverer").await;

    // Recoverers list what is quarantined and why, never the body.
    let output = app
        .etl_as(&url, &["quarantine", "list", "--format", "json"])
        .await;
    assert_exit(&output, 0);
    let listed = String::from_utf8_lossy(&output.stdout);
    assert!(
        listed.contains(&message_id) && !listed.contains("10.6.0.1"),
        "{listed}"
    );

    let output = app
        .etl_as(
            &url,
            &[
                "quarantine",
                "show",
                &message_id,
                "--reason",
                "why was this rejected",
                "--ticket",
                "OPS-7",
            ],
        )
        .await;
    assert_exit(&output, 0);
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        format!("{hostile}\n")
    );
    assert!(!String::from_utf8_lossy(&output.stderr).contains("10.6.0.1"));

    let output = app
        .etl_as(
            &url,
            &[
                "quarantine",
                "show",
                &message_id,
                "--reason",
                "again",
                "--format",
                "json",
            ],
        )
        .await;
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(
        (json["message_id"].as_str(), json["body"].as_str()),
        (Some(message_id.as_str()), Some(hostile))
    );

    let output = app
        .etl_as(&url, &["quarantine", "show", "no-such-id", "--reason", "r"])
        .await;
    assert_eq!(output.status.code(), Some(1));
    assert!(output.stdout.is_empty());

    let audit: Vec<(String, Option<String>, String, Option<String>)> = sqlx::query_as(
        "SELECT db_user, subject, outcome, ticket FROM recovery.audit_log \
         WHERE kind = 'quarantine_open' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        audit,
        [
            (
                recoverer.clone(),
                Some(message_id.clone()),
                "found".to_owned(),
                Some("OPS-7".to_owned())
            ),
            (
                recoverer.clone(),
                Some(message_id.clone()),
                "found".into(),
                None
            ),
            (
                recoverer.clone(),
                Some("no-such-id".into()),
                "not_found".into(),
                None
            ),
        ]
    );
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind = 'fetch'")
            .await,
        3
    );

    // Ingest and analysts cannot open it, and say so.
    for group in ["etl_ingest", "etl_analyst"] {
        let (_, other) = app.login_user(group).await;
        let output = app
            .etl_as(
                &other,
                &["quarantine", "show", &message_id, "--reason", "r"],
            )
            .await;
        assert_eq!(output.status.code(), Some(2), "{group}");
        assert!(output.stdout.is_empty(), "{group}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("etl_recoverer"), "{group}: {stderr}");
    }
}
