//! `etl recovery-service`: the only process that unwraps vault and quarantine keys. Clients need
//! no key and no KMS; every opening is on record before a value is decrypted; each request is
//! opened once, whatever the number of services; replies are for their requester alone.

use std::collections::HashMap;
use std::process::Stdio;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};

use crate::helpers::{assert_exit, event, wait_until, TestApp};
use etl::crypto::ReplyKeyPair;
use etl::domain::{Justification, PiiField};

/// An app with `n` ingested events (ip 10.31.0.i), a recoverer login, and each ip by its mask.
async fn app_with_events(n: usize) -> (TestApp, String, HashMap<String, String>) {
    let app = TestApp::spawn().await;
    let ips: Vec<String> = (1..=n).map(|i| format!("10.31.0.{i}")).collect();
    let bodies: Vec<String> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| event(ip, &format!("310-00-{:04}", i + 1)))
        .collect();
    app.ingest(&bodies).await;
    let (_, url) = app.login_user("etl_recoverer").await;
    let transformer = app.transformer().await;
    let by_mask = ips
        .into_iter()
        .map(|ip| {
            let mask = transformer.masker().digest(PiiField::Ip, &ip).hex();
            (mask.as_str().to_owned(), ip)
        })
        .collect();
    (app, url, by_mask)
}

async fn opening_rows(app: &TestApp) -> i64 {
    app.count(
        "SELECT count(*) FROM recovery.audit_log WHERE kind = 'fetch' AND outcome = 'opening'",
    )
    .await
}

/// The client reaches no KMS (its endpoint is a closed port) and holds no key, yet recovers: the
/// service opened the value and sealed it to the client's one-time key.
#[tokio::test]
async fn a_client_without_kms_recovers_through_the_service() {
    let (app, url, masks) = app_with_events(1).await;
    app.start_recovery_service();
    let mask = masks.keys().next().unwrap();
    let output = app
        .command(&["recover", "--masked-ip", mask, "--reason", "case 1"])
        .env("DATABASE_URL", &url)
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ENDPOINT_URL_KMS", "http://127.0.0.1:9")
        .output()
        .await
        .unwrap();
    assert_exit(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.31.0.1\n");
    assert_eq!(opening_rows(&app).await, 1);
    // Collected replies are gone.
    assert_eq!(app.count("SELECT count(*) FROM recovery.replies").await, 0);
}

/// Without a service, the client gives up after `--wait` with exit 2 and says why; the request
/// is on record, and nothing was opened.
#[tokio::test]
async fn without_a_service_the_client_exits_2_after_its_wait_and_nothing_is_opened() {
    let (app, url, masks) = app_with_events(1).await;
    let mask = masks.keys().next().unwrap();
    let output = app
        .etl_as(
            &url,
            &[
                "recover",
                "--masked-ip",
                mask,
                "--reason",
                "late",
                "--wait",
                "1s",
            ],
        )
        .await;
    assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(
            "no recovery service answered within 1.0 s; is `etl recovery-service` running?"
        ),
        "{stderr}"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM recovery.audit_log WHERE kind = 'recover' AND reason = 'late'"
        )
        .await,
        1
    );
    assert_eq!(opening_rows(&app).await, 0);
    // Withdrawn, on record: no service that starts later opens it for nobody.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM recovery.requests WHERE closed_at IS NOT NULL AND opened_at IS NULL"
        )
        .await,
        1
    );
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind = 'approval' AND outcome = 'cancelled'")
            .await,
        1
    );
}

/// A policy refusal needs no service: the request function answers it at once.
#[tokio::test]
async fn a_policy_refusal_is_answered_without_a_service() {
    let (app, url, masks) = app_with_events(1).await;
    app.etl_ok(&["recover", "policy", "set", "--require-ticket", "true"])
        .await;
    let mask = masks.keys().next().unwrap();
    let output = app
        .etl_as(
            &url,
            &[
                "recover",
                "--masked-ip",
                mask,
                "--reason",
                "no ticket",
                "--wait",
                "20s",
            ],
        )
        .await;
    assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("requires a ticket"), "{stderr}");
    assert_eq!(opening_rows(&app).await, 0);
}

