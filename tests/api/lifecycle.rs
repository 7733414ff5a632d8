//! The data lifecycle: `etl forget`, `etl export`, `etl retention`, `etl quarantine replay` and
//! `purge`, each on the real stack, and the vault epoch that keeps erasure and retention from
//! leaving a row whose mask has no vault entry.

use std::sync::Arc;
use std::time::Duration;

use etl::adapters::postgres::writer::write_batch;
use etl::domain::Message;
use etl::keys::LiveKeys;
use etl::pipeline::batch::{ClaimKind, Written};
use etl::pipeline::{Committer, Stats};
use serde_json::Value;

use crate::helpers::{assert_exit, TestApp};
use etl::pipeline::Summary;

/// A valid body of this user.
fn body(user_id: &str, ip: &str, device_id: &str, locale: &str) -> String {
    serde_json::json!({
        "user_id": user_id,
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": ip,
        "locale": locale,
        "device_id": device_id,
    })
    .to_string()
}

/// Rows whose masked_ip or masked_device_id has no vault entry.
const DANGLING: &str = "SELECT count(*) FROM user_logins u \
     WHERE NOT EXISTS (SELECT 1 FROM vault.entries e \
                       WHERE e.field = 'ip' AND e.mask = decode(u.masked_ip, 'hex')) \
        OR NOT EXISTS (SELECT 1 FROM vault.entries e \
                       WHERE e.field = 'device_id' AND e.mask = decode(u.masked_device_id, 'hex'))";

/// Every audit row as text, to search for values that must not be there.
async fn audit_text(app: &TestApp) -> String {
    let rows: Vec<String> = sqlx::query_scalar("SELECT a::text FROM recovery.audit_log a")
        .fetch_all(&app.pool)
        .await
        .unwrap();
    rows.join("\n")
}

