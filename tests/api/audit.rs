//! The tamper-evident audit log: append-only for every role, a hash chain that `etl audit verify`
//! checks, a head that `etl audit head` prints for anchoring, and the recovery policy.

use sqlx::Executor;

use crate::helpers::{assert_exit, event, TestApp};

/// An app with one ingested event and a recoverer who made `requests` recoveries of its ip.
async fn app_with_recoveries(requests: usize) -> (TestApp, String, String) {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[event("10.7.0.1", "700-00-0001")]).await;
    let mask: String = sqlx::query_scalar("SELECT masked_ip FROM user_logins")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let (_, url) = app.login_user("etl_recoverer").await;
    for i in 0..requests {
        recover(&app, &url, &mask, &[&format!("case {i}")]).await;
    }
    (app, url, mask)
}

/// `etl recover --masked-ip <mask> --reason <reason> [more args]` as the recoverer; exit 0.
async fn recover(app: &TestApp, url: &str, mask: &str, args: &[&str]) -> std::process::Output {
    let mut command = app.command(&["recover", "--masked-ip", mask, "--reason"]);
    command.args(args).env("DATABASE_URL", url);
    command.output().await.unwrap()
}

/// A new bucket in the stack's S3 for one test's anchors, and a client of it.
async fn anchor_bucket(app: &TestApp) -> (aws_sdk_s3::Client, String) {
    // LocalStack serves buckets by path, as `AnchorStore` asks of any endpoint of its own.
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&app.sdk)
            .force_path_style(true)
            .build(),
    );
    let bucket = format!(
        "etl-anchors-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    s3.create_bucket().bucket(&bucket).send().await.unwrap();
    (s3, bucket)
}

async fn verify(app: &TestApp, extra: &[&str]) -> (Option<i32>, String) {
    let mut args = vec!["audit", "verify"];
    args.extend_from_slice(extra);
    let output = app.etl(&args).await;
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test]
async fn no_role_can_change_the_audit_log_and_verify_names_the_first_changed_row() {
    let (app, _, _) = app_with_recoveries(3).await;
    // Four key creations, then three requests and three fetches, chained 1..10.
    assert_eq!(
        app.count("SELECT max(id) FROM recovery.audit_log").await,
        10
    );
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("holds: 10 rows"), "{out}");

    // Even the owner (here a superuser) is refused every change.
    for sql in [
        "UPDATE recovery.audit_log SET reason = 'nothing to see' WHERE id = 3",
        "DELETE FROM recovery.audit_log WHERE id = 3",
        "TRUNCATE recovery.audit_log",
    ] {
        let err = app.pool.execute(sql).await.unwrap_err();
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }

    // A superuser who turns the triggers off can change a row, but not unseen.
    let mut conn = app.pool.acquire().await.unwrap();
    conn.execute("SET session_replication_role = replica")
        .await
        .unwrap();
    conn.execute("UPDATE recovery.audit_log SET reason = 'nothing to see' WHERE id = 3")
        .await
        .unwrap();
    conn.execute("SET session_replication_role = DEFAULT")
        .await
        .unwrap();
    drop(conn);
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("broken at row 3") && out.contains("changed"),
        "{out}"
    );

    // `etl` encodes the rows itself: without the database's payload function (which an owner
    // could replace) it still reads the chain and still finds the change.
    app.pool
        .execute("DROP FUNCTION recovery.audit_payload(recovery.audit_log)")
        .await
        .unwrap();
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("broken at row 3"), "{out}");
}

