//! The key lifecycle on the real stack: vault rotation, re-seal and retirement; mask rotation and
//! the re-mask beside a running ingest; every value still recoverable at the end.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{assert_exit, wait_until, TestApp};

/// A valid body of this user.
fn body(user_id: &str, ip: &str, device_id: &str) -> String {
    serde_json::json!({
        "user_id": user_id,
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": ip,
        "locale": "RU",
        "device_id": device_id,
    })
    .to_string()
}

fn write_input(lines: &[String]) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("etl-keys-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// `etl keys list --format json`, by (purpose, version).
async fn listed(app: &TestApp) -> HashMap<(String, i64), Value> {
    let text = app.etl_ok(&["keys", "list", "--format", "json"]).await;
    let keys: Vec<Value> = serde_json::from_str(&text).unwrap();
    keys.into_iter()
        .map(|k| {
            (
                (
                    k["purpose"].as_str().unwrap().to_owned(),
                    k["version"].as_i64().unwrap(),
                ),
                k,
            )
        })
        .collect()
}

/// Recovers every distinct mask of a field as a recoverer, in one audited request: mask → value.
async fn recover_all(
    app: &TestApp,
    url: &str,
    flag: &str,
    column: &str,
) -> HashMap<String, String> {
    let masks: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT DISTINCT {column} FROM user_logins ORDER BY 1"
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(&file, masks.join("\n") + "\n").unwrap();
    let output = app
        .etl_as(
            url,
            &[
                "recover",
                flag,
                "--from-file",
                file.to_str().unwrap(),
                "--reason",
                "key lifecycle check",
            ],
        )
        .await;
    assert_exit(&output, 0);
    let recovered: HashMap<String, String> = String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .map(|line| {
            let (mask, value) = line.split_once('\t').unwrap();
            (mask.to_owned(), value.to_owned())
        })
        .collect();
    assert_eq!(recovered.len(), masks.len());
    recovered
}

#[tokio::test]
async fn rotate_reseal_and_retire_keep_every_value_recoverable() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    app.ingest(&[
        body("u-1", "10.40.0.1", "400-00-0001"),
        body("u-2", "10.40.0.2", "400-00-0002"),
        body("u-3", "10.40.0.1", "400-00-0003"),
    ])
    .await;
    // A quarantined body sealed under the vault key, as rows were before the quarantine key pair.
    let sealer = app.transformer().await;
    let legacy = sealer
        .sealer()
        .seal_body("legacy-1", b"{\"user_id\": \"u-9\", \"oops\": 1}")
        .unwrap();
    sqlx::query(
        "INSERT INTO etl.quarantine (message_id, reason, detail, received_at, vault_key_version, \
         body_ciphertext) VALUES ('legacy-1', 'invalid_json', 'test', now(), 1, $1)",
    )
    .bind(&legacy)
    .execute(&app.pool)
    .await
    .unwrap();

    // The only vault key is the one ingest seals with: not retired.
    let output = app
        .etl(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;
    assert_exit(&output, 2);

    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    app.ingest(&[body("u-4", "10.40.0.4", "400-00-0004")]).await;
    let keys = listed(&app).await;
    let v1 = &keys[&("vault".to_owned(), 1)];
    assert_eq!(v1["entries"], 5, "{v1}");
    assert_eq!(v1["quarantine_rows"], 1, "{v1}");
    assert_eq!(v1["state"], "previous");
    assert_eq!(keys[&("vault".to_owned(), 2)]["entries"], 2);
    assert_eq!(keys[&("vault".to_owned(), 2)]["state"], "active");
    assert_eq!(keys[&("mask".to_owned(), 1)]["logins"], 4);

    // Retirement is refused, with the counts, while anything uses the version.
    let output = app
        .etl(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;
    assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("5 vault entries") && stderr.contains("1 quarantine row;"),
        "{stderr}"
    );

    let summary: Value =
        serde_json::from_str(&app.etl_ok(&["keys", "reseal", "--format", "json"]).await).unwrap();
    assert_eq!(summary["vault_entries"], 5, "{summary}");
    assert_eq!(summary["quarantine_rows"], 1, "{summary}");
    let keys = listed(&app).await;
    assert_eq!(keys[&("vault".to_owned(), 1)]["entries"], 0);
    assert_eq!(keys[&("vault".to_owned(), 1)]["quarantine_rows"], 0);
    assert_eq!(keys[&("vault".to_owned(), 2)]["entries"], 7);
    // Nothing left: a second run does nothing.
    let summary: Value =
        serde_json::from_str(&app.etl_ok(&["keys", "reseal", "--format", "json"]).await).unwrap();
    assert_eq!(summary["vault_entries"], 0, "{summary}");

    app.etl_ok(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;
    let keys = listed(&app).await;
    assert!(!keys.contains_key(&("vault".to_owned(), 1)));
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind IN ('key_rotation', 'reseal', 'key_retirement')")
            .await,
        4
    );

    let (_, url) = app.login_user("etl_recoverer").await;
    let ips = recover_all(&app, &url, "--masked-ip", "masked_ip").await;
    let mut values: Vec<&str> = ips.values().map(String::as_str).collect();
    values.sort_unstable();
    assert_eq!(values, ["10.40.0.1", "10.40.0.2", "10.40.0.4"]);
    let devices = recover_all(&app, &url, "--masked-device-id", "masked_device_id").await;
    assert_eq!(devices.len(), 4);
    let output = app
        .etl_as(
            &url,
            &["quarantine", "show", "legacy-1", "--reason", "check"],
        )
        .await;
    assert_exit(&output, 0);
    assert!(String::from_utf8_lossy(&output.stdout).contains("oops"));

    // Deleting the newest vault key row cannot roll ingest back to an older key silently.
    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    sqlx::query("DELETE FROM keyring.data_keys WHERE purpose = 'vault' AND version = 3")
        .execute(&app.pool)
        .await
        .unwrap();
    app.send(&[body("u-5", "10.40.0.5", "400-00-0005")]).await;
    let output = app.etl(&["ingest", "--drain"]).await;
    assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("below version 3"), "{stderr}");
}