#[tokio::test]
async fn forget_erases_a_user_keeps_shared_entries_suppresses_and_is_idempotent() {
    let app = TestApp::spawn().await;
    let (alice, bob) = ("alice-7d1e", "bob-3c9a");
    app.ingest(&[
        body(alice, "10.20.0.1", "200-00-0001", "RU"),
        body(alice, "10.20.0.2", "200-00-0002", "RU"),
        // Shares alice's first ip: its vault entry must stay.
        body(bob, "10.20.0.1", "200-00-0003", "PT"),
        // Alice's, quarantined (not an ip): it goes with her.
        body(alice, "not-an-ip", "200-00-0004", "RU"),
    ])
    .await;
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 5);
    let (_, privacy) = app.login_user("etl_privacy").await;
    let forget = async |extra: &[&str]| {
        let mut args = vec![
            "forget",
            "--user-id",
            alice,
            "--reason",
            "GDPR art. 17 request",
            "--ticket",
            "PRIV-12",
        ];
        args.extend_from_slice(extra);
        app.etl_as(&privacy, &args).await
    };

    let dry = forget(&["--dry-run", "--format", "json"]).await;
    assert_exit(&dry, 0);
    let report: Value = serde_json::from_slice(&dry.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["totals"]["user_logins"], 2);
    assert_eq!(report["totals"]["vault_entries"], 3);
    assert_eq!(report["totals"]["quarantined"], 1);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users").await,
        0
    );

    let done = forget(&["--format", "json"]).await;
    assert_exit(&done, 0);
    let report: Value = serde_json::from_slice(&done.stdout).unwrap();
    let user = &report["users"][0];
    assert_eq!(user["source"], "--user-id");
    assert_eq!(user["user_logins"], 2);
    assert_eq!(
        user["vault_entries"], 3,
        "alice's second ip and both devices"
    );
    assert_eq!(user["quarantined"], 1);
    assert_eq!(user["newly_suppressed"], true);
    let hash = user["user_hash"].as_str().unwrap().to_owned();
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE user_id = 'alice-7d1e'")
            .await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(
        app.count(DANGLING).await,
        0,
        "bob's masks keep their entries"
    );
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 2);
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
    let receipt: (String, String, Option<String>, String) = sqlx::query_as(
        "SELECT subject, reason, ticket, detail FROM recovery.audit_log WHERE kind = 'erasure'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(receipt.0, hash);
    assert_eq!(receipt.1, "GDPR art. 17 request");
    assert_eq!(receipt.2.as_deref(), Some("PRIV-12"));
    assert_eq!(
        receipt.3,
        "user_logins=2 vault_entries=3 quarantine=1 domain_rows=0 suppressed=new"
    );

    // Twice: nothing changes, and it says so.
    let audit_rows = app.count("SELECT count(*) FROM recovery.audit_log").await;
    let again = forget(&[]).await;
    assert_exit(&again, 1);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("--user-id: already forgotten; nothing changed"),
        "{stdout}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log").await,
        audit_rows
    );

    // A later delivery of her events (the same body sent again, and a new one) is dropped.
    let (summary, logs) = {
        app.send(&[
            body(alice, "10.20.0.1", "200-00-0001", "RU"),
            body(alice, "10.20.0.9", "200-00-0009", "RU"),
            body(alice, "still-not-an-ip", "200-00-0010", "RU"),
        ])
        .await;
        let output = app
            .command(&["ingest", "--drain", "--summary-json"])
            .env("ETL_LOG", "debug")
            .output()
            .await
            .unwrap();
        assert_exit(&output, 0);
        (
            serde_json::from_slice::<Summary>(&output.stdout).unwrap(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    assert_eq!(summary.forgotten_skipped, 3, "{summary}");
    assert_eq!(summary.written, 0);
    assert_eq!(summary.quarantined, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE user_id = 'alice-7d1e'")
            .await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(app.queue_depth().await, 0);

    // No raw id, ip or device id anywhere it could leak.
    let audit = audit_text(&app).await;
    for secret in [
        alice,
        "10.20.0.1",
        "10.20.0.2",
        "200-00-0001",
        "200-00-0004",
    ] {
        assert!(!audit.contains(secret), "{secret} in the audit log");
        assert!(!logs.contains(secret), "{secret} in ingest's logs");
        for output in [&dry, &done, &again] {
            assert!(!String::from_utf8_lossy(&output.stderr).contains(secret));
            assert!(!String::from_utf8_lossy(&output.stdout).contains(secret));
        }
    }
    app.etl_ok(&["audit", "verify"]).await;
}

#[tokio::test]
async fn forget_takes_user_ids_from_a_file_and_only_privacy_members_may() {
    let app = TestApp::spawn().await;
    app.ingest(&[
        body("u-1", "10.21.0.1", "210-00-0001", "RU"),
        // Shares u-1's ip: erased in the same call, the entry goes, counted for the later user.
        body("u-2", "10.21.0.1", "210-00-0002", "RU"),
        body("u-3", "10.21.0.3", "210-00-0003", "RU"),
    ])
    .await;
    let file = std::env::temp_dir().join(format!("etl-users-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, "u-1\n\nu-2\nnobody-seen\n").unwrap();
    let file = file.to_str().unwrap();
    let args = ["forget", "--from-file", file, "--reason", "erasure batch 7"];

    let (_, analyst) = app.login_user("etl_analyst").await;
    let denied = app.etl_as(&analyst, &args).await;
    assert_exit(&denied, 2);
    let stderr = String::from_utf8_lossy(&denied.stderr);
    assert!(stderr.contains("etl_privacy"), "{stderr}");

    let (_, privacy) = app.login_user("etl_privacy").await;
    let output = app.etl_as(&privacy, &args).await;
    std::fs::remove_file(file).unwrap();
    assert_exit(&output, 0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("line 1: erased user_logins=1 vault_entries=1 "),
        "{stdout}"
    );
    assert!(
        stdout.contains("line 3: erased user_logins=1 vault_entries=2 "),
        "{stdout}"
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries").await,
        2,
        "u-3's"
    );
    assert!(
        stdout.contains(
            "line 4: nothing found (never seen, or expired); added to the suppression list"
        ),
        "{stdout}"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users").await,
        3
    );
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind = 'erasure'")
            .await,
        3
    );
    // The privacy role reads nothing else.
    let mut connection = <sqlx::PgConnection as sqlx::Connection>::connect(&privacy)
        .await
        .unwrap();
    for sql in [
        "SELECT count(*) FROM user_logins",
        "SELECT count(*) FROM vault.entries",
        "SELECT count(*) FROM etl.quarantine",
    ] {
        assert!(
            sqlx::query(sql).fetch_one(&mut connection).await.is_err(),
            "{sql}"
        );
    }
    let keys: i64 = sqlx::query_scalar("SELECT count(*) FROM keyring.data_keys")
        .fetch_one(&mut connection)
        .await
        .unwrap();
    assert_eq!(keys, 1, "the mask key's row only");
}

/// Erasure is idempotent across re-masks: a user forgotten under mask key version 1 is still
/// "already forgotten" once version 2 is active (exit 1, no second receipt). A dry run reports
/// what the real run then does; a never-seen id is suppressed, and its receipt says nothing was
/// found.
#[tokio::test]
async fn forget_refuses_hashes_made_without_the_user_key() {
    let app = TestApp::spawn().await;
    app.ingest(&[body("erin-1", "10.23.1.1", "231-00-0001", "RU")])
        .await;
    use sqlx::Connection;
    let (_, privacy) = app.login_user("etl_privacy").await;
    let mut conn = sqlx::PgConnection::connect(&privacy).await.unwrap();
    // A login of etl_privacy without KMS access cannot know the key check; a hash made with
    // another key (or a guess) comes with a check that does not match.
    let refused = sqlx::query(
        "SELECT * FROM etl.forget(ARRAY['erin-1'], ARRAY[$1], 1, $2, 'x', NULL, '{}', '{}')",
    )
    .bind(vec![5u8; 32])
    .bind(vec![6u8; 32])
    .execute(&mut conn)
    .await
    .unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the hashes were not made with user key version 1"),
        "{refused}"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users").await,
        0
    );
    // Nor can it read the check: it reads the wrapped user keys, not the column of their checks.
    let denied = sqlx::query("SELECT key_check FROM keyring.data_keys")
        .fetch_all(&mut conn)
        .await
        .unwrap_err();
    assert!(
        matches!(&denied, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501")),
        "{denied}"
    );
    let purposes: Vec<String> = sqlx::query_scalar("SELECT purpose FROM keyring.data_keys")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    assert_eq!(
        purposes,
        ["user"],
        "etl_privacy sees only the user key rows"
    );
}

#[tokio::test]
async fn forget_after_a_user_key_rotation_knows_the_user_is_already_forgotten() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[
        body("carol-1", "10.23.0.1", "230-00-0001", "RU"),
        body("carol-1", "10.23.0.2", "230-00-0002", "RU"),
        body("dave-2", "10.23.0.3", "230-00-0003", "RU"),
    ])
    .await;
    let (_, privacy) = app.login_user("etl_privacy").await;
    let forget = async |user: &str, extra: &[&str]| {
        let mut args = vec!["forget", "--user-id", user, "--reason", "art. 17"];
        args.extend_from_slice(extra);
        app.etl_as(&privacy, &args).await
    };
    let dry = forget("carol-1", &["--dry-run"]).await;
    assert_exit(&dry, 0);
    let dry_out = String::from_utf8_lossy(&dry.stdout).into_owned();
    assert!(!dry_out.contains("receipt"), "{dry_out}");
    let done = forget("carol-1", &[]).await;
    assert_exit(&done, 0);
    let done_out = String::from_utf8_lossy(&done.stdout).into_owned();
    assert_eq!(
        dry_out.replace("would erase", "erased").lines().next(),
        done_out.split(" (receipt").next(),
        "the dry run's figures are the real run's"
    );
    assert!(done_out.contains("1 user: user_logins=2"), "{done_out}");
    assert_eq!(
        dry_out
            .lines()
            .last()
            .map(|l| l.replace(" (dry run: nothing changed)", "")),
        done_out.lines().last().map(str::to_owned),
        "the dry run's totals are the real run's"
    );

    app.etl_ok(&["keys", "rotate", "--purpose", "user"]).await;
    // Suppressed under version 1, recognised by a process that hashes new ones with version 2.
    app.ingest(&[body("carol-1", "10.23.0.9", "230-00-0009", "RU")])
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE user_id = 'carol-1'")
            .await,
        0
    );
    let receipts = "SELECT count(*) FROM recovery.audit_log WHERE kind = 'erasure'";
    assert_eq!(app.count(receipts).await, 1);
    let again = forget("carol-1", &[]).await;
    assert_exit(&again, 1);
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("--user-id: already forgotten; nothing changed"),
        "{stdout}"
    );
    assert_eq!(app.count(receipts).await, 1, "no second receipt");
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users").await,
        1
    );

    let never = forget("nobody-ever", &[]).await;
    assert_exit(&never, 0);
    let stdout = String::from_utf8_lossy(&never.stdout);
    assert!(
        stdout.contains("nothing found (never seen, or expired)"),
        "{stdout}"
    );
    let detail: String = sqlx::query_scalar(
        "SELECT detail FROM recovery.audit_log WHERE kind = 'erasure' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(detail, "nothing found; suppressed=new");
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users WHERE user_key_version = 2")
            .await,
        1,
        "new erasures hash with the newest user key version"
    );
}

