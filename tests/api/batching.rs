//! Receive and write decoupled: received messages are coalesced into write batches by size and
//! by time, a full pipeline stops receiving, and shutdown writes and deletes what was received.

use std::time::Duration;

use crate::helpers::{event, generated, wait_until, TestApp};

fn bodies(count: usize, prefix: u8) -> Vec<String> {
    (0..count)
        .map(|i| {
            event(
                &format!("10.{prefix}.{}.{}", i / 250, i % 250),
                &format!("{prefix:03}-{:02}-{:04}", i / 10_000, i % 10_000),
            )
        })
        .collect()
}

/// SIGTERM, then the exit status within 30 s.
async fn terminate(child: &mut tokio::process::Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn a_backlog_is_written_in_few_large_transactions() {
    let app = TestApp::spawn().await;
    app.send_many(&bodies(400, 31)).await;
    let (summary, _) = app
        .drain(&["--batch-messages", "400", "--batch-wait", "3s"])
        .await;
    assert_eq!(summary.written, 400);
    app.assert_exactly_once(400, 0).await;
    // Rows committed by one transaction share its xmin.
    let commits = app
        .count("SELECT count(DISTINCT xmin::text) FROM user_logins")
        .await;
    assert!(commits <= 4, "400 messages took {commits} transactions");
}

#[tokio::test]
async fn a_partial_batch_is_written_when_its_wait_passes() {
    let app = TestApp::spawn().await;
    let mut service = app
        .command(&[
            "ingest",
            "--batch-messages",
            "1000",
            "--batch-wait",
            "300ms",
            "--wait-seconds",
            "1",
        ])
        .spawn()
        .unwrap();
    app.send(&bodies(5, 32)).await;
    // The batch never fills: only the wait can write it.
    wait_until(Duration::from_secs(20), "the 5 rows", || async {
        app.count("SELECT count(*) FROM user_logins").await == 5
    })
    .await;
    wait_until(Duration::from_secs(20), "the deletes", || async {
        app.queue_depth().await == 0
    })
    .await;
    assert!(terminate(&mut service).await.success());
    app.assert_exactly_once(5, 0).await;
}

#[tokio::test]
async fn shutdown_writes_and_deletes_what_was_received() {
    let app = TestApp::spawn().await;
    let mut service = app
        .command(&[
            "ingest",
            "--batch-messages",
            "1000",
            "--batch-wait",
            "20s",
            "--visibility-timeout",
            "60",
            "--wait-seconds",
            "1",
        ])
        .spawn()
        .unwrap();
    app.send(&bodies(5, 33)).await;
    wait_until(
        Duration::from_secs(20),
        "the 5 messages received",
        || async {
            let depth = app.queue().depth().await.unwrap();
            depth.visible == 0 && depth.in_flight == 5
        },
    )
    .await;
    // Waiting for its batch to fill, nothing is written yet; shutdown must not wait 20 s for it.
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 0);
    let started = std::time::Instant::now();
    assert!(terminate(&mut service).await.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    app.assert_exactly_once(5, 0).await;
}

#[tokio::test]
async fn receiving_stops_while_the_writers_are_behind() {
    let app = TestApp::spawn().await;
    let (all, valid) = generated(300, 34);
    app.send_many(&all).await;
    // Writes cannot commit while user_logins is locked.
    let blocker = app.lock_user_logins().await;
    let drain = app
        .command(&[
            "ingest",
            "--drain",
            "--summary-json",
            "--receivers",
            "4",
            "--writers",
            "1",
            "--batch-messages",
            "10",
            "--batch-wait",
            "100ms",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "the pipeline to fill", || async {
        app.queue().depth().await.unwrap().in_flight >= 30
    })
    .await;
    // The subject is time passing: receivers that ignored backpressure would take the rest.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let depth = app.queue().depth().await.unwrap();
    // Channel (4 receives), the batch being filled, one queued job and the one being written,
    // each under 20 messages: about 100 at most, of 300.
    assert!(
        depth.in_flight <= 100 && depth.visible >= 200,
        "received past the bound: {depth:?}"
    );
    blocker.rollback().await.unwrap();
    let output = tokio::time::timeout(Duration::from_secs(60), drain.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(output.status.success());
    app.assert_exactly_once(valid, all.len() - valid).await;
}

#[tokio::test]
async fn large_bodies_are_held_within_the_byte_budget_and_written_once() {
    let app = TestApp::spawn().await;
    // 120 KiB bodies (a padding field ingest ignores): one receive of ten is more than the
    // whole budget, which must still let it through, alone.
    let padding = "x".repeat(120 * 1024);
    let bodies: Vec<String> = (0..40)
        .map(|i| {
            let mut body: serde_json::Value =
                serde_json::from_str(&event(&format!("10.61.0.{i}"), &format!("610-00-{i:04}")))
                    .unwrap();
            body["padding"] = serde_json::Value::String(padding.clone());
            body.to_string()
        })
        .collect();
    // One per call: SQS bounds a batch send's total size.
    let queue = app.queue();
    for body in &bodies {
        assert_eq!(
            queue.send_batch(std::slice::from_ref(body)).await.unwrap(),
            0
        );
    }
    let budget = 1024 * 1024;
    let (summary, _) = app
        .drain(&[
            "--max-inflight-bytes",
            "1MiB",
            "--receivers",
            "8",
            "--batch-messages",
            "20",
        ])
        .await;
    app.assert_exactly_once(40, 0).await;
    assert!(
        summary.peak_inflight_bytes > 120 * 1024 && summary.peak_inflight_bytes <= budget,
        "{summary:?}"
    );

    let output = app
        .etl(&["ingest", "--drain", "--max-inflight-bytes", "100KiB"])
        .await;
    crate::helpers::assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("--max-inflight-bytes") && stderr.contains("at least 1MiB"),
        "{stderr}"
    );
}