#[tokio::test]
async fn a_reseal_killed_halfway_resumes_and_completes() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    let lines: Vec<String> = (0..1500)
        .map(|i| {
            body(
                &format!("u-{i}"),
                &format!("10.41.{}.{}", i / 256, i % 256),
                &format!("410-00-{i:04}"),
            )
        })
        .collect();
    let input = write_input(&lines);
    app.etl_ok(&["ingest", "--from-file", input.to_str().unwrap()])
        .await;
    let total = app.count("SELECT count(*) FROM vault.entries").await;
    assert_eq!(total, 3000);
    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;

    let mut reseal = app
        .command(&["keys", "reseal", "--batch", "2"])
        .spawn()
        .unwrap();
    let moved = "SELECT count(*) FROM vault.entries WHERE vault_key_version = 2";
    wait_until(
        Duration::from_secs(60),
        "the first re-sealed chunk",
        || async { app.count(moved).await > 0 },
    )
    .await;
    reseal.kill().await.unwrap();
    reseal.wait().await.unwrap();
    // A statement the killed run had sent still ends (and commits) on the server.
    wait_until(
        Duration::from_secs(30),
        "the killed run's statement",
        || async {
            app.count(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND pid <> pg_backend_pid() AND state <> 'idle'",
            )
            .await
                == 0
        },
    )
    .await;
    let halfway = app.count(moved).await;
    assert!(halfway > 0 && halfway < total, "{halfway} of {total}");
    // Killed between chunks or inside one: every entry is a consistent pair either way.
    let output = app
        .etl(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;
    assert_exit(&output, 2);

    let summary: Value =
        serde_json::from_str(&app.etl_ok(&["keys", "reseal", "--format", "json"]).await).unwrap();
    assert_eq!(summary["vault_entries"], total - halfway, "{summary}");
    assert_eq!(app.count(moved).await, total);
    app.etl_ok(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;

    let (_, url) = app.login_user("etl_recoverer").await;
    let ips = recover_all(&app, &url, "--masked-ip", "masked_ip").await;
    let expected: HashSet<String> = (0..1500)
        .map(|i| format!("10.41.{}.{}", i / 256, i % 256))
        .collect();
    assert_eq!(ips.into_values().collect::<HashSet<_>>(), expected);
}

/// The events of the re-mask test: `n` users over a few ips and devices, so values repeat.
fn remask_bodies(range: std::ops::Range<usize>) -> Vec<(String, String, String)> {
    range
        .map(|i| {
            (
                format!("user-{i:05}"),
                format!("10.42.0.{}", i % 37),
                format!("420-00-{:04}", i % 53),
            )
        })
        .collect()
}

#[tokio::test]
async fn remask_beside_a_running_ingest_leaves_one_mask_per_value_and_every_value_recoverable() {
    let app = Arc::new(TestApp::spawn().await);
    app.start_recovery_service();
    let before = remask_bodies(0..400);
    let input = write_input(
        &before
            .iter()
            .map(|(u, ip, d)| body(u, ip, d))
            .collect::<Vec<_>>(),
    );
    app.etl_ok(&["ingest", "--from-file", input.to_str().unwrap()])
        .await;
    // A quarantined message with a user id: its user hash is under the user key, which a
    // re-mask does not touch.
    app.ingest(&[r#"{"user_id": "user-q", "ip": "bad"}"#.to_owned()])
        .await;
    let distinct = |field: &str| format!("SELECT count(DISTINCT {field}) FROM user_logins");
    assert_eq!(app.count(&distinct("masked_ip")).await, 37);
    assert_eq!(app.count(&distinct("masked_device_id")).await, 53);

    app.etl_ok(&["keys", "rotate", "--purpose", "mask"]).await;
    let keys = listed(&app).await;
    assert_eq!(keys[&("mask".to_owned(), 2)]["state"], "pending");
    assert_eq!(keys[&("mask".to_owned(), 1)]["state"], "active");
    // A second rotation waits for the re-mask.
    assert_exit(&app.etl(&["keys", "rotate", "--purpose", "mask"]).await, 2);
    // Neither version is retired: the active one masks, the pending one is to.
    let retire_mask = async |version: &str| {
        app.etl(&["keys", "retire", "--purpose", "mask", "--version", version])
            .await
    };
    for (version, why) in [("1", "is the active one"), ("2", "is pending")] {
        let output = retire_mask(version).await;
        assert_exit(&output, 2);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(why), "{stderr}");
    }

    // A long-running ingest (not --drain), fed while the re-mask runs.
    let mut ingest = app
        .command(&["ingest", "--batch-messages", "20", "--writers", "2"])
        .spawn()
        .unwrap();
    let during = remask_bodies(400..1000);
    let sender = {
        let app = Arc::clone(&app);
        let bodies: Vec<String> = during.iter().map(|(u, ip, d)| body(u, ip, d)).collect();
        tokio::spawn(async move { app.send_many(&bodies).await })
    };
    wait_until(
        Duration::from_secs(60),
        "ingest writing beside the re-mask",
        || async { app.count("SELECT count(*) FROM user_logins").await > 420 },
    )
    .await;
    let summary: Value = serde_json::from_str(
        &app.etl_ok(&["keys", "remask", "--batch", "25", "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(summary["to_mask_key_version"], 2, "{summary}");
    sender.await.unwrap();
    // After the switch, the same process writes under the new version without a restart.
    let after = remask_bodies(1000..1100);
    app.send(
        &after
            .iter()
            .map(|(u, ip, d)| body(u, ip, d))
            .collect::<Vec<_>>(),
    )
    .await;
    wait_until(Duration::from_secs(120), "every event written", || async {
        app.count("SELECT count(*) FROM user_logins").await == 1100
    })
    .await;
    ingest.kill().await.unwrap();
    ingest.wait().await.unwrap();

    // No row or entry is left on the old version; the mapping is gone.
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE mask_key_version IS DISTINCT FROM 2")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(DISTINCT message_id) FROM user_logins")
            .await,
        1100
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries WHERE mask_key_version <> 2")
            .await,
        0
    );
    assert_eq!(app.count("SELECT count(*) FROM vault.remask_map").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.quarantine WHERE user_hash IS NOT NULL AND user_hash_key_version = 1")
            .await,
        1
    );
    // The number of distinct masks per field is unchanged, and one entry per mask.
    assert_eq!(app.count(&distinct("masked_ip")).await, 37);
    assert_eq!(app.count(&distinct("masked_device_id")).await, 53);
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries").await,
        37 + 53
    );

    // Every row's masks open to its original values, and each value has exactly one mask.
    let (_, url) = app.login_user("etl_recoverer").await;
    let ips = recover_all(&app, &url, "--masked-ip", "masked_ip").await;
    let devices = recover_all(&app, &url, "--masked-device-id", "masked_device_id").await;
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT user_id, masked_ip, masked_device_id FROM user_logins")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let sent: HashMap<String, (String, String)> = remask_bodies(0..1100)
        .into_iter()
        .map(|(u, ip, d)| (u, (ip, d)))
        .collect();
    let mut masks_of_ip: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (user, masked_ip, masked_device) in &rows {
        let (ip, device) = &sent[user];
        assert_eq!(&ips[masked_ip], ip, "{user}");
        assert_eq!(&devices[masked_device], device, "{user}");
        masks_of_ip.entry(ip).or_default().insert(masked_ip);
    }
    assert!(masks_of_ip.values().all(|masks| masks.len() == 1));

    // The active version is the new one: another re-mask has nothing to do.
    let keys = listed(&app).await;
    assert_eq!(keys[&("mask".to_owned(), 2)]["state"], "active");
    assert_eq!(keys[&("mask".to_owned(), 2)]["logins"], 1100);
    assert_eq!(keys[&("mask".to_owned(), 1)]["logins"], 0);
    let output = app.etl_ok(&["keys", "remask"]).await;
    assert!(output.contains("nothing to re-mask"), "{output}");
    // A backfill claimed before the re-mask is still recognised (its claims are keyed by the
    // user key): its lines are skipped, not written twice.
    app.etl_ok(&["ingest", "--from-file", input.to_str().unwrap()])
        .await;
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1100);

    // Nothing uses mask key version 1 any more: it is retired, and no process needs it.
    app.etl_ok(&["keys", "retire", "--purpose", "mask", "--version", "1"])
        .await;
    assert!(!listed(&app).await.contains_key(&("mask".to_owned(), 1)));
    assert_exit(&retire_mask("1").await, 2);

    // Erasure after the switch and the retirement: it finds the quarantined message by its
    // user hash, and the suppression list keeps working.
    let (_, privacy) = app.login_user("etl_privacy").await;
    for user in ["user-q", "user-00001"] {
        let output = app
            .etl_as(
                &privacy,
                &["forget", "--user-id", user, "--reason", "after a re-mask"],
            )
            .await;
        assert_exit(&output, 0);
    }
    assert_eq!(app.count("SELECT count(*) FROM etl.quarantine").await, 0);
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1099);
    assert_eq!(
        app.count("SELECT count(*) FROM etl.forgotten_users WHERE user_key_version = 1")
            .await,
        2
    );
    app.ingest(&[body("user-q", "10.42.0.1", "420-00-0001")])
        .await;
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE user_id = 'user-q'")
            .await,
        0,
        "a forgotten user's new event is dropped, with mask key version 1 gone"
    );
}