/// The guarantee itself, step by step: a batch prepared while the vault held an entry, committed
/// after an erasure deleted it, must not commit a row whose mask has no entry.
#[tokio::test]
async fn a_batch_prepared_before_an_erasure_is_prepared_again_not_committed_dangling() {
    let app = TestApp::spawn().await;
    app.ingest(&[body("gone-1", "10.22.0.1", "220-00-0001", "RU")])
        .await;
    let keys = Arc::new(LiveKeys::fixed(app.transformer().await));
    let transformer = keys.current();
    let committer = Committer::new(app.pool.clone(), keys, Arc::new(Stats::default()), 10);
    let epoch: i64 = sqlx::query_scalar("SELECT etl.vault_epoch()")
        .fetch_one(&app.pool)
        .await
        .unwrap();
    committer.vault().advance(epoch, Vec::new());
    // Another user's event with the same ip and device: known to be in the vault, so the batch
    // carries no vault entry for them.
    let message = Message {
        id: "m-kept".into(),
        body: body("kept-1", "10.22.0.1", "220-00-0001", "RU"),
        sent_timestamp: None,
        receive_count: Some(1),
        line: None,
    };
    let masker = transformer.masker();
    committer.vault().insert_committed(
        epoch,
        [
            (
                etl::domain::PiiField::Ip,
                masker.digest(etl::domain::PiiField::Ip, "10.22.0.1"),
            ),
            (
                etl::domain::PiiField::DeviceId,
                masker.digest(etl::domain::PiiField::DeviceId, "220-00-0001"),
            ),
        ],
    );
    let batch = transformer
        .prepare(
            std::slice::from_ref(&message),
            ClaimKind::MessageIds,
            chrono::Utc::now(),
            committer.vault(),
            None,
        )
        .unwrap();
    assert!(batch.vault.is_empty());

    // The erasure of the only user of that ip and device deletes their entries.
    let user_key = transformer.user_keys().newest();
    let hash = user_key.user_hash("gone-1");
    let mut tx = app.pool.begin().await.unwrap();
    sqlx::query("SELECT * FROM etl.forget($1, $2, 1, $3, 'test', NULL, '{}', '{}')")
        .bind(vec!["gone-1"])
        .bind(vec![hash.as_bytes().to_vec()])
        .bind(user_key.key_check().to_vec())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 0);

    let written = write_batch(&app.pool, &batch).await.unwrap();
    assert!(
        matches!(written, Written::Stale { epoch: e } if e > epoch),
        "{written:?}"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 0);

    // Through the committer, the batch is prepared again and its entries inserted again.
    committer
        .commit(&[message], ClaimKind::MessageIds)
        .await
        .unwrap();
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(app.count(DANGLING).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 2);
}

