//! Re-identification risk: `etl privacy report` against a table whose classes are known, the
//! network column ingest writes with `--ip-prefix`, and `etl privacy check`.

use serde_json::Value;

use crate::helpers::{assert_exit, event, TestApp};

/// Three classes over (device_type, locale, app_version, create_date):
/// - android/en: six users, a row each, six masked ips;
/// - ios/NULL locale: two users, four rows, one masked ip for all (a homogeneous class);
/// - android/fr: one user, one row, whose device mask u-1 shares.
async fn known_classes(app: &TestApp) {
    let mut rows: Vec<(&str, &str, Option<&str>, String, String)> = Vec::new();
    for i in 1..=6 {
        rows.push((
            "android",
            "u-a",
            Some("en"),
            format!("ip-a{i}"),
            format!("dev-a{i}"),
        ));
    }
    for (user, device) in [
        ("u-7", "dev-7"),
        ("u-7", "dev-7"),
        ("u-7", "dev-7"),
        ("u-8", "dev-8"),
    ] {
        rows.push(("ios", user, None, "ip-shared".into(), device.into()));
    }
    rows.push(("android", "u-9", Some("fr"), "ip-c".into(), "dev-a1".into()));
    for (n, (device_type, user, locale, ip, device)) in rows.into_iter().enumerate() {
        // The six android/en rows belong to six users.
        let user = if user == "u-a" {
            format!("u-{n}")
        } else {
            user.to_owned()
        };
        sqlx::query(
            "INSERT INTO user_logins (user_id, device_type, masked_ip, masked_device_id, locale, \
             app_version, create_date) VALUES ($1, $2, $3, $4, $5, 2003000, '2026-12-01')",
        )
        .bind(user)
        .bind(device_type)
        .bind(ip)
        .bind(device)
        .bind(locale)
        .execute(&app.pool)
        .await
        .unwrap();
    }
}

fn report_json(stdout: &str) -> Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|err| panic!("{err}: {stdout}"))
}