#[tokio::test]
async fn a_reseal_beside_ingest_and_recover_opens_every_value_at_every_moment() {
    let app = Arc::new(TestApp::spawn().await);
    app.start_recovery_service();
    let line = |i: usize| {
        body(
            &format!("u-{i}"),
            &format!("10.43.{}.{}", i / 256, i % 256),
            &format!("430-00-{i:04}"),
        )
    };
    let input = write_input(&(0..1500).map(line).collect::<Vec<_>>());
    app.etl_ok(&["ingest", "--from-file", input.to_str().unwrap()])
        .await;
    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    // The first masks in the vault's order: the re-seal moves them first, while they are asked for.
    let sample: Vec<(String, String)> = sqlx::query_as(
        "SELECT u.masked_ip, u.user_id FROM user_logins u ORDER BY u.masked_ip LIMIT 6",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let masks_file = std::env::temp_dir().join(format!("masks-{}.txt", uuid::Uuid::new_v4()));
    std::fs::write(
        &masks_file,
        sample
            .iter()
            .map(|(m, _)| m.as_str())
            .collect::<Vec<_>>()
            .join("\n")
            + "\n",
    )
    .unwrap();
    let expected: String = sample
        .iter()
        .map(|(mask, user)| {
            let i: usize = user.trim_start_matches("u-").parse().unwrap();
            format!("{mask}\t10.43.{}.{}\n", i / 256, i % 256)
        })
        .collect();

    let reseal = app
        .command(&["keys", "reseal", "--batch", "2", "--format", "json"])
        .output();
    let more = write_input(&(1500..2000).map(line).collect::<Vec<_>>());
    let backfill = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.etl(&["ingest", "--from-file", more.to_str().unwrap()])
                .await
        })
    };
    let (_, url) = app.login_user("etl_recoverer").await;
    let recover = async {
        let mut opened = 0;
        while app
            .count("SELECT count(*) FROM vault.entries WHERE vault_key_version = 1")
            .await
            > 0
        {
            let output = app
                .etl_as(
                    &url,
                    &[
                        "recover",
                        "--masked-ip",
                        "--from-file",
                        masks_file.to_str().unwrap(),
                        "--reason",
                        "during a re-seal",
                    ],
                )
                .await;
            assert_exit(&output, 0);
            assert_eq!(String::from_utf8(output.stdout).unwrap(), expected);
            opened += 1;
        }
        opened
    };
    let (resealed, opened) = tokio::join!(reseal, recover);
    let resealed = resealed.unwrap();
    assert_exit(&resealed, 0);
    assert!(opened > 0, "no recovery ran during the re-seal");
    assert_exit(&backfill.await.unwrap(), 0);

    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 2000);
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries WHERE vault_key_version = 2")
            .await,
        4000
    );
    app.etl_ok(&["keys", "retire", "--purpose", "vault", "--version", "1"])
        .await;
    let ips = recover_all(&app, &url, "--masked-ip", "masked_ip").await;
    let all: HashSet<String> = (0..2000)
        .map(|i| format!("10.43.{}.{}", i / 256, i % 256))
        .collect();
    assert_eq!(ips.into_values().collect::<HashSet<_>>(), all);
}

