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
        let domain = sql.replace("{t}", &table).replace("{u}", "masked_user_id");
        let (main, domain) = (count(&app, &main).await, count(&app, &domain).await);
        assert_eq!(main, domain, "{what}");
        assert!(main > 0, "{what}");
    }
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