#[tokio::test]
async fn appended_rows_carry_the_session_s_user_and_time_whatever_the_insert_says() {
    let (app, _, _) = app_with_recoveries(1).await;
    app.pool
        .execute(
            "INSERT INTO recovery.audit_log (id, logged_at, kind, db_user, client_addr, outcome, \
             prev_hash, row_hash) VALUES (99, '2001-01-01', 'policy', 'someone_else', \
             '10.9.9.9', 'set', '\\x00', '\\x00')",
        )
        .await
        .unwrap();
    let (id, user, year, addr): (i64, String, f64, Option<String>) = sqlx::query_as(
        "SELECT id, db_user, extract(year FROM logged_at)::float8, text(client_addr) \
         FROM recovery.audit_log ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!((id, user.as_str()), (7, "postgres"));
    assert!(year > 2001.0);
    assert_ne!(addr.as_deref(), Some("10.9.9.9/32"));
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    // The head of an empty log anchors nothing but does not fail.
    let (code, out) = verify(&app, &["--anchor", &format!("0:{}", "0".repeat(64))]).await;
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test]
async fn a_removed_row_or_a_removed_tail_is_detected() {
    let (app, _, _) = app_with_recoveries(2).await;
    let head = app.etl_ok(&["audit", "head"]).await;
    let head = head.trim();
    // Four key creations, then two requests of two rows each.
    assert!(head.starts_with("8:") && head.len() == 2 + 64, "{head}");
    let json: serde_json::Value =
        serde_json::from_str(&app.etl_ok(&["audit", "head", "--format", "json"]).await).unwrap();
    assert_eq!(
        format!("{}:{}", json["id"], json["hash"].as_str().unwrap()),
        head
    );
    let (code, out) = verify(&app, &["--anchor", head]).await;
    assert_eq!(code, Some(0), "{out}");

    app.pool
        .execute(
            "ALTER TABLE recovery.audit_log DISABLE TRIGGER audit_no_update_or_delete; \
             DELETE FROM recovery.audit_log WHERE id = 8; \
             ALTER TABLE recovery.audit_log ENABLE TRIGGER audit_no_update_or_delete",
        )
        .await
        .unwrap();
    // The rest of the chain is intact: only the anchor shows that its tail was removed.
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(0), "{out}");
    let (code, out) = verify(&app, &["--anchor", head]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("anchored head"), "{out}");

    app.pool
        .execute(
            "ALTER TABLE recovery.audit_log DISABLE TRIGGER audit_no_update_or_delete; \
             DELETE FROM recovery.audit_log WHERE id = 6; \
             ALTER TABLE recovery.audit_log ENABLE TRIGGER audit_no_update_or_delete",
        )
        .await
        .unwrap();
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("row 6 is missing"), "{out}");

    let output = app.etl(&["audit", "verify", "--anchor", "4:beef"]).await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn concurrent_requests_chain_in_one_order_and_auditors_can_verify() {
    let (app, url, mask) = app_with_recoveries(0).await;
    let runs = (0..6).map(|i| {
        let (app, url, mask) = (&app, url.clone(), mask.clone());
        async move {
            let output = recover(app, &url, &mask, &[&format!("parallel {i}")]).await;
            assert_exit(&output, 0);
        }
    });
    futures_util::future::join_all(runs).await;
    // Four key creations, then six requests and six fetches.
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log").await,
        16
    );
    assert_eq!(
        app.count("SELECT max(id) FROM recovery.audit_log").await,
        16
    );

    let (_, auditor) = app.login_user("etl_auditor").await;
    let output = app.etl_as(&auditor, &["audit", "verify"]).await;
    assert_exit(&output, 0);
    // A recoverer may not read the log it writes to.
    let output = app.etl_as(&url, &["audit", "verify"]).await;
    assert_eq!(output.status.code(), Some(2));
}

#[tokio::test]
async fn the_recovery_policy_is_enforced_by_the_database_and_recorded() {
    let (app, url, mask) = app_with_recoveries(0).await;
    let set = app
        .etl_ok(&[
            "recover",
            "policy",
            "set",
            "--require-ticket",
            "true",
            "--daily-limit",
            "2",
        ])
        .await;
    assert!(set.contains("require ticket: true"), "{set}");
    let shown: serde_json::Value = serde_json::from_str(
        &app.etl_ok(&["recover", "policy", "show", "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(
        (&shown["require_ticket"], &shown["daily_limit"]),
        (&serde_json::json!(true), &serde_json::json!(2))
    );

    // No ticket: refused, on the record, nothing on stdout.
    let output = recover(&app, &url, &mask, &["check"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requires a ticket"), "{stderr}");

    // With a ticket: one value opened, one left today.
    let output = recover(&app, &url, &mask, &["check", "--ticket", "SEC-9"]).await;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.7.0.1\n");

    // Two more masks in one request exceed the limit: the whole request is refused.
    let file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, format!("{mask}\n{}\n", "0".repeat(64))).unwrap();
    let output = app
        .command(&["recover", "--masked-ip", "--from-file"])
        .arg(&file)
        .args(["--reason", "bulk", "--ticket", "SEC-9"])
        .env("DATABASE_URL", &url)
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&file).unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(output.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("allows 2 values"), "{stderr}");

    let outcomes: Vec<(String, String)> = sqlx::query_as(
        "SELECT kind, outcome FROM recovery.audit_log \
         WHERE kind NOT IN ('fetch', 'key_creation') ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let outcomes: Vec<(&str, &str)> = outcomes
        .iter()
        .map(|(k, o)| (k.as_str(), o.as_str()))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("policy", "set"),
            ("recover", "refused"),
            ("recover", "found"),
            ("recover", "refused"),
            ("recover", "refused"),
        ]
    );

    // Only the owner sets the policy.
    let output = app
        .etl_as(&url, &["recover", "policy", "set", "--daily-limit", "0"])
        .await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("only the owner"));
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(code, Some(0), "{out}");
}