#[tokio::test]
async fn a_running_ingest_seals_with_the_rotated_vault_key_without_a_restart() {
    let app = TestApp::spawn().await;
    let mut ingest = app
        .command(&["ingest", "--batch-messages", "10"])
        .spawn()
        .unwrap();
    app.send(&[body("u-1", "10.44.0.1", "440-00-0001")]).await;
    wait_until(Duration::from_secs(60), "the first row", || async {
        app.count("SELECT count(*) FROM user_logins").await == 1
    })
    .await;
    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    // New values: the process still holds version 1, is refused by the guard, reloads, seals
    // with version 2.
    app.send(&[
        body("u-2", "10.44.0.2", "440-00-0002"),
        body("u-3", "10.44.0.1", "440-00-0003"),
    ])
    .await;
    wait_until(Duration::from_secs(60), "the later rows", || async {
        app.count("SELECT count(*) FROM user_logins").await == 3
    })
    .await;
    ingest.kill().await.unwrap();
    ingest.wait().await.unwrap();
    let versions: Vec<(String, i32)> = sqlx::query_as(
        "SELECT field || ':' || encode(mask, 'hex'), vault_key_version FROM vault.entries \
         ORDER BY vault_key_version, field",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        versions.iter().map(|(_, v)| *v).collect::<Vec<_>>(),
        [1, 1, 2, 2, 2],
        "{versions:?}"
    );
}

