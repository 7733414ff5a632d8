//! `etl ingest`: masks and duplicates, redelivery, service mode, bad input.

use std::collections::HashMap;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256, Sha512};

use crate::helpers::{event, wait_until, TestApp};
use etl::pipeline::Summary;

async fn masks(app: &TestApp) -> Vec<(String, String, String)> {
    sqlx::query_as("SELECT user_id, masked_ip, masked_device_id FROM user_logins")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn equal_values_share_a_mask_and_masks_are_not_plain_digests() {
    let app = TestApp::spawn().await;
    let cases = [
        ("10.0.0.1", "111-11-1111"),
        ("10.0.0.1", "222-22-2222"),
        ("::ffff:10.0.0.1", " 111-11-1111 "),
        ("10.0.0.2", "111-11-1111"),
        ("2001:DB8::1", "333-33-3333"),
        ("2001:db8:0:0:0:0:0:1", "333-33-3333"),
    ];
    let bodies: Vec<String> = cases.iter().map(|(ip, device)| event(ip, device)).collect();
    let user_ids: Vec<String> = bodies
        .iter()
        .map(|b| {
            serde_json::from_str::<serde_json::Value>(b).unwrap()["user_id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    app.send(&bodies).await;
    let (summary, _) = app.drain(&[]).await;
    assert_eq!(summary.written, 6);

    let rows: HashMap<String, (String, String)> = masks(&app)
        .await
        .into_iter()
        .map(|(user, ip, device)| (user, (ip, device)))
        .collect();
    let row = |i: usize| rows[&user_ids[i]].clone();
    assert_eq!(row(0).0, row(1).0, "same ip, same mask");
    assert_eq!(row(0).0, row(2).0, "IPv4-mapped form is the same ip");
    assert_ne!(row(0).0, row(3).0, "different ips, different masks");
    assert_eq!(row(0).1, row(2).1, "device_id is trimmed");
    assert_eq!(row(0).1, row(3).1);
    assert_ne!(row(0).1, row(1).1);
    assert_eq!(row(4), row(5), "IPv6 is canonicalised");

    let (masked_ip, masked_device) = row(0);
    for (value, mask) in [("10.0.0.1", &masked_ip), ("111-11-1111", &masked_device)] {
        assert_eq!(mask.len(), 64);
        assert_ne!(mask, &hex::encode(Sha256::digest(value)));
        assert_ne!(mask, &hex::encode(Md5::digest(value)));
        assert!(!hex::encode(Sha512::digest(value)).contains(mask.as_str()));
    }
    // One vault row per distinct value: 3 ips and 3 device ids.
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 6);
    let versions: Vec<i32> =
        sqlx::query_scalar("SELECT DISTINCT mask_key_version FROM user_logins")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(versions, vec![1]);
}

#[tokio::test]
async fn redelivered_messages_after_commit_make_no_second_row() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = (0..10)
        .map(|i| event(&format!("10.1.0.{i}"), &format!("100-00-{i:04}")))
        .collect();
    app.send(&bodies).await;

    // A consumer that commits but dies before deleting: receive, write, no delete.
    let queue = app.queue();
    let transformer = app.transformer().await;
    let mut received = Vec::new();
    while received.len() < bodies.len() {
        received.extend(
            queue
                .receive(10, Duration::from_secs(1), Duration::from_secs(30))
                .await
                .unwrap(),
        );
    }
    let known = etl::pipeline::vault_state::VaultState::new(16);
    let epoch: i64 = sqlx::query_scalar("SELECT etl.vault_epoch()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    known.advance(epoch, Vec::new());
    let batch = transformer
        .prepare(
            &received
                .iter()
                .map(|m| m.clone().into_parts().0)
                .collect::<Vec<_>>(),
            etl::pipeline::batch::ClaimKind::MessageIds,
            chrono::Utc::now(),
            &known,
            None,
        )
        .unwrap();
    let written = etl::adapters::postgres::writer::write_batch(&app.pool, &batch)
        .await
        .unwrap();
    let etl::pipeline::batch::Written::Committed(outcome) = written else {
        panic!("the batch was prepared under the current vault epoch: {written:?}");
    };
    assert_eq!(outcome.written, 10);
    // The visibility timeout "expires": the messages come back.
    let entries: Vec<_> = received
        .iter()
        .enumerate()
        .map(|(i, m)| {
            aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(&m.receipt_handle)
                .visibility_timeout(0)
                .build()
                .unwrap()
        })
        .collect();
    app.sqs
        .change_message_visibility_batch()
        .queue_url(&app.queue_url)
        .set_entries(Some(entries))
        .send()
        .await
        .unwrap();

    let (summary, _) = app.drain(&[]).await;
    assert_eq!(summary.written, 0);
    assert_eq!(summary.duplicates_skipped, 10);
    assert_eq!(summary.deleted, 10);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 10);
    assert_eq!(
        app.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        10
    );
    assert_eq!(app.queue_depth().await, 0);
}

/// Service mode (no `--drain`) consumes until SIGTERM, then exits 0 having settled everything:
/// one row per valid message, one quarantine entry per invalid one, nothing left on the queue
/// (neither visible nor in flight), and a summary on stdout that counts exactly that.
#[tokio::test]
async fn service_mode_ingests_until_sigterm_then_exits_cleanly() {
    let app = TestApp::spawn().await;
    let child = app
        .command(&["ingest", "--wait-seconds", "1", "--summary-json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let valid: Vec<String> = (0..25)
        .map(|i| event(&format!("10.2.0.{i}"), &format!("200-00-{i:04}")))
        .collect();
    let invalid = vec!["not json".to_owned(), event("10.2.0.256", "200-00-9999")];
    app.send(&[valid.as_slice(), invalid.as_slice()].concat())
        .await;
    wait_until(
        Duration::from_secs(60),
        "25 rows and 2 quarantined",
        || async {
            app.count("SELECT count(*) FROM user_logins").await == valid.len() as i64
                && app.count("SELECT count(*) FROM etl.quarantine").await == invalid.len() as i64
        },
    )
    .await;
    wait_until(Duration::from_secs(30), "an empty queue", || async {
        app.queue_depth().await == 0
    })
    .await;

    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success(), "exit status {}", output.status);

    // What the run wrote and deleted: each valid message once, each invalid one quarantined
    // under its reason, and an empty queue.
    app.assert_exactly_once(valid.len(), invalid.len()).await;
    for reason in ["not_json", "invalid_ip"] {
        assert_eq!(
            app.count(&format!(
                "SELECT count(*) FROM etl.quarantine WHERE reason = '{reason}'"
            ))
            .await,
            1,
            "{reason}"
        );
    }
    let depth = app.queue().depth().await.unwrap();
    assert_eq!(
        (depth.visible, depth.in_flight),
        (0, 0),
        "visible and in-flight messages after shutdown"
    );

    // The summary printed at shutdown says the same.
    let summary: Summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no JSON summary on stdout at shutdown ({err}): {}",
            String::from_utf8_lossy(&output.stdout)
        )
    });
    let all = (valid.len() + invalid.len()) as u64;
    assert_eq!(summary.received, all, "{summary}");
    assert_eq!(summary.written, valid.len() as u64, "{summary}");
    assert_eq!(summary.quarantined, invalid.len() as u64, "{summary}");
    assert_eq!(
        summary.quarantined_by_reason,
        std::collections::BTreeMap::from([
            ("invalid_ip".to_owned(), 1),
            ("not_json".to_owned(), 1)
        ]),
        "{summary}"
    );
    assert_eq!(summary.deleted, all, "{summary}");
    assert_eq!(
        (
            summary.duplicates_skipped,
            summary.delete_failed,
            summary.write_failures
        ),
        (0, 0, 0),
        "{summary}"
    );
}