#[tokio::test]
async fn forget_beside_a_running_ingest_leaves_exact_counts_and_no_dangling_mask() {
    let app = TestApp::spawn().await;
    let app = Arc::new(app);
    // Few values shared by many users, so erased users' entries are often about to be used.
    let users: Vec<String> = (0..20).map(|i| format!("user-{i:02}")).collect();
    let forgotten: Vec<&str> = users[..5].iter().map(String::as_str).collect();
    let bodies: Vec<String> = (0..3000)
        .map(|i| {
            body(
                &users[i % users.len()],
                &format!("10.23.0.{}", i % 7),
                &format!("230-00-{:04}", i % 11),
                "RU",
            )
        })
        .collect();
    let kept = bodies
        .iter()
        .enumerate()
        .filter(|(i, _)| i % users.len() >= 5)
        .count() as i64;
    app.send_many(&bodies).await;
    let drain = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.command(&[
                "ingest",
                "--drain",
                "--summary-json",
                "--writers",
                "4",
                "--batch-messages",
                "25",
            ])
            .output()
            .await
            .unwrap()
        })
    };
    // Erase the five users again and again while the drain runs: each erasure deletes the
    // entries their rows were the last to use, under the writers' feet.
    let transformer = app.transformer().await;
    let user_key = transformer.user_keys().newest();
    let hashes: Vec<Vec<u8>> = forgotten
        .iter()
        .map(|u| user_key.user_hash(u).as_bytes().to_vec())
        .collect();
    let mut erasures = 0;
    while !drain.is_finished() {
        sqlx::query("SELECT * FROM etl.forget($1, $2, 1, $3, 'beside ingest', NULL, '{}', '{}')")
            .bind(&forgotten)
            .bind(&hashes)
            .bind(user_key.key_check().to_vec())
            .execute(&app.pool)
            .await
            .unwrap();
        erasures += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let output = drain.await.unwrap();
    assert_exit(&output, 0);
    let summary: Summary = serde_json::from_slice(&output.stdout).unwrap();
    // Rows committed before an erasure of their user were deleted by it; a last erasure takes
    // those committed after the one before.
    sqlx::query("SELECT * FROM etl.forget($1, $2, 1, $3, 'after ingest', NULL, '{}', '{}')")
        .bind(&forgotten)
        .bind(&hashes)
        .bind(user_key.key_check().to_vec())
        .execute(&app.pool)
        .await
        .unwrap();
    assert!(
        erasures > 1,
        "the drain ended before any erasure ran beside it"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, kept);
    assert_eq!(
        app.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        kept
    );
    assert_eq!(app.count(DANGLING).await, 0);
    let settled = summary.written + summary.forgotten_skipped + summary.duplicates_skipped;
    assert_eq!(settled, bodies.len() as u64, "{summary}");
    assert_eq!(app.queue_depth().await, 0);
}