/// The opener's functions check the request's state: a request already opened gives its
/// material to nobody, even to an etl_opener login that opened it.
#[tokio::test]
async fn an_opened_request_gives_its_material_to_nobody_again() {
    let (app, url, masks) = app_with_events(1).await;
    let (_, opener_url) = app.login_user("etl_opener").await;
    let _service = app.recovery_service_as(&opener_url);
    let mask = masks.keys().next().unwrap();
    let output = app
        .etl_as(&url, &["recover", "--masked-ip", mask, "--reason", "once"])
        .await;
    assert_exit(&output, 0);
    let id: i64 = sqlx::query_scalar("SELECT max(id) FROM recovery.requests")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    let mut opener = PgConnection::connect(&opener_url).await.unwrap();
    for sql in [
        format!("SELECT recovery.record_opening({id})"),
        format!("SELECT * FROM recovery.opening_material({id})"),
    ] {
        let refused = sqlx::query(&sql).fetch_all(&mut opener).await;
        assert!(
            matches!(&refused, Err(sqlx::Error::Database(err)) if err.code().as_deref() == Some("55000")),
            "{sql}: {refused:?}"
        );
    }
}

/// Two services, 200 requests from 25 concurrent clients: every request opened exactly once (one
/// opening row each), every value right.
#[tokio::test]
async fn two_services_open_each_of_200_concurrent_requests_once() {
    let (app, url, masks) = app_with_events(20).await;
    let (_, opener_url) = app.login_user("etl_opener").await;
    // One service as an etl_opener login: the role's grants are all it needs.
    let _first = app.recovery_service_as(&opener_url);
    let _second = app.recovery_service_as(&opener_url);
    let pool = PgPoolOptions::new()
        .max_connections(60)
        .connect(&url)
        .await
        .unwrap();
    let why = Justification::parse("load", None, "in the audit log").unwrap();
    let mask_list: Vec<String> = masks.keys().cloned().collect();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let (pool, why, mask) = (
            pool.clone(),
            why.clone(),
            mask_list[i % mask_list.len()].clone(),
        );
        tasks.spawn(async move {
            let recovered = etl::recovery::recover_masks(
                &pool,
                PiiField::Ip,
                std::slice::from_ref(&mask),
                &why,
                etl::recovery::RequestOptions {
                    wait: Duration::from_secs(60),
                    break_glass: false,
                },
            )
            .await
            .unwrap();
            let etl::recovery::Answer::Ready(recovered) = recovered else {
                panic!("no approvals are required here");
            };
            (mask, recovered.into_iter().next().unwrap().value)
        });
        if tasks.len() >= 25 {
            let (mask, value) = tasks.join_next().await.unwrap().unwrap();
            assert_eq!(value.as_ref(), masks.get(&mask));
        }
    }
    while let Some(joined) = tasks.join_next().await {
        let (mask, value) = joined.unwrap();
        assert_eq!(value.as_ref(), masks.get(&mask));
    }
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.requests").await,
        200
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM (SELECT request_id FROM recovery.audit_log \
             WHERE kind = 'fetch' AND outcome = 'opening' GROUP BY request_id \
             HAVING count(*) = 1) once"
        )
        .await,
        200
    );
    assert_eq!(opening_rows(&app).await, 200);
}

/// A service killed (SIGKILL) after it recorded an opening and before it stored a reply: the
/// request is opened later by another service, with an audit row for that opening too, and no
/// value ever left without one.
#[tokio::test]
async fn a_service_killed_while_opening_leaves_the_request_to_the_next_one() {
    let (app, url, masks) = app_with_events(1).await;
    let mask = masks.keys().next().unwrap().clone();
    // A KMS that accepts connections and never answers: the first service hangs on the unwrap,
    // after its opening row is committed.
    let hole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole_url = format!("http://{}", hole.local_addr().unwrap());
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hole.accept().await {
            open.push(stream);
        }
    });
    let mut stuck = app
        .command(&["recovery-service", "--poll", "200ms"])
        .env("AWS_ENDPOINT_URL", &hole_url)
        .env("AWS_ENDPOINT_URL_KMS", &hole_url)
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let client = {
        let command = app
            .command(&[
                "recover",
                "--masked-ip",
                &mask,
                "--reason",
                "crash",
                "--wait",
                "90s",
            ])
            .env("DATABASE_URL", &url)
            .output();
        tokio::spawn(command)
    };
    wait_until(
        Duration::from_secs(30),
        "the stuck service's opening row",
        || async { opening_rows(&app).await == 1 },
    )
    .await;
    stuck.kill().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM recovery.replies").await, 0);
    app.start_recovery_service();
    let output = client.await.unwrap().unwrap();
    assert_exit(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.31.0.1\n");
    assert_eq!(opening_rows(&app).await, 2, "each opening is on record");
    held.abort();
}

