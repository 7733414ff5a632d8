//! `etl ingest --from-file`: replays, grown inputs, other inputs with the same first line,
//! concurrent runs, and vault rows of values repeated across batches.

use crate::helpers::{event, TestApp};
use etl::pipeline::Summary;

fn bodies(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| {
            event(
                &format!("10.9.{}.{}", i / 200, i % 200),
                &format!("900-00-{i:04}"),
            )
        })
        .collect()
}

fn write_input(lines: &[String]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("etl-file-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

async fn ingest(app: &TestApp, path: &std::path::Path, batch_size: &str) -> Summary {
    let output = app
        .etl_ok(&[
            "ingest",
            "--from-file",
            path.to_str().unwrap(),
            "--summary-json",
            "--batch-size",
            batch_size,
        ])
        .await;
    serde_json::from_str(&output).unwrap()
}

#[tokio::test]
async fn a_grown_input_adds_only_its_new_lines_whatever_the_batch_size() {
    let app = TestApp::spawn().await;
    let all = bodies(60);
    let first = write_input(&all[..40]);
    let grown = write_input(&all);

    let summary = ingest(&app, &first, "7").await;
    assert_eq!(summary.written, 40);
    let summary = ingest(&app, &grown, "13").await;
    assert_eq!(summary.written, 20, "{summary}");
    assert_eq!(summary.duplicates_skipped, 40, "{summary}");
    let summary = ingest(&app, &grown, "100").await;
    assert_eq!(summary.written, 0, "{summary}");
    assert_eq!(summary.duplicates_skipped, 60, "{summary}");

    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 60);
    assert_eq!(
        app.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        60
    );
    // Ranges never overlap, so every line is claimed exactly once.
    assert_eq!(
        app.count("SELECT sum(last_line - first_line + 1)::bigint FROM etl.file_batches")
            .await,
        60
    );
    std::fs::remove_file(first).unwrap();
    std::fs::remove_file(grown).unwrap();
}

#[tokio::test]
async fn another_input_with_the_same_first_line_is_refused_not_merged() {
    let app = TestApp::spawn().await;
    let original = bodies(30);
    let mut other = original.clone();
    other[11] = event("10.99.0.1", "999-99-9999");
    let original_path = write_input(&original);
    let other_path = write_input(&other);

    ingest(&app, &original_path, "10").await;
    let output = app
        .etl(&[
            "ingest",
            "--from-file",
            other_path.to_str().unwrap(),
            "--summary-json",
            "--batch-size",
            "10",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("lines 11-20 differ"), "{stderr}");
    assert!(!stderr.contains("10.99.0.1"), "{stderr}");
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 30);
    std::fs::remove_file(original_path).unwrap();
    std::fs::remove_file(other_path).unwrap();
}

#[tokio::test]
async fn concurrent_runs_of_one_input_write_each_line_once() {
    let app = TestApp::spawn().await;
    let path = write_input(&bodies(3000));
    let args = [
        "ingest",
        "--from-file",
        path.to_str().unwrap(),
        "--summary-json",
        "--batch-size",
        "50",
    ];
    let (a, b) = tokio::join!(app.etl(&args), app.etl(&args));
    for output in [&a, &b] {
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success() || stderr.contains("another `etl ingest --from-file`"),
            "{stderr}"
        );
    }
    assert!(a.status.success() || b.status.success());
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 3000);
    assert_eq!(
        app.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        3000
    );
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn values_repeated_across_batches_have_one_vault_row_each() {
    let app = TestApp::spawn().await;
    // 3 ips and 2 devices, repeated over 25 batches of 4.
    let lines: Vec<String> = (0..100)
        .map(|i| {
            event(
                &format!("10.8.0.{}", i % 3),
                &format!("800-00-000{}", i % 2),
            )
        })
        .collect();
    let path = write_input(&lines);
    let summary = ingest(&app, &path, "4").await;
    assert_eq!(summary.written, 100);
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries WHERE field = 'ip'")
            .await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries WHERE field = 'device_id'")
            .await,
        2
    );
    // Every mask in user_logins has its vault row, so every one can be recovered.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM user_logins u WHERE NOT EXISTS
               (SELECT 1 FROM vault.entries v WHERE v.field = 'ip' AND v.mask = decode(u.masked_ip, 'hex'))
            OR NOT EXISTS
               (SELECT 1 FROM vault.entries v WHERE v.field = 'device_id' AND v.mask = decode(u.masked_device_id, 'hex'))"
        )
        .await,
        0
    );
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn every_vault_row_opens_to_the_value_of_its_mask_when_the_vault_held_some_already() {
    let app = TestApp::spawn().await;
    let all = bodies(900);
    // A first run puts every third value in the vault; a second process, which knows none of
    // them, then writes all 900 in big batches whose chunks meet existing rows.
    let some: Vec<String> = all.iter().step_by(3).cloned().collect();
    let first = write_input(&some);
    ingest(&app, &first, "1000").await;
    let mut reversed = all.clone();
    reversed.reverse();
    let second = write_input(&reversed);
    let summary = ingest(&app, &second, "1000").await;
    assert_eq!(summary.written, 900, "{summary}");

    let rows: Vec<(String, String, Vec<u8>)> =
        sqlx::query_as("SELECT field, encode(mask, 'hex'), ciphertext FROM vault.entries")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1800);
    let transformer = app.transformer().await;
    let mut opened = std::collections::HashSet::new();
    for (field_name, mask, ciphertext) in &rows {
        let field = if field_name == "ip" {
            etl::domain::PiiField::Ip
        } else {
            etl::domain::PiiField::DeviceId
        };
        let value = transformer
            .sealer()
            .open_value(field, mask, ciphertext)
            .unwrap();
        assert_eq!(&transformer.masker().mask(field, &value), mask);
        opened.insert(value.to_string());
    }
    for body in &all {
        let event = etl::domain::LoginEvent::parse(body).unwrap();
        assert!(opened.contains(&event.ip.canonical()));
        assert!(opened.contains(event.device_id.canonical()));
    }
    std::fs::remove_file(first).unwrap();
    std::fs::remove_file(second).unwrap();
}

#[tokio::test]
async fn the_ingest_role_can_backfill_and_replay() {
    let app = TestApp::spawn().await;
    let (_, url) = app.login_user("etl_ingest").await;
    let path = write_input(&bodies(25));
    for expected_written in [25, 0] {
        let output = app
            .etl_as(
                &url,
                &[
                    "ingest",
                    "--from-file",
                    path.to_str().unwrap(),
                    "--summary-json",
                    "--batch-size",
                    "10",
                ],
            )
            .await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{stderr}");
        let summary: Summary = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(summary.written, expected_written as u64, "{summary}");
    }
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 25);
    std::fs::remove_file(path).unwrap();
}

#[tokio::test]
async fn a_truncated_copy_of_an_ingested_input_is_named_as_such() {
    let app = TestApp::spawn().await;
    let all = bodies(30);
    let whole = write_input(&all);
    let truncated = write_input(&all[..15]);
    ingest(&app, &whole, "10").await;
    let output = app
        .etl(&[
            "ingest",
            "--from-file",
            truncated.to_str().unwrap(),
            "--batch-size",
            "10",
        ])
        .await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ends at line 15, inside lines 11-20"),
        "{stderr}"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 30);
    std::fs::remove_file(whole).unwrap();
    std::fs::remove_file(truncated).unwrap();
}