#[tokio::test]
async fn export_returns_every_row_of_a_user_with_values_on_record() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[
        body("subject-1", "10.24.0.1", "240-00-0001", "RU"),
        body("subject-1", "10.24.0.2", "240-00-0001", "PT"),
        body("other-1", "10.24.0.3", "240-00-0003", "RU"),
    ])
    .await;
    let (_, recoverer) = app.login_user("etl_recoverer").await;
    let args = [
        "export",
        "--user-id",
        "subject-1",
        "--reason",
        "subject access request",
        "--ticket",
        "DSAR-4",
    ];
    let output = app.etl_as(&recoverer, &args).await;
    assert_exit(&output, 0);
    let rows: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(rows.len(), 2);
    let mut ips: Vec<&str> = rows.iter().map(|r| r["ip"].as_str().unwrap()).collect();
    ips.sort_unstable();
    assert_eq!(ips, ["10.24.0.1", "10.24.0.2"]);
    assert!(rows.iter().all(|r| r["device_id"] == "240-00-0001"));
    assert!(rows.iter().all(|r| r["user_id"] == "subject-1"));
    // One audit row per mask: two ips and one device.
    assert_eq!(
        app.count(
            "SELECT count(*) FROM recovery.audit_log WHERE kind = 'recover' \
             AND reason = 'subject access request' AND ticket = 'DSAR-4'"
        )
        .await,
        3
    );
    let mut csv_args = args.to_vec();
    csv_args.extend(["--format", "csv"]);
    let output = app.etl_as(&recoverer, &csv_args).await;
    assert_exit(&output, 0);
    let csv = String::from_utf8(output.stdout).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next(),
        Some(
            "user_id,create_date,device_type,ip,device_id,locale,app_version,masked_ip,\
             masked_device_id,message_id"
        )
    );
    assert_eq!(lines.count(), 2);

    // The id from stdin, kept out of `ps` and shell history; and with spaces it is another id.
    for (stdin, rows) in [("subject-1\n", 2), (" subject-1 \n", 0)] {
        let mut child = app
            .command(&[
                "export",
                "--from-file",
                "-",
                "--reason",
                "subject access request",
            ])
            .env("DATABASE_URL", &recoverer)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use tokio::io::AsyncWriteExt;
        let mut input = child.stdin.take().unwrap();
        input.write_all(stdin.as_bytes()).await.unwrap();
        drop(input);
        let output = child.wait_with_output().await.unwrap();
        if rows == 0 {
            assert_exit(&output, 1);
        } else {
            assert_exit(&output, 0);
            let exported: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
            assert_eq!(exported.len(), rows);
        }
    }

    let none = app
        .etl_as(
            &recoverer,
            &[
                "export",
                "--user-id",
                "nobody",
                "--reason",
                "subject access request",
            ],
        )
        .await;
    assert_exit(&none, 1);
    let (_, analyst) = app.login_user("etl_analyst").await;
    assert_exit(&app.etl_as(&analyst, &args).await, 2);

    // Each read of a person's rows is on record first, the person named by a keyed hash.
    let accesses: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT subject, outcome, detail FROM recovery.audit_log \
         WHERE kind = 'subject_access' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(accesses.len(), 5, "{accesses:?}");
    let subject = &accesses[0].0;
    assert!(
        subject.starts_with("user:") && subject.len() == 5 + 64,
        "{subject}"
    );
    assert_eq!(accesses[1].0, *subject, "the same person, the same name");
    assert_eq!(accesses[2].0, *subject);
    assert_ne!(
        accesses[3].0, *subject,
        "an id with spaces is another person"
    );
    assert_eq!(
        (accesses[4].1.as_str(), accesses[4].2.as_str()),
        ("not_found", "user_logins=0")
    );
    assert!(accesses.iter().all(|(s, _, _)| !s.contains("subject")));
    // Under the recovery policy: without the ticket it requires, refused before any read.
    app.etl_ok(&["recover", "policy", "set", "--require-ticket", "true"])
        .await;
    let refused = app
        .etl_as(
            &recoverer,
            &["export", "--user-id", "subject-1", "--reason", "no ticket"],
        )
        .await;
    assert_exit(&refused, 2);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("subject access was refused: the recovery policy requires a ticket"),
        "{stderr}"
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM recovery.audit_log \
             WHERE kind = 'subject_access' AND outcome = 'refused'"
        )
        .await,
        1,
        "the refusal is on record"
    );
    // The rows come only after an access row committed by an earlier transaction: one written
    // and read in the same transaction, then rolled back, reads nothing.
    {
        use sqlx::Connection;
        let mut connection = sqlx::PgConnection::connect(&recoverer).await.unwrap();
        let mut tx = connection.begin().await.unwrap();
        let (access,): (i64,) = sqlx::query_as(
            "SELECT access_id FROM recovery.subject_access('subject-1', 'peek', 'T-1')",
        )
        .fetch_one(&mut *tx)
        .await
        .unwrap();
        let read = sqlx::query("SELECT * FROM recovery.subject_rows($1, 'subject-1')")
            .bind(access)
            .fetch_all(&mut *tx)
            .await;
        assert!(read.is_err(), "rows read in the access's own transaction");
    }
    app.etl_ok(&["audit", "verify"]).await;
}