/// Row level security: another recoverer sees none of a requester's sealed replies and cannot
/// delete them; the requester can.
#[tokio::test]
async fn another_recoverer_cannot_read_or_delete_someone_elses_replies() {
    let (app, url, masks) = app_with_events(1).await;
    let (_, other_url) = app.login_user("etl_recoverer").await;
    app.start_recovery_service();
    let mask = masks.keys().next().unwrap().clone();
    let keys = ReplyKeyPair::generate();
    let mut requester = PgConnection::connect(&url).await.unwrap();
    let request: i64 =
        sqlx::query_scalar("SELECT recovery.request('ip', $1, 'rls', NULL, $2, false)")
            .bind(vec![mask])
            .bind(keys.public_key().as_slice())
            .fetch_one(&mut requester)
            .await
            .unwrap();
    wait_until(Duration::from_secs(30), "the reply", || async {
        app.count("SELECT count(*) FROM recovery.replies").await == 1
    })
    .await;
    let mut other = PgConnection::connect(&other_url).await.unwrap();
    let seen: i64 = sqlx::query_scalar("SELECT count(*) FROM recovery.replies")
        .fetch_one(&mut other)
        .await
        .unwrap();
    assert_eq!(seen, 0);
    let deleted = sqlx::query("DELETE FROM recovery.replies WHERE request_id = $1")
        .bind(request)
        .execute(&mut other)
        .await
        .unwrap()
        .rows_affected();
    assert_eq!(deleted, 0);
    let own: i64 =
        sqlx::query_scalar("SELECT count(*) FROM recovery.replies WHERE request_id = $1")
            .bind(request)
            .fetch_one(&mut requester)
            .await
            .unwrap();
    assert_eq!(own, 1);
}

/// At debug level the service logs request ids and counts, never a value, a mask's value or a
/// key; its metrics hold counts only.
#[tokio::test]
async fn the_service_logs_nothing_personal_at_debug_level() {
    let (app, url, masks) = app_with_events(2).await;
    let log = std::env::temp_dir().join(format!("etl-opener-{}.log", uuid::Uuid::new_v4()));
    let mut service = app
        .command(&[
            "recovery-service",
            "--poll",
            "200ms",
            "--log-level",
            "debug",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    for mask in masks.keys() {
        let output = app
            .etl_as(&url, &["recover", "--masked-ip", mask, "--reason", "logs"])
            .await;
        assert_exit(&output, 0);
    }
    service.kill().await.unwrap();
    let logs = std::fs::read_to_string(&log).unwrap();
    std::fs::remove_file(&log).unwrap();
    assert!(logs.contains("recovery request opened"), "{logs}");
    for i in 1..=2 {
        assert!(!logs.contains(&format!("10.31.0.{i}")), "an ip in the logs");
        assert!(
            !logs.contains(&format!("310-00-{i:04}")),
            "a device id in the logs"
        );
    }
}

/// A login in etl_recoverer and etl_approver: it may ask, and approve others' requests.
async fn recoverer_and_approver(app: &TestApp) -> (String, String) {
    let (name, url) = app.login_user("etl_recoverer").await;
    sqlx::query(&format!("GRANT etl_approver TO {name}"))
        .execute(&app.pool)
        .await
        .unwrap();
    (name, url)
}

/// `etl recover` with a key directory of the test's own; the JSON answer when it waits.
async fn ask(
    app: &TestApp,
    url: &str,
    key_dir: &std::path::Path,
    mask: &str,
    extra: &[&str],
) -> std::process::Output {
    let mut args = vec!["recover", "--masked-ip", mask, "--reason", "case 7"];
    args.extend_from_slice(extra);
    if !extra.contains(&"--wait") {
        // Short: these requests wait for approvals, and the client leaves them pending.
        args.extend(["--wait", "1s"]);
    }
    app.command(&args)
        .env("DATABASE_URL", url)
        .env("ETL_REQUEST_KEY_DIR", key_dir)
        .output()
        .await
        .unwrap()
}

fn request_id_of(output: &std::process::Output) -> i64 {
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
        panic!(
            "no JSON answer ({err}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert_eq!(answer["state"], "pending_approval", "{answer}");
    answer["request_id"].as_i64().unwrap()
}

fn temp_dir() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("etl-keys-{}", uuid::Uuid::new_v4()))
}

/// With one approval required: the request waits (exit 1, its key kept 0600 for the requester),
/// the requester cannot approve it, another approver does, and the requester collects the value;
/// the kept key is then gone. Every step is an audit row.
#[tokio::test]
async fn a_request_waits_for_an_approval_by_someone_else_then_is_collected() {
    use std::os::unix::fs::PermissionsExt;
    let (app, _, masks) = app_with_events(1).await;
    app.start_recovery_service();
    app.etl_ok(&["recover", "policy", "set", "--approvals", "1"])
        .await;
    let (_, requester) = recoverer_and_approver(&app).await;
    let (_, approver) = app.login_user("etl_approver").await;
    let keys = temp_dir();
    let mask = masks.keys().next().unwrap();
    let output = ask(&app, &requester, &keys, mask, &["--format", "json"]).await;
    assert_exit(&output, 1);
    let id = request_id_of(&output);
    assert!(String::from_utf8_lossy(&output.stderr).contains(&format!("etl recover collect {id}")));
    let kept = keys.join(format!("request-{id}.key"));
    let mode = std::fs::metadata(&kept).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the kept key is the requester's alone");
    assert_eq!(
        opening_rows(&app).await,
        0,
        "nothing opened before the approval"
    );

    let own = app
        .etl_as(
            &requester,
            &["recover", "approve", &id.to_string(), "--reason", "mine"],
        )
        .await;
    assert_exit(&own, 2);
    assert!(String::from_utf8_lossy(&own.stderr).contains("cannot approve"));
    let listed = app
        .etl_as(&approver, &["recover", "pending", "--format", "json"])
        .await;
    assert_exit(&listed, 0);
    let pending: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(pending[0]["id"], id);
    assert_eq!(pending[0]["reason"], "case 7");
    assert!(!String::from_utf8_lossy(&listed.stdout).contains("10.31.0.1"));
    let approved = app
        .etl_as(
            &approver,
            &["recover", "approve", &id.to_string(), "--reason", "checked"],
        )
        .await;
    assert_exit(&approved, 0);

    let collected = app
        .command(&["recover", "collect", &id.to_string()])
        .env("DATABASE_URL", &requester)
        .env("ETL_REQUEST_KEY_DIR", &keys)
        .output()
        .await
        .unwrap();
    assert_exit(&collected, 0);
    assert_eq!(String::from_utf8_lossy(&collected.stdout), "10.31.0.1\n");
    assert!(!kept.exists(), "the kept key is deleted once collected");
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM recovery.audit_log WHERE request_id = {id} AND kind = 'approval' \
             AND outcome = 'approved'"
        ))
        .await,
        1
    );
    assert_eq!(opening_rows(&app).await, 1);
    std::fs::remove_dir_all(&keys).unwrap();
}

