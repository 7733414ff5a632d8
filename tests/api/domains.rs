//! Pseudonymisation domains: masks of their own, counts that agree with `user_logins`, a reader
//! role of their own, and erasure, retention and a running ingest reaching every domain.

use std::time::Duration;

use serde_json::Value;

use crate::helpers::{assert_exit, event, wait_until, TestApp};

/// A domain name of this test's own: roles are the cluster's, and tests run side by side.
fn domain_name(prefix: &str) -> String {
    format!(
        "{prefix}_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.count(sql).await
}

/// Counting and joining inside a domain gives what it gives on `user_logins`.
async fn assert_counts_agree(app: &TestApp, table: &str) {
    // {u} is the user column: the id in user_logins, the domain's mask of it in a domain.
    for (what, sql) in [
        ("rows", "SELECT count(*) FROM {t}"),
        ("users", "SELECT count(DISTINCT {u}) FROM {t}"),
        ("ips", "SELECT count(DISTINCT masked_ip) FROM {t}"),
        (
            "devices",
            "SELECT count(DISTINCT masked_device_id) FROM {t}",
        ),
        (
            "rows sharing an ip",
            "SELECT count(*) FROM {t} a JOIN {t} b ON a.masked_ip = b.masked_ip AND a.{u} < b.{u}",
        ),
        (
            "rows sharing a device",
            "SELECT count(*) FROM {t} a JOIN {t} b ON a.masked_device_id = b.masked_device_id \
             AND a.{u} < b.{u}",
        ),
    ] {
        let main = sql.replace("{t}", "user_logins").replace("{u}", "user_id");
        let domain = sql.replace("{t}", table).replace("{u}", "masked_user_id");
        let (main, domain) = (count(app, &main).await, count(app, &domain).await);
        assert_eq!(main, domain, "{what}");
        assert!(main > 0, "{what}");
    }
}

#[tokio::test]
async fn a_domain_masks_apart_and_counts_and_joins_as_user_logins_does() {
    let app = TestApp::spawn().await;
    let name = domain_name("marketing");
    let added = app.etl_ok(&["domains", "add", &name]).await;
    let role = format!("etl_domain_{name}");
    assert!(added.contains(&format!("read by {role}")), "{added}");
    let again = app.etl_ok(&["domains", "add", &name]).await;
    assert!(again.contains("nothing changed"), "{again}");
    assert_exit(&app.etl(&["domains", "add", "Bad-Name"]).await, 2);

    // Two rows share an ip, two a device: duplicates to count and join on.
    let bodies = vec![
        event("198.51.100.1", "111-11-1111"),
        event("198.51.100.1", "222-22-2222"),
        event("198.51.100.2", "222-22-2222"),
        event("2001:db8::1", "333-33-3333"),
    ];
    app.ingest(&bodies).await;
    let table = format!("domains.{name}");
    assert_counts_agree(&app, &table).await;
    // The same counts, under masks (and user masks) no user_logins row has: nothing joins.
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) FROM {table} d JOIN user_logins u \
                 ON d.masked_ip IN (u.masked_ip, u.masked_device_id) \
                 OR d.masked_device_id IN (u.masked_ip, u.masked_device_id) \
                 OR d.masked_user_id = u.user_id"
            )
        )
        .await,
        0
    );

    // The domain's role reads the domain and nothing else; the analysts do not read it.
    let (_, reader) = app.login_user(&role).await;
    let reader = sqlx::PgPool::connect(&reader).await.unwrap();
    let rows: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM {table}"))
        .fetch_one(&reader)
        .await
        .unwrap();
    assert_eq!(rows, 4);
    let (_, analyst) = app.login_user("etl_analyst").await;
    let analyst = sqlx::PgPool::connect(&analyst).await.unwrap();
    for (pool, sql) in [
        (&reader, "SELECT count(*) FROM user_logins".to_owned()),
        // nor the erasure hash of its own rows
        (&reader, format!("SELECT count(user_hash) FROM {table}")),
        (&analyst, format!("SELECT count(*) FROM {table}")),
    ] {
        let refused = sqlx::query_scalar::<_, i64>(&sql)
            .fetch_one(pool)
            .await
            .unwrap_err();
        assert!(
            matches!(&refused, sqlx::Error::Database(db) if db.code().as_deref() == Some("42501")),
            "{refused}"
        );
    }

    // A second domain masks the same ip apart from the first.
    let other = domain_name("risk");
    app.etl_ok(&["domains", "add", &other]).await;
    app.ingest(&[event("198.51.100.1", "444-44-4444")]).await;
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM domains.{other}")).await,
        1
    );
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM {table}")).await,
        5
    );
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) FROM domains.{other} o JOIN {table} d \
                 ON o.masked_ip = d.masked_ip OR o.masked_user_id = d.masked_user_id"
            )
        )
        .await,
        0
    );
    let listed: Value =
        serde_json::from_str(&app.etl_ok(&["domains", "list", "--format", "json"]).await).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["name"].as_str().unwrap())
        .collect();
    let mut expected = vec![name.as_str(), other.as_str()];
    expected.sort_unstable();
    assert_eq!(names, expected);

    // The check names each domain; a role reading two domains fails the line of each.
    let stdout = app.etl(&["privacy", "check"]).await.stdout;
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        stdout.contains(&format!(
            "PASS  domain {name}: table {table}, masks of ip and device_id under the domain's key v1; read by the owner and {role} (1 login)"
        )),
        "{stdout}"
    );
    let (crosser, _) = app.login_user(&format!("etl_domain_{other}")).await;
    sqlx::query(&format!("GRANT etl_analyst TO {crosser}"))
        .execute(&app.pool)
        .await
        .unwrap();
    let output = app.etl(&["privacy", "check"]).await;
    assert_exit(&output, 1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains(&format!(
            "FAIL  domain {other}: {crosser} reads user_logins"
        )),
        "{stdout}"
    );
}