#[tokio::test]
async fn retention_deletes_what_expired_beside_a_running_ingest_and_never_the_audit_log() {
    let app = Arc::new(TestApp::spawn().await);
    app.start_recovery_service();
    app.ingest(&[
        body("old-1", "10.25.0.1", "250-00-0001", "RU"),
        body("old-2", "10.25.0.2", "250-00-0002", "RU"),
        // Shares old-1's ip, and is recent: that entry stays.
        body("new-1", "10.25.0.1", "250-00-0003", "RU"),
        "not json".into(),
    ])
    .await;
    // Age the old rows, their vault entries, the quarantine and the claims.
    for sql in [
        "UPDATE user_logins SET create_date = current_date - 40 WHERE user_id LIKE 'old-%'",
        "UPDATE vault.entries SET first_seen = now() - interval '40 days'",
        "UPDATE etl.quarantine SET received_at = now() - interval '40 days'",
        "UPDATE etl.processed_messages SET processed_at = now() - interval '40 days'",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    let refused = app.etl(&["retention", "set", "--claims", "7"]).await;
    assert_exit(&refused, 2);
    assert!(String::from_utf8_lossy(&refused.stderr).contains("14 days"));
    app.etl_ok(&[
        "retention",
        "set",
        "--logins",
        "30",
        "--quarantine",
        "30",
        "--claims",
        "14",
    ])
    .await;
    let shown: Value =
        serde_json::from_str(&app.etl_ok(&["retention", "show", "--format", "json"]).await)
            .unwrap();
    assert_eq!(shown["logins_days"], 30);
    assert_eq!(shown["claims_days"], 14);

    let dry: Value = serde_json::from_str(
        &app.etl_ok(&["retention", "apply", "--dry-run", "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(dry["user_logins"], 2);
    assert_eq!(dry["quarantine"], 1);
    assert_eq!(dry["processed_messages"], 4);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 3);

    // New messages are ingested while the pass runs.
    let fresh: Vec<String> = (0..400)
        .map(|i| body(&format!("fresh-{i}"), "10.25.0.1", "250-00-0002", "RU"))
        .collect();
    app.send_many(&fresh).await;
    let drain = {
        let app = Arc::clone(&app);
        tokio::spawn(async move { app.drain(&["--batch-messages", "20"]).await.0 })
    };
    let audit_before = app.count("SELECT count(*) FROM recovery.audit_log").await;
    let metrics = std::env::temp_dir().join(format!("etl-retention-{}.prom", uuid::Uuid::new_v4()));
    let pass: Value = serde_json::from_str(
        &app.etl_ok(&[
            "retention",
            "apply",
            "--format",
            "json",
            "--metrics-file",
            metrics.to_str().unwrap(),
        ])
        .await,
    )
    .unwrap();
    let exposition = std::fs::read_to_string(&metrics).unwrap();
    std::fs::remove_file(&metrics).unwrap();
    assert!(
        exposition.contains("etl_retention_deleted_rows{table=\"user_logins\"} 2\n"),
        "{exposition}"
    );
    assert!(exposition.contains("etl_retention_last_success_timestamp_seconds "));
    let summary = drain.await.unwrap();
    assert_eq!(summary.written, 400);
    assert_eq!(pass["user_logins"], 2);
    assert_eq!(pass["quarantine"], 1);
    assert_eq!(pass["processed_messages"], 4);
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE user_id LIKE 'old-%'")
            .await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 401);
    assert_eq!(app.count(DANGLING).await, 0);
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log").await,
        audit_before + 1,
        "the pass appends its figures and deletes no audit row"
    );
    app.etl_ok(&["audit", "verify"]).await;
}

/// The sweep deletes only entries it found unused twice, and ingest resets that state whenever it
/// meets an entry it does not know: here an entry marked unused is used again by a new process's
/// batch, and the next pass keeps it while deleting the one no row uses.
#[tokio::test]
async fn an_entry_the_sweep_found_unused_is_kept_once_ingest_uses_it_again() {
    let app = TestApp::spawn().await;
    app.ingest(&[body("gone-1", "10.28.0.1", "280-00-0001", "RU")])
        .await;
    for sql in [
        // As a pass that expired the row and looked twice would leave it.
        "DELETE FROM user_logins",
        "UPDATE vault.entries SET first_seen = now() - interval '40 days', sweep_state = 'unused'",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    // Another user behind the same ip, ingested by a process that knows nothing of the vault.
    app.ingest(&[body("back-1", "10.28.0.1", "280-00-0002", "RU")])
        .await;
    let kept: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT field, sweep_state FROM vault.entries ORDER BY field, first_seen")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(
        kept,
        vec![
            ("device_id".to_owned(), Some("unused".to_owned())),
            ("device_id".to_owned(), None),
            ("ip".to_owned(), None),
        ],
        "the ip's entry is in use again; gone-1's device is not"
    );
    app.etl_ok(&["retention", "set", "--logins", "30"]).await;
    let pass: Value = serde_json::from_str(
        &app.etl_ok(&["retention", "apply", "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(pass["vault_entries"], 1, "{pass}");
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 2);
    assert_eq!(app.count(DANGLING).await, 0);
}

/// A retention dry run counts the vault entries that only expiring rows use, as the real pass
/// then deletes them; with nothing expired, the pass still exits 0.
#[tokio::test]
async fn a_retention_dry_run_counts_what_the_pass_then_deletes() {
    let app = TestApp::spawn().await;
    app.ingest(&[
        body("old-1", "10.27.0.1", "270-00-0001", "RU"),
        body("old-2", "10.27.0.2", "270-00-0002", "RU"),
        // Shares old-1's ip, and is recent: that entry stays.
        body("new-1", "10.27.0.1", "270-00-0003", "RU"),
    ])
    .await;
    for sql in [
        "UPDATE user_logins SET create_date = current_date - 40 WHERE user_id LIKE 'old-%'",
        "UPDATE vault.entries SET first_seen = now() - interval '40 days'",
    ] {
        sqlx::query(sql).execute(&app.pool).await.unwrap();
    }
    app.etl_ok(&["retention", "set", "--logins", "30"]).await;
    let apply = async |extra: &[&str]| -> Value {
        let mut args = vec!["retention", "apply", "--format", "json"];
        args.extend_from_slice(extra);
        serde_json::from_str(&app.etl_ok(&args).await).unwrap()
    };
    let dry = apply(&["--dry-run"]).await;
    let pass = apply(&[]).await;
    assert_eq!(pass["user_logins"], 2);
    assert_eq!(pass["vault_entries"], 3, "old-2's ip and both old devices");
    for figure in [
        "user_logins",
        "vault_entries",
        "quarantine",
        "processed_messages",
    ] {
        assert_eq!(dry[figure], pass[figure], "{figure}: {dry} {pass}");
    }
    assert_eq!(app.count("SELECT count(*) FROM vault.entries").await, 2);
    assert_eq!(app.count(DANGLING).await, 0);
    // Nothing left to expire: done, as a scheduler expects of a sweep.
    let nothing = app.etl(&["retention", "apply"]).await;
    assert_exit(&nothing, 0);
    let shown: Value =
        serde_json::from_str(&app.etl_ok(&["retention", "show", "--format", "json"]).await)
            .unwrap();
    assert_eq!(
        shown["quarantine_days"], 0,
        "0 keeps forever, as `set` takes it"
    );
}

#[tokio::test]
async fn replay_writes_what_todays_rules_accept_exactly_once_and_purge_deletes_old_entries() {
    let app = TestApp::spawn().await;
    // A rule of the day rejects locale ZZ: those rows are quarantined as database_rejected.
    sqlx::query("ALTER TABLE user_logins ADD CONSTRAINT no_zz CHECK (locale <> 'ZZ')")
        .execute(&app.pool)
        .await
        .unwrap();
    app.ingest(&[
        body("r-1", "10.26.0.1", "260-00-0001", "ZZ"),
        body("r-2", "10.26.0.2", "260-00-0002", "ZZ"),
        body("r-3", "10.26.0.3", "260-00-0003", "RU"),
        "not json".into(),
    ])
    .await;
    assert_eq!(
        app.count("SELECT count(*) FROM etl.quarantine WHERE reason = 'database_rejected'")
            .await,
        2
    );
    // While the rule holds, a dry run says what the real run would do: nothing written.
    let held: Value = serde_json::from_str(
        &app.etl_ok(&[
            "quarantine",
            "replay",
            "--reason",
            "before the rule change",
            "--dry-run",
            "--format",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(held["written"], 0, "{held}");
    assert_eq!(held["still_quarantined"], 3, "{held}");
    // The rule is relaxed.
    sqlx::query("ALTER TABLE user_logins DROP CONSTRAINT no_zz")
        .execute(&app.pool)
        .await
        .unwrap();
    let dry: Value = serde_json::from_str(
        &app.etl_ok(&[
            "quarantine",
            "replay",
            "--reason",
            "no_zz dropped",
            "--dry-run",
            "--format",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(dry["examined"], 3);
    assert_eq!(dry["written"], 2);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);

    let replayed: Value = serde_json::from_str(
        &app.etl_ok(&[
            "quarantine",
            "replay",
            "--reason-code",
            "database_rejected",
            "--reason",
            "no_zz dropped",
            "--ticket",
            "OPS-7",
            "--format",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(replayed["written"], 2, "{replayed}");
    assert_eq!(replayed["still_quarantined"], 0);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 3);
    assert_eq!(app.count(DANGLING).await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.processed_messages WHERE outcome = 'written'")
            .await,
        3
    );
    // Twice: nothing matches, nothing is written again.
    let again = app
        .etl(&[
            "quarantine",
            "replay",
            "--reason-code",
            "database_rejected",
            "--reason",
            "again",
        ])
        .await;
    assert_exit(&again, 1);
    let everything: Value = serde_json::from_str(
        &app.etl_ok(&[
            "quarantine",
            "replay",
            "--reason",
            "all",
            "--format",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(everything["written"], 0);
    assert_eq!(
        everything["still_quarantined"], 1,
        "the body that is not JSON stays"
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 3);

    sqlx::query("UPDATE etl.quarantine SET received_at = now() - interval '10 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    // Nothing to do: exit 1, as replay with nothing to replay.
    let kept = app
        .etl(&["quarantine", "purge", "--older-than", "30"])
        .await;
    assert_exit(&kept, 1);
    let kept = String::from_utf8_lossy(&kept.stdout);
    assert!(
        kept.contains("nothing to purge: no quarantined message is older than 30 days"),
        "{kept}"
    );
    let dry = app
        .etl_ok(&["quarantine", "purge", "--older-than", "7", "--dry-run"])
        .await;
    assert_eq!(
        dry.trim(),
        "would purge 1 quarantined message older than 7 days"
    );
    let purged = app
        .etl_ok(&["quarantine", "purge", "--older-than", "7"])
        .await;
    assert_eq!(
        purged.trim(),
        "purged 1 quarantined message older than 7 days"
    );
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind IN ('quarantine_replay', 'quarantine_purge')")
            .await,
        8,
        "each replay's opening row (dry runs included), two replays' figures, the purge"
    );
    let opening: (String, Option<String>, String) = sqlx::query_as(
        "SELECT reason, ticket, detail FROM recovery.audit_log \
         WHERE kind = 'quarantine_replay' AND outcome = 'opening' AND ticket IS NOT NULL",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert_eq!(opening.0, "no_zz dropped");
    assert_eq!(opening.1.as_deref(), Some("OPS-7"));
    assert_eq!(
        opening.2,
        "reason_code=database_rejected message_id=any dry_run=false"
    );
    app.etl_ok(&["audit", "verify"]).await;
}

/// Sessions a person leaves open cannot stall ingest: an empty recovery request or erasure is
/// refused before it takes a lock, and a real erasure left idle inside its transaction ends when
/// its login's idle_in_transaction_session_timeout passes (set as docs/roles.md asks); a drain
/// beside them finishes within a bound.
#[tokio::test]
async fn a_session_left_open_cannot_stall_a_drain() {
    use sqlx::{Connection, PgConnection};
    let app = TestApp::spawn().await;
    let (_, recoverer) = app.login_user("etl_recoverer").await;
    let (_, privacy) = app.login_user("etl_privacy").await;
    let (idle_name, idle_privacy) = app.login_user("etl_privacy").await;
    sqlx::query(&format!(
        "ALTER ROLE {idle_name} SET idle_in_transaction_session_timeout = '2s'"
    ))
    .execute(&app.pool)
    .await
    .unwrap();

    let mut recoverer = PgConnection::connect(&recoverer).await.unwrap();
    let mut recovering = recoverer.begin().await.unwrap();
    let refused = sqlx::query("SELECT recovery.request('ip', '{}', 'x', NULL, $1, false)")
        .bind(vec![7u8; 32])
        .execute(&mut *recovering)
        .await
        .unwrap_err();
    assert!(
        refused.to_string().contains("1 to 100000 subjects"),
        "{refused}"
    );

    let mut privacy = PgConnection::connect(&privacy).await.unwrap();
    let mut erasing = privacy.begin().await.unwrap();
    let refused =
        sqlx::query("SELECT * FROM etl.forget('{}', '{}', 1, NULL, 'x', NULL, '{}', '{}')")
            .execute(&mut *erasing)
            .await
            .unwrap_err();
    assert!(
        refused.to_string().contains("no user id given"),
        "{refused}"
    );

    // A real erasure, left open: it holds the vault epoch until its session is ended.
    let mut idle = PgConnection::connect(&idle_privacy).await.unwrap();
    let mut left_open = idle.begin().await.unwrap();
    let key_check: Vec<u8> = sqlx::query_scalar(
        "SELECT key_check FROM keyring.data_keys WHERE purpose = 'user' AND version = 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    sqlx::query(
        "SELECT * FROM etl.forget(ARRAY['nobody'], ARRAY[$1], 1, $2, 'x', NULL, '{}', '{}')",
    )
    .bind(vec![1u8; 32])
    .bind(key_check)
    .execute(&mut *left_open)
    .await
    .unwrap();

    let bodies: Vec<String> = (0..30)
        .map(|i| {
            body(
                &format!("open-{i}"),
                &format!("10.31.0.{i}"),
                "310-00-0001",
                "RU",
            )
        })
        .collect();
    app.send(&bodies).await;
    let (summary, _) = tokio::time::timeout(Duration::from_secs(40), app.drain(&[]))
        .await
        .expect("the drain is stalled by a session left open");
    assert_eq!(summary.written, 30, "{summary}");
    assert!(
        left_open.commit().await.is_err(),
        "the idle session was ended, its erasure rolled back"
    );
    drop((recovering, erasing));
}