/// The quarantine key is guarded as the vault key is: after a rotation, a running ingest that
/// still holds version 1 is refused, reloads and seals to version 2 without a restart; so
/// retiring version 1 meanwhile loses no message (SQS has deleted it by then).
#[tokio::test]
async fn a_running_ingest_seals_to_the_rotated_quarantine_key_and_a_retirement_loses_nothing() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    let mut ingest = app
        .command(&["ingest", "--batch-messages", "10"])
        .spawn()
        .unwrap();
    app.send(&["not json, first".to_owned()]).await;
    let quarantined = "SELECT count(*) FROM etl.quarantine";
    wait_until(
        Duration::from_secs(60),
        "the first quarantined body",
        || async { app.count(quarantined).await == 1 },
    )
    .await;
    app.etl_ok(&["keys", "rotate", "--purpose", "quarantine"])
        .await;
    // Version 1 is retired while the process still holds it: its one row purged first.
    let retire = async |version: &str| {
        app.etl(&[
            "keys",
            "retire",
            "--purpose",
            "quarantine",
            "--version",
            version,
        ])
        .await
    };
    let refused = retire("2").await;
    assert_exit(&refused, 2);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(stderr.contains("is the one ingest seals with"), "{stderr}");
    let refused = retire("1").await;
    assert_exit(&refused, 2);
    let stderr = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(
        stderr.contains("still used by 1 quarantined message"),
        "{stderr}"
    );
    sqlx::query("UPDATE etl.quarantine SET received_at = now() - interval '40 days'")
        .execute(&app.pool)
        .await
        .unwrap();
    app.etl_ok(&["quarantine", "purge", "--older-than", "30"])
        .await;
    app.etl_ok(&[
        "keys",
        "retire",
        "--purpose",
        "quarantine",
        "--version",
        "1",
    ])
    .await;

    app.send(&["not json, second".to_owned()]).await;
    wait_until(
        Duration::from_secs(60),
        "the second quarantined body",
        || async { app.count(quarantined).await == 1 },
    )
    .await;
    ingest.kill().await.unwrap();
    ingest.wait().await.unwrap();
    let (message_id, version): (String, i32) =
        sqlx::query_as("SELECT message_id, quarantine_key_version FROM etl.quarantine")
            .fetch_one(&app.pool)
            .await
            .unwrap();
    assert_eq!(version, 2, "sealed to the rotated key, not the retired one");
    let shown = app
        .etl_ok(&["quarantine", "show", &message_id, "--reason", "check"])
        .await;
    assert_eq!(shown.trim(), "not json, second");
}

