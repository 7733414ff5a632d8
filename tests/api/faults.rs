//! Nothing lost, nothing duplicated, whatever fails: crashes, outages, slow batches, concurrency,
//! and rows the database rejects.

use std::time::Duration;

use rand::Rng;

use crate::helpers::{event, generated, socket_addr_of, wait_until, TcpProxy, TestApp};
use etl::pipeline::Summary;

fn sigkill(child: &tokio::process::Child) {
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
}

#[tokio::test]
async fn sigkill_at_random_moments_loses_and_duplicates_nothing() {
    let app = TestApp::spawn().await;
    let (bodies, valid) = generated(3000, 11);
    app.send_many(&bodies).await;

    let mut rng = rand::rng();
    for _ in 0..12 {
        let mut child = app
            .command(&["ingest", "--visibility-timeout", "2", "--wait-seconds", "1"])
            .spawn()
            .unwrap();
        tokio::time::sleep(Duration::from_millis(rng.random_range(150..900))).await;
        sigkill(&child);
        child.wait().await.unwrap();
    }
    let (summary, _) = app.drain(&["--visibility-timeout", "2"]).await;
    assert!(summary.received > 0);
    app.assert_exactly_once(valid, bodies.len() - valid).await;
}

/// Which dependency goes down mid-drain.
enum Outage {
    Database,
    Sqs,
}

/// Drains 2000 messages while `outage` cuts the connections to a dependency for 4 seconds, once
/// the first rows are in: the drain must wait it out and end with exact counts.
async fn drain_through(outage: Outage, seed: u64) {
    let app = TestApp::spawn().await;
    let (bodies, valid) = generated(2000, seed);
    app.send_many(&bodies).await;
    let mut drain = app.command(&[
        "ingest",
        "--drain",
        "--summary-json",
        "--receivers",
        "2",
        "--writers",
        "2",
        "--visibility-timeout",
        "5",
    ]);
    let proxy = match outage {
        Outage::Database => {
            let target = socket_addr_of(&app.database_url);
            let proxy = TcpProxy::start(target).await;
            let proxied = app.database_url.replace(
                &format!(":{}/", target.port()),
                &format!(":{}/", proxy.port),
            );
            drain.env("DATABASE_URL", proxied);
            proxy
        }
        Outage::Sqs => {
            let endpoint = std::env::var("AWS_ENDPOINT_URL").unwrap();
            let proxy = TcpProxy::start(socket_addr_of(&endpoint)).await;
            let proxied = format!("http://127.0.0.1:{}", proxy.port);
            drain
                .env("ETL_QUEUE_URL", app.queue_url.replace(&endpoint, &proxied))
                .env("AWS_ENDPOINT_URL", proxied);
            proxy
        }
    };
    let drain = drain
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(60), "the first rows", || async {
        app.count("SELECT count(*) FROM user_logins").await > 0
    })
    .await;
    proxy.pause();
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.resume();
    let output = tokio::time::timeout(Duration::from_secs(240), drain.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    app.assert_exactly_once(valid, bodies.len() - valid).await;
}

#[tokio::test]
async fn a_database_outage_mid_drain_is_waited_out() {
    drain_through(Outage::Database, 12).await;
}

#[tokio::test]
async fn an_sqs_outage_mid_drain_is_waited_out() {
    drain_through(Outage::Sqs, 13).await;
}

#[tokio::test]
async fn four_consumers_share_a_queue_without_duplicates() {
    let app = TestApp::spawn().await;
    let (bodies, valid) = generated(3000, 14);
    app.send_many(&bodies).await;
    let mut drains = Vec::new();
    for _ in 0..4 {
        drains.push(
            app.command(&[
                "ingest",
                "--drain",
                "--summary-json",
                "--receivers",
                "2",
                "--writers",
                "2",
            ])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        );
    }
    let mut received = 0;
    for drain in drains {
        let output = drain.wait_with_output().await.unwrap();
        assert!(output.status.success());
        let summary: Summary = serde_json::from_slice(&output.stdout).unwrap();
        received += summary.received;
    }
    assert!(received >= bodies.len() as u64);
    app.assert_exactly_once(valid, bodies.len() - valid).await;
}

#[tokio::test]
async fn a_slow_batch_keeps_its_messages_hidden_with_a_heartbeat() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = (0..5)
        .map(|i| event(&format!("10.7.0.{i}"), &format!("700-00-{i:04}")))
        .collect();
    app.send(&bodies).await;
    // Hold user_logins locked so the batch cannot commit for longer than its visibility timeout.
    let blocker = app.lock_user_logins().await;
    let drain = app
        .command(&[
            "ingest",
            "--drain",
            "--summary-json",
            "--receivers",
            "1",
            "--writers",
            "1",
            "--visibility-timeout",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(30),
        "the batch to be received",
        || async {
            let depth = app.queue().depth().await.unwrap();
            depth.visible == 0 && depth.in_flight == 5
        },
    )
    .await;
    // Two and a half visibility timeouts later, another consumer still gets nothing.
    let rival = app.queue();
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let got = rival
            .receive(10, Duration::from_secs(1), Duration::from_secs(30))
            .await
            .unwrap();
        assert!(
            got.is_empty(),
            "a message in flight was handed to another consumer"
        );
    }
    blocker.rollback().await.unwrap();
    let output = drain.wait_with_output().await.unwrap();
    let summary: Summary = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(summary.written, 5);
    app.assert_exactly_once(5, 0).await;
}

#[tokio::test]
async fn a_row_the_database_rejects_is_quarantined_and_the_rest_written() {
    let app = TestApp::spawn().await;
    // A rule the validator does not know, standing for any row-level database rejection.
    sqlx::query(
        "ALTER TABLE user_logins ADD CONSTRAINT test_no_explode CHECK (device_type <> 'explode')",
    )
    .execute(&app.pool)
    .await
    .unwrap();
    let mut bodies: Vec<String> = (0..9)
        .map(|i| event(&format!("10.8.0.{i}"), &format!("800-00-{i:04}")))
        .collect();
    bodies.insert(
        4,
        event("10.8.0.99", "800-00-0099").replace("\"android\"", "\"explode\""),
    );
    app.send(&bodies).await;
    let (summary, _) = app.drain(&["--writers", "1"]).await;
    assert_eq!(summary.written, 9);
    assert_eq!(summary.quarantined_by_reason["database_rejected"], 1);
    let detail: String = sqlx::query_scalar("SELECT detail FROM etl.quarantine")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(
        detail.contains("23514") && detail.contains("test_no_explode"),
        "{detail}"
    );
    app.assert_exactly_once(9, 1).await;
}