#[tokio::test]
async fn ingest_refuses_to_start_without_data_keys() {
    let app = TestApp::spawn_bare().await;
    app.etl_ok(&["migrate"]).await;
    let output = app.etl(&["ingest", "--drain"]).await;
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("etl keys init"), "{stderr}");
}

#[tokio::test]
async fn every_bad_body_is_quarantined_with_its_reason() {
    let app = TestApp::spawn().await;
    let valid = event("10.3.0.1", "300-00-0001");
    let cases: Vec<(String, &str)> = vec![
        ("not json".into(), "not_json"),
        ("[1,2,3]".into(), "not_object"),
        ("\"just a string\"".into(), "not_object"),
        (valid.replace("\"10.3.0.1\"", "42"), "wrong_type"),
        (
            valid.replace("\"10.3.0.1\"", "\"10.3.0.256\""),
            "invalid_ip",
        ),
        (
            valid.replace("\"10.3.0.1\"", "\"1.2.3.4'; DROP TABLE user_logins; --\""),
            "invalid_ip",
        ),
        (
            valid.replace("\"2.3.0\"", "\"2.3.0.1\""),
            "invalid_app_version",
        ),
        (
            valid.replace("\"2.3.0\"", "\"2.1000\""),
            "app_version_out_of_range",
        ),
        (valid.replace("\"RU\"", "\"R\\u0000U\""), "contains_nul"),
        (
            valid.replace("\"android\"", &format!("\"{}\"", "x".repeat(33))),
            "too_long",
        ),
        (valid.replace("\"user_id\"", "\"userid\""), "missing_field"),
        (valid.replace("\"android\"", "\"   \""), "blank_field"),
        (
            valid.replace("{", "{\"ip\": \"10.0.0.9\", "),
            "duplicate_field",
        ),
        (valid.replace("\"10.3.0.1\"", "\"\\ud800\""), "not_json"),
    ];
    let mut bodies: Vec<String> = cases.iter().map(|(body, _)| body.clone()).collect();
    // Valid but unusual: unicode everywhere, SQL text in free-form fields, unknown fields.
    bodies.push(
        valid
            .replace("\"android\"", "\"安卓 📱\"")
            .replace("\"RU\"", "\"'); --\""),
    );
    bodies.push(valid.replacen("{", "{\"extra\": {\"nested\": [1, {\"x\": null}]}, ", 1));
    app.send(&bodies).await;

    let (summary, _) = app.drain(&[]).await;
    assert_eq!(summary.written, 2);
    assert_eq!(summary.quarantined, cases.len() as u64);
    assert_eq!(summary.deleted, bodies.len() as u64);
    let mut expected: HashMap<&str, u64> = HashMap::new();
    for (_, reason) in &cases {
        *expected.entry(reason).or_default() += 1;
    }
    for (reason, n) in expected {
        assert_eq!(
            summary.quarantined_by_reason[reason], n,
            "{reason}: {summary}"
        );
    }
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE device_type = '安卓 📱'")
            .await,
        1
    );
}