#[tokio::test]
async fn a_remask_killed_before_its_switch_resumes_and_switches_once() {
    let app = TestApp::spawn().await;
    app.start_recovery_service();
    // Every value distinct: 3,000 entries, so a re-mask one entry per chunk is still in phase 1
    // when it is killed.
    let rows: Vec<(String, String, String)> = (0..1500)
        .map(|i| {
            (
                format!("u-{i}"),
                format!("10.45.{}.{}", i / 256, i % 256),
                format!("450-00-{i:04}"),
            )
        })
        .collect();
    let input = write_input(
        &rows
            .iter()
            .map(|(u, ip, d)| body(u, ip, d))
            .collect::<Vec<_>>(),
    );
    app.etl_ok(&["ingest", "--from-file", input.to_str().unwrap()])
        .await;
    app.etl_ok(&["keys", "rotate", "--purpose", "mask"]).await;
    let masks_before = app
        .count(
            "SELECT count(DISTINCT masked_ip) + count(DISTINCT masked_device_id) FROM user_logins",
        )
        .await;

    let mut remask = app
        .command(&["keys", "remask", "--batch", "1"])
        .spawn()
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the first mapped entries",
        || async { app.count("SELECT count(*) FROM vault.remask_map").await > 0 },
    )
    .await;
    remask.kill().await.unwrap();
    remask.wait().await.unwrap();
    // Killed in phase 1: analysts still see only old masks, and a rotation waits for the re-mask.
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE mask_key_version = 1")
            .await,
        1500
    );
    assert_exit(&app.etl(&["keys", "rotate", "--purpose", "mask"]).await, 2);

    let summary: Value =
        serde_json::from_str(&app.etl_ok(&["keys", "remask", "--format", "json"]).await).unwrap();
    assert_eq!(summary["user_logins"], 1500, "{summary}");
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE mask_key_version = 2")
            .await,
        1500
    );
    assert_eq!(
        app.count(
            "SELECT count(DISTINCT masked_ip) + count(DISTINCT masked_device_id) FROM user_logins"
        )
        .await,
        masks_before
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries").await,
        masks_before
    );
    assert_eq!(app.count("SELECT count(*) FROM vault.remask_map").await, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM recovery.audit_log WHERE kind = 'remask' AND outcome = 'switched'")
            .await,
        1
    );
    let (_, url) = app.login_user("etl_recoverer").await;
    let devices = recover_all(&app, &url, "--masked-device-id", "masked_device_id").await;
    let sent: HashSet<String> = rows.into_iter().map(|(_, _, d)| d).collect();
    assert_eq!(devices.into_values().collect::<HashSet<_>>(), sent);
}