/// A denied request is never opened; its requester collects a refusal with the reason (exit 2).
#[tokio::test]
async fn a_denied_request_is_refused_with_the_approvers_reason() {
    let (app, url, masks) = app_with_events(1).await;
    app.start_recovery_service();
    app.etl_ok(&["recover", "policy", "set", "--approvals", "1"])
        .await;
    let (_, approver) = app.login_user("etl_approver").await;
    let keys = temp_dir();
    let mask = masks.keys().next().unwrap();
    let id = request_id_of(&ask(&app, &url, &keys, mask, &["--format", "json"]).await);
    let denied = app
        .etl_as(
            &approver,
            &["recover", "deny", &id.to_string(), "--reason", "no ticket"],
        )
        .await;
    assert_exit(&denied, 0);
    let collected = app
        .command(&["recover", "collect", &id.to_string()])
        .env("DATABASE_URL", &url)
        .env("ETL_REQUEST_KEY_DIR", &keys)
        .output()
        .await
        .unwrap();
    assert_exit(&collected, 2);
    let stderr = String::from_utf8_lossy(&collected.stderr);
    assert!(
        stderr.contains("denied by") && stderr.contains("no ticket"),
        "{stderr}"
    );
    assert_eq!(opening_rows(&app).await, 0);
    let _ = std::fs::remove_dir_all(&keys);
}