#[tokio::test]
async fn a_file_backfill_takes_the_same_path_and_replays_idempotently() {
    let app = TestApp::spawn().await;
    let bodies = crate::helpers::sample_bodies();
    let valid = bodies
        .iter()
        .filter(|b| etl::domain::LoginEvent::parse(b).is_ok())
        .count();
    let file = std::env::temp_dir().join(format!("backfill-{}.jsonl", uuid::Uuid::new_v4()));
    // Blank lines are skipped; CRLF endings are accepted.
    std::fs::write(&file, bodies.join("\r\n") + "\n\n").unwrap();
    let path = file.display().to_string();
    let run = || async {
        let output = app
            .etl_ok(&[
                "ingest",
                "--from-file",
                &path,
                "--summary-json",
                "--batch-size",
                "7",
            ])
            .await;
        serde_json::from_str::<Summary>(&output).unwrap()
    };
    let first = run().await;
    assert_eq!(first.written, valid as u64);
    assert_eq!(first.quarantined, (bodies.len() - valid) as u64);
    let second = run().await;
    assert_eq!(second.written, 0);
    assert_eq!(second.duplicates_skipped, bodies.len() as u64);
    std::fs::remove_file(&file).unwrap();
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins").await,
        valid as i64
    );
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE message_id LIKE 'file:%'")
            .await,
        valid as i64
    );
}