#[tokio::test]
async fn erasure_retention_and_a_running_ingest_reach_every_domain() {
    let app = TestApp::spawn().await;
    // A service already running when the domain is added writes its rows from then on.
    let mut child = app
        .command(&["ingest", "--wait-seconds", "1", "--batch-wait", "100ms"])
        .spawn()
        .unwrap();
    app.send(&[event("203.0.113.1", "555-55-5555")]).await;
    wait_until(Duration::from_secs(60), "the first row", || async {
        app.count("SELECT count(*) FROM user_logins").await == 1
    })
    .await;
    let name = domain_name("support");
    let table = format!("domains.{name}");
    app.etl_ok(&["domains", "add", &name]).await;
    let bodies: Vec<String> = (0..6)
        .map(|i| {
            event(
                &format!("203.0.113.{}", 10 + i % 3),
                &format!("555-00-{i:04}"),
            )
        })
        .collect();
    app.send(&bodies).await;
    wait_until(Duration::from_secs(60), "the next rows", || async {
        app.count("SELECT count(*) FROM user_logins").await == 7
    })
    .await;
    child.kill().await.unwrap();
    // The rows committed after the domain was added, each once.
    for sql in ["SELECT count(*)", "SELECT count(DISTINCT masked_user_id)"] {
        assert_eq!(
            count(&app, &format!("{sql} FROM {table}")).await,
            6,
            "{sql}"
        );
    }

    // Erasure: the person's rows go from the domain too, found by the user key's hash.
    let body: Value = serde_json::from_str(&bodies[0]).unwrap();
    let user = body["user_id"].as_str().unwrap();
    let erased = app
        .etl_ok(&["forget", "--user-id", user, "--reason", "erasure request"])
        .await;
    assert!(erased.contains(" domain_rows=1"), "{erased}");
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM {table}")).await,
        5
    );
    // The person's receipt counts them.
    let receipt: String = sqlx::query_scalar(
        "SELECT detail FROM recovery.audit_log WHERE kind = 'erasure' ORDER BY id DESC LIMIT 1",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        receipt.starts_with("user_logins=1 vault_entries=") && receipt.contains(" domain_rows=1 "),
        "{receipt}"
    );

    // Retention: the domain's rows expire with user_logins'.
    for t in ["user_logins", table.as_str()] {
        sqlx::query(&format!(
            "UPDATE {t} SET create_date = current_date - 100 WHERE ctid IN \
             (SELECT ctid FROM {t} LIMIT 2)"
        ))
        .execute(&app.pool)
        .await
        .unwrap();
    }
    app.etl_ok(&["retention", "set", "--logins", "30"]).await;
    let pass: Value = serde_json::from_str(
        &app.etl_ok(&[
            "retention",
            "apply",
            "--format",
            "json",
            "--nice-ratio",
            "0",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(pass["domain_rows"], 2, "{pass}");
    assert_eq!(
        count(&app, &format!("SELECT count(*) FROM {table}")).await,
        3
    );
}

/// `event`, by a given user: a user's rows to count and join on.
fn event_of(user: &str, ip: &str, device_id: &str) -> String {
    let mut body: Value = serde_json::from_str(&event(ip, device_id)).unwrap();
    body["user_id"] = user.into();
    body.to_string()
}

async fn masks_of(app: &TestApp, table: &str) -> Vec<String> {
    sqlx::query_scalar(&format!(
        "SELECT m FROM {table}, LATERAL (VALUES (masked_ip), (masked_device_id), \
         (masked_user_id)) v(m) ORDER BY 1"
    ))
    .fetch_all(&app.pool)
    .await
    .unwrap()
}

#[tokio::test]
async fn a_domain_key_rotates_and_its_rows_are_remasked_beside_a_running_ingest() {
    let app = TestApp::spawn().await;
    let name = domain_name("research");
    let table = format!("domains.{name}");
    app.etl_ok(&["domains", "add", &name]).await;
    assert_exit(&app.etl(&["domains", "remask", &name]).await, 0);
    // Before the rotation: values the later rows share.
    app.ingest(&[
        event_of("user-a", "192.0.2.1", "100-00-0001"),
        event_of("user-a", "192.0.2.2", "100-00-0001"),
        event_of("user-b", "192.0.2.1", "100-00-0002"),
        event_of("user-c", "2001:db8::7", "100-00-0003"),
    ])
    .await;
    let before = masks_of(&app, &table).await;

    let mut child = app
        .command(&["ingest", "--wait-seconds", "1", "--batch-wait", "100ms"])
        .spawn()
        .unwrap();
    let rotated = app.etl_ok(&["domains", "rotate", &name]).await;
    assert!(rotated.contains("v2 pending"), "{rotated}");
    let listed: Value =
        serde_json::from_str(&app.etl_ok(&["domains", "list", "--format", "json"]).await).unwrap();
    assert_eq!(listed[0]["key_version"], 1, "{listed}");
    assert_eq!(listed[0]["pending_key_version"], 2, "{listed}");
    let twice = app.etl(&["domains", "rotate", &name]).await;
    assert_exit(&twice, 2);
    assert!(
        String::from_utf8_lossy(&twice.stderr).contains("pending key version 2"),
        "{twice:?}"
    );

    // The running service reloads and writes both versions' masks; the role reads only v1's.
    app.send(&[
        event_of("user-a", "192.0.2.1", "100-00-0004"),
        event_of("user-d", "192.0.2.9", "100-00-0001"),
    ])
    .await;
    wait_until(
        Duration::from_secs(60),
        "the rows after the rotation",
        || async { app.count("SELECT count(*) FROM user_logins").await == 6 },
    )
    .await;
    assert_eq!(
        count(
            &app,
            &format!(
                "SELECT count(*) FROM {table} WHERE mask_key_version = 1 \
                 AND next_mask_key_version = 2 AND next_masked_ip <> masked_ip"
            )
        )
        .await,
        2
    );
    let role = format!("etl_domain_{name}");
    for column in [
        "masked_ip",
        "next_masked_ip",
        "next_masked_user_id",
        "user_hash",
    ] {
        let readable: bool =
            sqlx::query_scalar("SELECT has_column_privilege($1, $2, $3, 'SELECT')")
                .bind(&role)
                .bind(&table)
                .bind(column)
                .fetch_one(&app.pool)
                .await
                .unwrap();
        assert_eq!(readable, column == "masked_ip", "{column}");
    }
    // Erasure while the version is pending: the person's rows go, and the re-mask maps the rest.
    let erased = app
        .etl_ok(&[
            "forget",
            "--user-id",
            "user-c",
            "--reason",
            "erasure request",
        ])
        .await;
    assert!(erased.contains(" domain_rows=1"), "{erased}");

    let remasked: Value = serde_json::from_str(
        &app.etl_ok(&[
            "domains", "remask", &name, "--format", "json", "--batch", "2",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(remasked["from_key_version"], 1, "{remasked}");
    assert_eq!(remasked["to_key_version"], 2, "{remasked}");
    // The three rows of before the rotation left were mapped; all five switched.
    assert_eq!(remasked["rows_prepared"], 3, "{remasked}");
    assert_eq!(remasked["rows_switched"], 5, "{remasked}");
    assert_eq!(remasked["user_ids"], 3, "{remasked}");

    // After the switch, rows of the running service carry v2 masks only, and equal values have
    // equal masks across the switch.
    app.send(&[event_of("user-b", "2001:db8::7", "100-00-0002")])
        .await;
    wait_until(
        Duration::from_secs(60),
        "the row after the switch",
        || async { app.count(&format!("SELECT count(*) FROM {table}")).await == 6 },
    )
    .await;
    child.kill().await.unwrap();
    assert_counts_agree(&app, &table).await;
    for (sql, expected) in [
        ("SELECT count(*) FROM {t} WHERE mask_key_version = 2", 6),
        (
            "SELECT count(*) FROM {t} WHERE num_nonnulls(next_masked_ip, next_masked_device_id, \
             next_masked_user_id, next_mask_key_version) > 0",
            0,
        ),
        // user-b's two rows, on v1 and v2 masks of one user: one user.
        ("SELECT count(DISTINCT masked_user_id) FROM {t}", 3),
    ] {
        assert_eq!(
            count(&app, &sql.replace("{t}", &table)).await,
            expected,
            "{sql}"
        );
    }
    let after = masks_of(&app, &table).await;
    assert!(
        before.iter().all(|mask| after.binary_search(mask).is_err()),
        "a v1 mask is left"
    );
    // Only the new key is kept; the rotation and the re-mask are on record.
    let keys: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM keyring.domain_keys WHERE domain = $1 ORDER BY 1")
            .bind(&name)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(keys, [2]);
    let trail: Vec<String> = sqlx::query_scalar(
        "SELECT kind || ':' || outcome FROM recovery.audit_log \
         WHERE detail LIKE 'domain=' || $1 || ' %' ORDER BY id",
    )
    .bind(&name)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        trail,
        [
            "domain_creation:created",
            "key_rotation:pending",
            "remask:opening",
            "remask:switched"
        ]
    );
    let again = app.etl_ok(&["domains", "remask", &name]).await;
    assert!(again.contains("nothing to re-mask"), "{again}");
}

#[tokio::test]
async fn a_domain_added_with_backfill_holds_every_row_once_and_erasure_reaches_them() {
    let app = TestApp::spawn().await;
    let mut child = app
        .command(&["ingest", "--wait-seconds", "1", "--batch-wait", "100ms"])
        .spawn()
        .unwrap();
    app.send(&[
        event_of("user-a", "192.0.2.1", "200-00-0001"),
        event_of("user-a", "192.0.2.2", "200-00-0001"),
        event_of("user-b", "192.0.2.1", "200-00-0002"),
        event_of("user-c", "2001:db8::9", "200-00-0003"),
    ])
    .await;
    wait_until(Duration::from_secs(60), "the rows of before", || async {
        app.count("SELECT count(*) FROM user_logins").await == 4
    })
    .await;
    let name = domain_name("history");
    let table = format!("domains.{name}");
    let added = app.etl_ok(&["domains", "add", &name, "--backfill"]).await;
    assert!(added.contains("filled with the 4 rows"), "{added}");
    // The running service writes the later rows itself: each row once.
    app.send(&[
        event_of("user-a", "192.0.2.1", "200-00-0004"),
        event_of("user-d", "192.0.2.9", "200-00-0001"),
    ])
    .await;
    wait_until(Duration::from_secs(60), "the rows after", || async {
        app.count(&format!("SELECT count(*) FROM {table}")).await == 6
    })
    .await;
    child.kill().await.unwrap();
    assert_counts_agree(&app, &table).await;
    assert_eq!(
        count(&app, "SELECT count(*) FROM user_logins").await,
        6,
        "exactly once"
    );
    let trail: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM recovery.audit_log WHERE kind = 'domain_creation' \
         AND detail LIKE 'domain=' || $1 || ' %' ORDER BY id",
    )
    .bind(&name)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(trail, ["opening", "created", "backfilled"]);
    // The rows of before carry the erasure hash: erasure finds them.
    let erased = app
        .etl_ok(&[
            "forget",
            "--user-id",
            "user-a",
            "--reason",
            "erasure request",
        ])
        .await;
    assert!(erased.contains(" domain_rows=3"), "{erased}");
    // Adding it again changes nothing, with or without --backfill.
    let again = app.etl_ok(&["domains", "add", &name, "--backfill"]).await;
    assert!(again.contains("nothing changed"), "{again}");
}

#[tokio::test]
async fn a_domain_remask_refuses_a_row_it_cannot_map_and_finishes_once_it_is_gone() {
    let app = TestApp::spawn().await;
    let name = domain_name("orphans");
    let table = format!("domains.{name}");
    app.etl_ok(&["domains", "add", &name]).await;
    app.ingest(&[
        event_of("user-a", "192.0.2.1", "300-00-0001"),
        event_of("user-b", "192.0.2.2", "300-00-0002"),
    ])
    .await;
    app.etl_ok(&["domains", "rotate", &name]).await;
    // A row whose values are in neither the vault nor user_logins (written by hand).
    sqlx::query(&format!(
        "INSERT INTO {table} (masked_user_id, device_type, masked_ip, masked_device_id, \
         create_date, mask_key_version) VALUES (md5('u'), 'ios', md5('i'), md5('d'), \
         current_date, 1)"
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let refused = app.etl(&["domains", "remask", &name]).await;
    assert_exit(&refused, 2);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains(&format!(
            "1 rows of {table} have no mask under key version 2"
        )) && stderr.contains("nothing was switched"),
        "{stderr}"
    );
    // Nothing switched: v1 masks where the role reads, v2 still pending, on record as aborted.
    assert_eq!(
        count(
            &app,
            &format!("SELECT count(*) FROM {table} WHERE mask_key_version = 1")
        )
        .await,
        3
    );
    let listed: Value =
        serde_json::from_str(&app.etl_ok(&["domains", "list", "--format", "json"]).await).unwrap();
    assert_eq!(listed[0]["pending_key_version"], 2, "{listed}");
    sqlx::query(&format!("DELETE FROM {table} WHERE device_type = 'ios'"))
        .execute(&app.pool)
        .await
        .unwrap();
    // The two rows were mapped by the first run: the rerun opens nothing and switches.
    let remasked: Value = serde_json::from_str(
        &app.etl_ok(&["domains", "remask", &name, "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(remasked["vault_entries"], 0, "{remasked}");
    assert_eq!(remasked["rows_prepared"], 0, "{remasked}");
    assert_eq!(remasked["rows_switched"], 2, "{remasked}");
    let outcomes: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM recovery.audit_log WHERE kind = 'remask' \
         AND detail LIKE 'domain=' || $1 || ' %' ORDER BY id",
    )
    .bind(&name)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(outcomes, ["opening", "aborted", "opening", "switched"]);
}

#[tokio::test]
async fn a_pending_domain_rotation_can_be_cancelled_and_its_number_is_not_used_again() {
    let app = TestApp::spawn().await;
    let name = domain_name("cancel");
    let table = format!("domains.{name}");
    app.etl_ok(&["domains", "add", &name]).await;
    app.ingest(&[
        event_of("user-a", "192.0.2.1", "400-00-0001"),
        event_of("user-b", "192.0.2.1", "400-00-0001"),
    ])
    .await;
    app.etl_ok(&["domains", "rotate", &name]).await;
    app.ingest(&[event_of("user-a", "192.0.2.3", "400-00-0001")])
        .await;
    let pending = format!("SELECT count(*) FROM {table} WHERE next_mask_key_version IS NOT NULL");
    assert_eq!(count(&app, &pending).await, 1);

    let cancelled = app.etl_ok(&["domains", "rotate", &name, "--cancel"]).await;
    assert!(
        cancelled.contains("pending mask key v2 cancelled"),
        "{cancelled}"
    );
    assert_eq!(count(&app, &pending).await, 0);
    let listed: Value =
        serde_json::from_str(&app.etl_ok(&["domains", "list", "--format", "json"]).await).unwrap();
    assert_eq!(listed[0]["pending_key_version"], Value::Null, "{listed}");
    let again = app.etl_ok(&["domains", "rotate", &name, "--cancel"]).await;
    assert!(again.contains("nothing changed"), "{again}");

    // The next rotation is v3: v2 named the cancelled key, which a process may still hold.
    let rotated = app.etl_ok(&["domains", "rotate", &name]).await;
    assert!(rotated.contains("v3 pending"), "{rotated}");
    let remasked: Value = serde_json::from_str(
        &app.etl_ok(&["domains", "remask", &name, "--format", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(remasked["to_key_version"], 3, "{remasked}");
    assert_eq!(remasked["rows_switched"], 3, "{remasked}");
    assert_counts_agree(&app, &table).await;
    let keys: Vec<i32> =
        sqlx::query_scalar("SELECT version FROM keyring.domain_keys WHERE domain = $1 ORDER BY 1")
            .bind(&name)
            .fetch_all(&app.pool)
            .await
            .unwrap();
    assert_eq!(keys, [3]);
    let rotations: Vec<String> = sqlx::query_scalar(
        "SELECT outcome FROM recovery.audit_log WHERE kind = 'key_rotation' \
         AND detail LIKE 'domain=' || $1 || ' %' ORDER BY id",
    )
    .bind(&name)
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(rotations, ["pending", "cancelled", "pending"]);
}