/// A request whose approvals do not come within the approval TTL expires: refused, never opened.
#[tokio::test]
async fn an_unapproved_request_expires() {
    let (app, url, masks) = app_with_events(1).await;
    app.start_recovery_service();
    app.etl_ok(&[
        "recover",
        "policy",
        "set",
        "--approvals",
        "2",
        "--approval-ttl",
        "3s",
    ])
    .await;
    let (_, approver) = app.login_user("etl_approver").await;
    let keys = temp_dir();
    let mask = masks.keys().next().unwrap();
    let id = request_id_of(&ask(&app, &url, &keys, mask, &["--format", "json"]).await);
    wait_until(Duration::from_secs(30), "the request to expire", || async {
        let listed = app
            .etl_as(&approver, &["recover", "pending", "--format", "json"])
            .await;
        serde_json::from_slice::<serde_json::Value>(&listed.stdout)
            .map(|pending| pending.as_array().is_some_and(Vec::is_empty))
            .unwrap_or(false)
    })
    .await;
    let late = app
        .etl_as(
            &approver,
            &["recover", "approve", &id.to_string(), "--reason", "late"],
        )
        .await;
    assert_exit(&late, 2);
    let collected = app
        .command(&["recover", "collect", &id.to_string()])
        .env("DATABASE_URL", &url)
        .env("ETL_REQUEST_KEY_DIR", &keys)
        .output()
        .await
        .unwrap();
    assert_exit(&collected, 2);
    assert!(String::from_utf8_lossy(&collected.stderr).contains("expired"));
    assert_eq!(opening_rows(&app).await, 0);
    let _ = std::fs::remove_dir_all(&keys);
}

/// Break-glass skips the approvals, on record; the opening waits for a review, which its
/// requester cannot give and another approver does.
#[tokio::test]
async fn break_glass_opens_at_once_and_waits_for_a_review_by_someone_else() {
    let (app, _, masks) = app_with_events(1).await;
    app.start_recovery_service();
    app.etl_ok(&["recover", "policy", "set", "--approvals", "1"])
        .await;
    let (_, requester) = recoverer_and_approver(&app).await;
    let (_, reviewer) = app.login_user("etl_approver").await;
    let keys = temp_dir();
    let mask = masks.keys().next().unwrap();
    let output = ask(
        &app,
        &requester,
        &keys,
        mask,
        &["--break-glass", "--wait", "30s"],
    )
    .await;
    assert_exit(&output, 0);
    assert_eq!(String::from_utf8_lossy(&output.stdout), "10.31.0.1\n");
    let listed = app
        .etl_as(&reviewer, &["audit", "review", "--format", "json"])
        .await;
    assert_exit(&listed, 0);
    let openings: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    let id = openings[0]["id"].as_i64().unwrap();
    let own = app
        .etl_as(
            &requester,
            &["audit", "review", &id.to_string(), "--reason", "fine"],
        )
        .await;
    assert_exit(&own, 2);
    let reviewed = app
        .etl_as(
            &reviewer,
            &[
                "audit",
                "review",
                &id.to_string(),
                "--reason",
                "incident 12",
            ],
        )
        .await;
    assert_exit(&reviewed, 0);
    let after = app
        .etl_as(&reviewer, &["audit", "review", "--format", "json"])
        .await;
    let openings: serde_json::Value = serde_json::from_slice(&after.stdout).unwrap();
    assert_eq!(openings, serde_json::json!([]));
    assert_eq!(
        app.count(&format!(
            "SELECT count(*) FROM recovery.audit_log WHERE request_id = {id} AND kind = 'approval' \
             AND outcome IN ('break_glass', 'reviewed')"
        ))
        .await,
        2
    );
    let _ = std::fs::remove_dir_all(&keys);
}

/// `/readyz` probes PostgreSQL at most once per interval however often it is called: a flood of
/// calls costs the database one query.
#[tokio::test]
async fn readyz_probes_the_database_once_per_interval() {
    let app = TestApp::spawn().await;
    let addr = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let _service = app
        .command(&["recovery-service", "--poll", "200ms"])
        .env("ETL_METRICS_ADDR", addr.to_string())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    wait_until(Duration::from_secs(30), "/readyz answers ready", || async {
        matches!(
            crate::helpers::http_get(addr, "/readyz").await,
            Ok((200, _))
        )
    })
    .await;
    let probes = || async {
        let (_, metrics) = crate::helpers::http_get(addr, "/metrics").await.unwrap();
        metrics
            .lines()
            .find_map(|line| line.strip_prefix("etl_readiness_probes_total "))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no etl_readiness_probes_total in:\n{metrics}"))
    };
    let before = probes().await;
    for _ in 0..30 {
        let (status, body) = crate::helpers::http_get(addr, "/readyz").await.unwrap();
        assert_eq!((status, body.as_str()), (200, "ready\n"));
    }
    // 30 calls within a few seconds: at most one new probe (when the interval turns over).
    let after = probes().await;
    assert!(
        after - before <= 1.0,
        "{} probes for 30 calls",
        after - before
    );
}