#[tokio::test]
async fn the_report_finds_the_known_smallest_class_and_who_sits_below_k() {
    let app = TestApp::spawn().await;
    known_classes(&app).await;

    let report = report_json(&app.etl_ok(&["privacy", "report", "--format", "json"]).await);
    let expected = [
        ("rows", 11),
        ("users", 9),
        ("classes", 3),
        ("smallest_class", 1),
        ("classes_below_k", 2),
        ("rows_below_k", 5),
        ("users_below_k", 3),
        ("l_diversity", 1),
        ("homogeneous_classes", 1),
        ("single_user_masked_ip", 7),
        ("single_user_masked_device_id", 7),
        ("single_user_masks", 14),
        ("k", 5),
    ];
    for (key, value) in expected {
        assert_eq!(report[key], value, "{key} in {report}");
    }
    assert_eq!(
        report["quasi_identifiers"],
        serde_json::json!(["device_type", "locale", "app_version", "create_date"])
    );

    // k = 2 leaves only the one-user class below; the analyst role may run it.
    let (_, analyst) = app.login_user("etl_analyst").await;
    let output = app
        .etl_as(
            &analyst,
            &["privacy", "report", "--k", "2", "--format", "json"],
        )
        .await;
    assert_exit(&output, 0);
    let report = report_json(&String::from_utf8_lossy(&output.stdout));
    for (key, value) in [
        ("classes_below_k", 1),
        ("rows_below_k", 1),
        ("users_below_k", 1),
    ] {
        assert_eq!(report[key], value, "{key} in {report}");
    }

    // Fewer quasi-identifiers, larger classes: by device_type alone, ios holds two users.
    let report = report_json(
        &app.etl_ok(&[
            "privacy",
            "report",
            "--quasi-identifiers",
            "device_type",
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(report["classes"], 2, "{report}");
    assert_eq!(report["smallest_class"], 2, "{report}");
    assert_eq!(report["users_below_k"], 2, "{report}");
}

#[tokio::test]
async fn the_report_prints_words_and_a_textfile_and_names_no_value() {
    let app = TestApp::spawn().await;
    known_classes(&app).await;
    let textfile = std::env::temp_dir().join(format!("etl-privacy-{}.prom", uuid::Uuid::new_v4()));

    let text = app
        .etl_ok(&[
            "privacy",
            "report",
            "--metrics-file",
            textfile.to_str().unwrap(),
        ])
        .await;
    assert!(text.contains("smallest: 1 user\n"), "{text}");
    assert!(
        text.contains("below k=5: 3 users of 5 rows in 2 classes"),
        "{text}"
    );
    let metrics = std::fs::read_to_string(&textfile).unwrap();
    std::fs::remove_file(&textfile).unwrap();
    assert!(
        metrics.contains("etl_privacy_smallest_class{k=\"5\"} 1\n"),
        "{metrics}"
    );
    assert!(
        metrics.contains("etl_privacy_users_below_k{k=\"5\"} 3\n"),
        "{metrics}"
    );
    assert!(metrics.contains("etl_privacy_report_last_success_timestamp_seconds "));
    for output in [&text, &metrics] {
        assert!(!output.contains("ip-") && !output.contains("dev-") && !output.contains("u-"));
    }

    // A role that may not read user_logins is told which may.
    let (_, recoverer) = app.login_user("etl_recoverer").await;
    let output = app.etl_as(&recoverer, &["privacy", "report"]).await;
    assert_exit(&output, 2);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("etl_analyst"), "{stderr}");
    // k below 2 says nothing: refused as a usage error.
    assert_exit(&app.etl(&["privacy", "report", "--k", "1"]).await, 2);
}

/// `etl privacy check`'s lines, by check name: (passed, the whole line).
fn check_lines(stdout: &str) -> Vec<(bool, String)> {
    stdout
        .lines()
        .map(|line| (line.starts_with("PASS  "), line.to_owned()))
        .collect()
}

#[tokio::test]
async fn the_check_passes_once_configured_and_fails_when_an_analyst_role_reaches_the_vault() {
    let app = TestApp::spawn().await;
    let (_, analyst) = app.login_user("etl_analyst").await;

    // As migrated: recovery without approval or limit, and nothing expires.
    let output = app.etl(&["privacy", "check"]).await;
    assert_exit(&output, 1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines = check_lines(&stdout);
    assert_eq!(lines.len(), 7, "{stdout}");
    let failed: Vec<&str> = lines
        .iter()
        .filter(|(passed, _)| !passed)
        .map(|(_, line)| line.as_str())
        .collect();
    assert_eq!(failed.len(), 2, "{stdout}");
    assert!(
        failed[0].starts_with("FAIL  recovery under policy: "),
        "{stdout}"
    );
    assert!(failed[1].starts_with("FAIL  retention: "), "{stdout}");
    // Roles are the cluster's: other tests' analyst logins read this database's table too.
    assert!(
        stdout.contains(
            "PASS  domain user_logins: masks of ip and device_id under mask key v1; read by the \
             owner and etl_analyst ("
        ),
        "{stdout}"
    );

    app.etl_ok(&["recover", "policy", "set", "--approvals", "1"])
        .await;
    app.etl_ok(&["retention", "set", "--logins", "400", "--quarantine", "30"])
        .await;
    let stdout = app.etl_ok(&["privacy", "check"]).await;
    assert!(
        check_lines(&stdout).iter().all(|(passed, _)| *passed),
        "{stdout}"
    );

    // An analyst role granted the vault: the check fails, naming the role and the table.
    sqlx::query("GRANT SELECT ON vault.entries TO etl_analyst")
        .execute(&app.pool)
        .await
        .unwrap();
    let output = app.etl(&["privacy", "check"]).await;
    assert_exit(&output, 1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let apart = stdout
        .lines()
        .find(|line| line.contains("analysts kept apart"))
        .unwrap_or_default();
    assert!(apart.starts_with("FAIL  analysts kept apart: "), "{stdout}");
    assert!(
        apart.contains("etl_analyst reads vault.entries"),
        "{stdout}"
    );

    // A grant of one column of user_logins makes a reader too.
    let column_reader = format!("cols_{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    for sql in [
        "REVOKE SELECT ON vault.entries FROM etl_analyst".to_owned(),
        format!("CREATE ROLE {column_reader} NOLOGIN"),
        format!("GRANT SELECT (masked_ip) ON user_logins TO {column_reader}"),
        format!("GRANT SELECT ON etl.quarantine TO {column_reader}"),
    ] {
        sqlx::query(&sql).execute(&app.pool).await.unwrap();
    }
    let stdout = String::from_utf8(app.etl(&["privacy", "check"]).await.stdout).unwrap();
    assert!(
        stdout.contains(&format!(
            "FAIL  analysts kept apart: {column_reader} reads etl.quarantine"
        )),
        "{stdout}"
    );

    // PUBLIC reading the masks fails the domain's line.
    sqlx::query("GRANT SELECT ON user_logins TO PUBLIC")
        .execute(&app.pool)
        .await
        .unwrap();
    let output = app.etl(&["privacy", "check"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("FAIL  domain user_logins: PUBLIC may read"),
        "{stdout}"
    );

    // The check reads the keyring: an analyst cannot run it.
    let output = app.etl_as(&analyst, &["privacy", "check"]).await;
    assert_exit(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("as the owner"));
}

/// (ip, its network at 24,48) for IPv4, IPv6 and an IPv4-mapped IPv6 address.
const NETWORKS: [(&str, &str); 4] = [
    ("203.0.113.77", "203.0.113.0/24"),
    ("203.0.113.200", "203.0.113.0/24"),
    ("2001:db8:abcd:12::1", "2001:db8:abcd::/48"),
    ("::ffff:198.51.100.9", "198.51.100.0/24"),
];

async fn networks(app: &TestApp) -> Vec<Option<String>> {
    sqlx::query_scalar("SELECT ip_network::text FROM user_logins ORDER BY ip_network, user_id")
        .fetch_all(&app.pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn ingest_writes_the_ip_network_where_configured_and_analysts_count_by_it() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = NETWORKS
        .iter()
        .enumerate()
        .map(|(i, (ip, _))| event(ip, &format!("555-00-{i:04}")))
        .collect();

    // Off by default.
    app.send(&bodies[..1]).await;
    app.drain(&[]).await;
    assert_eq!(networks(&app).await, vec![None]);
    sqlx::query("DELETE FROM user_logins")
        .execute(&app.pool)
        .await
        .unwrap();

    // The SQS path, with the flag.
    app.send(&bodies).await;
    let (summary, logs) = app.drain(&["--ip-prefix", "24,48"]).await;
    assert_eq!(summary.written, 4);
    assert!(logs.contains("ip_prefix=24,48"), "{logs}");
    let mut expected: Vec<Option<String>> = NETWORKS
        .iter()
        .map(|(_, n)| Some((*n).to_owned()))
        .collect();
    expected.sort();
    let mut got = networks(&app).await;
    got.sort();
    assert_eq!(got, expected);

    // The file path, with ETL_IP_PREFIX; a /16 this time.
    let path = std::env::temp_dir().join(format!("etl-prefix-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&path, event("192.0.2.99", "555-01-0001") + "\n").unwrap();
    let output = app
        .command(&["ingest", "--from-file", path.to_str().unwrap()])
        .env("ETL_IP_PREFIX", "16,40")
        .output()
        .await
        .unwrap();
    std::fs::remove_file(&path).unwrap();
    assert_exit(&output, 0);
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE ip_network = '192.0.0.0/16'")
            .await,
        1
    );

    // An analyst counts logins per network, and the report takes the network as a
    // quasi-identifier.
    let (_, analyst) = app.login_user("etl_analyst").await;
    let pool = sqlx::PgPool::connect(&analyst).await.unwrap();
    let per_network: Vec<(String, i64)> = sqlx::query_as(
        "SELECT ip_network::text, count(*) FROM user_logins GROUP BY 1 ORDER BY 2 DESC, 1",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(per_network[0], ("203.0.113.0/24".to_owned(), 2));
    assert_eq!(per_network.len(), 4);
    let report = report_json(
        &app.etl_ok(&[
            "privacy",
            "report",
            "--quasi-identifiers",
            "ip_network",
            "--format",
            "json",
        ])
        .await,
    );
    assert_eq!(report["classes"], 4, "{report}");
    assert_eq!(report["smallest_class"], 1, "{report}");

    // A full-length prefix would be the ip itself: refused before anything runs.
    let output = app
        .etl(&["ingest", "--drain", "--ip-prefix", "32,48"])
        .await;
    assert_exit(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("full-length"));
}

#[tokio::test]
async fn fill_networks_gives_earlier_rows_their_network_on_record_and_once() {
    let app = TestApp::spawn().await;
    let bodies: Vec<String> = NETWORKS
        .iter()
        .enumerate()
        .map(|(i, (ip, _))| event(ip, &format!("556-00-{i:04}")))
        .collect();
    app.ingest(&bodies).await;
    assert_eq!(networks(&app).await, vec![None; 4]);

    let fill = [
        "privacy",
        "fill-networks",
        "--ip-prefix",
        "24,48",
        "--reason",
        "networks for the analysts",
    ];
    let out = app.etl_ok(&fill).await;
    assert!(out.contains("user_logins=4"), "{out}");
    let mut expected: Vec<Option<String>> = NETWORKS
        .iter()
        .map(|(_, n)| Some((*n).to_owned()))
        .collect();
    expected.sort();
    let mut got = networks(&app).await;
    got.sort();
    assert_eq!(got, expected);

    // Again: nothing is left to fill; every run is on record, before and after.
    let out = app.etl_ok(&fill).await;
    assert!(out.contains("vault_entries=0 user_logins=0"), "{out}");
    // Nor with another prefix than the rows hold.
    let mut other = fill;
    other[3] = "16,48";
    assert_exit(&app.etl(&other).await, 2);
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM recovery.audit_log WHERE kind = 'network_fill' ORDER BY id",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, ["opening", "filled", "opening", "filled"]);

    // An analyst may not open the vault to fill them.
    let (_, analyst) = app.login_user("etl_analyst").await;
    let output = app.etl_as(&analyst, &fill).await;
    assert_exit(&output, 2);
    assert!(String::from_utf8_lossy(&output.stderr).contains("owner"));
}