/// Anchors in S3: `etl audit anchor` writes the head, ingest writes one at start with
/// `--audit-anchor-to`, and `verify --anchors` checks the chain against every one, so a tail
/// removed after an anchor was written is caught.
#[tokio::test]
async fn anchors_in_s3_catch_a_removed_tail() {
    let (app, url, mask) = app_with_recoveries(1).await;
    let (_, bucket) = anchor_bucket(&app).await;
    let location = format!("s3://{bucket}/prod");

    let first = app.etl_ok(&["audit", "anchor", "--to", &location]).await;
    assert!(
        first.starts_with("anchored ") && first.contains("no Object Lock retention"),
        "{first}"
    );
    assert_exit(
        &recover(&app, &url, &mask, &["after the first anchor"]).await,
        0,
    );
    app.send(&[event("10.7.0.2", "700-00-0002")]).await;
    let ingest = app
        .command(&["ingest", "--drain", "--audit-anchor-to", &location])
        .output()
        .await
        .unwrap();
    assert_exit(&ingest, 0);
    assert!(
        String::from_utf8_lossy(&ingest.stderr).contains("audit anchor written"),
        "{}",
        String::from_utf8_lossy(&ingest.stderr)
    );
    let (code, out) = verify(&app, &["--anchors", &location]).await;
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("and all 2 anchors hold"), "{out}");

    let last: i64 = sqlx::query_scalar("SELECT max(id) FROM recovery.audit_log")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    app.pool
        .execute(
            format!(
                "ALTER TABLE recovery.audit_log DISABLE TRIGGER audit_no_update_or_delete; \
                 DELETE FROM recovery.audit_log WHERE id = {last}; \
                 ALTER TABLE recovery.audit_log ENABLE TRIGGER audit_no_update_or_delete"
            )
            .as_str(),
        )
        .await
        .unwrap();
    let (code, out) = verify(&app, &[]).await;
    assert_eq!(
        code,
        Some(0),
        "without the anchors the shorter chain holds: {out}"
    );
    let (code, out) = verify(&app, &["--anchors", &location]).await;
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains(&format!("anchored head at row {last}")),
        "{out}"
    );

    // A location with no anchor is an error, not a pass.
    let (code, out) = verify(&app, &["--anchors", &format!("s3://{bucket}/typo")]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(out.contains("no anchor in"), "{out}");
}

/// An anchor is written once: in a versioned bucket, an object put over it (to hide the head it
/// recorded) shows as a second version, and verify refuses the location.
#[tokio::test]
async fn an_overwritten_anchor_is_refused() {
    let (app, _, _) = app_with_recoveries(1).await;
    let (s3, bucket) = anchor_bucket(&app).await;
    s3.put_bucket_versioning()
        .bucket(&bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await
        .unwrap();
    let location = format!("s3://{bucket}/prod");
    app.etl_ok(&["audit", "anchor", "--to", &location]).await;
    // Anchoring the same head again changes nothing.
    app.etl_ok(&["audit", "anchor", "--to", &location]).await;
    let (code, out) = verify(&app, &["--anchors", &location]).await;
    assert_eq!(code, Some(0), "{out}");
    let listed = s3
        .list_objects_v2()
        .bucket(&bucket)
        .prefix("prod/")
        .send()
        .await
        .unwrap();
    let key = listed.contents()[0].key().unwrap().to_owned();
    s3.put_object()
        .bucket(&bucket)
        .key(&key)
        .body(format!("1:{}\n", "00".repeat(32)).into_bytes().into())
        .send()
        .await
        .unwrap();
    let (code, out) = verify(&app, &["--anchors", &location]).await;
    assert_eq!(code, Some(2), "{out}");
    assert!(
        out.contains("was overwritten or deleted (2 versions)"),
        "{out}"
    );
}