#[tokio::test]
async fn keys_init_carries_over_the_hashes_of_a_deployment_made_before_the_user_key() {
    use etl::adapters::kms::Kms;
    use etl::adapters::postgres::keyring;
    use etl::crypto::{KeyPurpose, UserKey};

    let app = TestApp::spawn().await;
    // A deployment from before the user key, with two mask key versions and suppression rows
    // made with each.
    app.etl_ok(&["keys", "rotate", "--purpose", "mask"]).await;
    sqlx::query("DELETE FROM keyring.data_keys WHERE purpose = 'user'")
        .execute(&app.pool)
        .await
        .unwrap();
    for (byte, version) in [(9u8, 1), (8, 2)] {
        sqlx::query(
            "INSERT INTO etl.forgotten_users (user_hash, user_key_version) VALUES ($1, $2)",
        )
        .bind(vec![byte; 32])
        .bind(version)
        .execute(&app.pool)
        .await
        .unwrap();
    }
    let refused = |output: std::process::Output, what: &str| {
        assert_exit(&output, 2);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(stderr.contains(what), "{stderr}");
    };
    refused(
        app.etl(&["ingest", "--drain"]).await,
        "user key versions [1, 2], which the keyring lacks",
    );

    let output = app
        .etl_ok(&["keys", "init", "--kms-key-id", &app.kms_key_id])
        .await;
    for version in [1, 2] {
        assert!(
            output.contains(&format!(
                "user key: version {version} carried over from mask key version {version}"
            )),
            "{output}"
        );
    }
    // Each carried version is its mask key version's two subkeys (whose hashes the unit tests
    // compare with the derivation as it was), with the check `etl.forget` compares.
    let kms = Kms::new(&app.sdk);
    let transformer = app.transformer().await;
    for version in [1, 2] {
        let mask = keyring::version(&app.pool, KeyPurpose::Mask, version)
            .await
            .unwrap()
            .unwrap();
        let mask = etl::keys::unwrap_stored(&kms, KeyPurpose::Mask, &mask)
            .await
            .unwrap();
        let expected = UserKey::new(&UserKey::carried_from_mask(&mask)).unwrap();
        let loaded = transformer
            .user_keys()
            .all()
            .find(|key| key.version() == version)
            .unwrap();
        assert_eq!(loaded.user_hash("alice"), expected.user_hash("alice"));
        assert_eq!(loaded.key_check(), expected.key_check());
    }
    app.etl_ok(&["ingest", "--drain"]).await;

    // A carry-over cut short (here: a version deleted) stops ingest rather than let a forgotten
    // user back in, and the next `keys init` finishes it.
    sqlx::query("DELETE FROM keyring.data_keys WHERE purpose = 'user' AND version = 2")
        .execute(&app.pool)
        .await
        .unwrap();
    refused(app.etl(&["ingest", "--drain"]).await, "[2]");
    let output = app
        .etl_ok(&["keys", "init", "--kms-key-id", &app.kms_key_id])
        .await;
    assert!(
        output.contains("user key: version 2 carried over")
            && !output.contains("version 1 carried"),
        "{output}"
    );
    app.etl_ok(&["ingest", "--drain"]).await;
    let output = app
        .etl_ok(&["keys", "init", "--kms-key-id", &app.kms_key_id])
        .await;
    assert!(output.contains("nothing changed"), "{output}");
}

#[tokio::test]
async fn a_backfill_goes_on_under_the_user_key_version_that_claimed_it() {
    let app = TestApp::spawn().await;
    let lines: Vec<String> = (0..30)
        .map(|i| {
            body(
                &format!("user-b{i}"),
                &format!("10.44.0.{i}"),
                "440-00-0001",
            )
        })
        .collect();
    let first = write_input(&lines[..20]);
    app.etl_ok(&["ingest", "--from-file", first.to_str().unwrap()])
        .await;
    app.etl_ok(&["keys", "rotate", "--purpose", "user"]).await;
    // The same input grown by ten lines: its first twenty are recognised under version 1, and
    // the ten new ones are claimed under it too, so a third run writes nothing.
    let grown = write_input(&lines);
    for _ in 0..2 {
        app.etl_ok(&["ingest", "--from-file", grown.to_str().unwrap()])
            .await;
        assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 30);
    }
    assert_eq!(
        app.count("SELECT count(DISTINCT source) FROM etl.file_batches")
            .await,
        1,
        "every range is claimed under the input's first fingerprint"
    );
}
