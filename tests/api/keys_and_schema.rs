//! `etl migrate` and `etl keys init`.

use sqlx::Executor;

use crate::helpers::TestApp;

#[tokio::test]
async fn keys_init_is_idempotent_and_stores_only_wrapped_keys() {
    let app = TestApp::spawn().await;
    let before: Vec<(String, i32, String, Vec<u8>)> = sqlx::query_as(
        "SELECT purpose, version, kms_key_id, wrapped_key FROM keyring.data_keys ORDER BY purpose",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    let purposes: Vec<&str> = before.iter().map(|k| k.0.as_str()).collect();
    assert_eq!(purposes, ["mask", "quarantine", "user", "vault"]);
    for (_, version, kms_key_id, wrapped) in &before {
        assert_eq!(*version, 1);
        assert!(kms_key_id.contains(&app.kms_key_id), "{kms_key_id}");
        assert!(wrapped.len() > 32, "a wrapped key is longer than the key");
    }

    let second = app
        .etl_ok(&["keys", "init", "--kms-key-id", &app.kms_key_id])
        .await;
    assert!(second.contains("nothing changed"), "{second}");
    let after: Vec<(String, i32, String, Vec<u8>)> = sqlx::query_as(
        "SELECT purpose, version, kms_key_id, wrapped_key FROM keyring.data_keys ORDER BY purpose",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(before, after);
}

#[tokio::test]
async fn keys_init_needs_a_kms_key() {
    let app = TestApp::spawn_bare().await;
    app.etl_ok(&["migrate"]).await;
    let output = app.etl(&["keys", "init"]).await;
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("--kms-key-id"));
    let output = app
        .etl(&["keys", "init", "--kms-key-id", "alias/does-not-exist"])
        .await;
    assert_eq!(output.status.code(), Some(2));
    assert_eq!(app.count("SELECT count(*) FROM keyring.data_keys").await, 0);
}

#[tokio::test]
async fn migrate_applies_over_the_reference_table_and_twice() {
    let app = TestApp::spawn_bare().await;
    // What the reference PostgreSQL image creates, with a row already in it.
    app.pool
        .execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), \
             masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), \
             app_version integer, create_date date); \
             INSERT INTO user_logins VALUES ('u', 'ios', 'm', 'd', NULL, 1, '2020-01-01')",
        )
        .await
        .unwrap();
    let total = etl::adapters::postgres::MIGRATOR.iter().count();
    let first = app.etl_ok(&["migrate"]).await;
    assert_eq!(
        first.trim(),
        format!(
            "applied {total} migrations: the schema is up to date ({total} of {total} migrations)"
        )
    );
    let second = app.etl_ok(&["migrate"]).await;
    assert!(second.starts_with("nothing to apply:"), "{second}");
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    let columns: Vec<String> = sqlx::query_scalar(
        "SELECT column_name::text FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'user_logins' ORDER BY ordinal_position",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert_eq!(
        &columns[..7],
        [
            "user_id",
            "device_type",
            "masked_ip",
            "masked_device_id",
            "locale",
            "app_version",
            "create_date"
        ]
    );
}

#[tokio::test]
async fn doctor_passes_on_a_ready_setup_and_says_what_to_do_otherwise() {
    let app = TestApp::spawn().await;
    let output = app
        .command(&["doctor", "--kms-key-id", &app.kms_key_id])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(
        stdout.contains("all checks passed") && !stdout.contains("FAIL"),
        "{stdout}"
    );
    let migrations = etl::adapters::postgres::MIGRATOR.iter().count();
    assert!(
        stdout.contains("owns the schema: every job")
            && stdout.contains(&format!(
                "OK    migrations applied: {migrations} of {migrations}"
            )),
        "{stdout}"
    );

    let bare = TestApp::spawn_bare().await;
    let output = bare.command(&["doctor"]).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  migrations applied") && stdout.contains("run `etl migrate`"),
        "{stdout}"
    );
    assert!(stdout.contains("FAIL  data keys"), "{stdout}");
}

/// Doctor as each job's login: no false failure, the membership named, what it cannot check as
/// that login said as such; a login in no etl role is told which grant it lacks.
#[tokio::test]
async fn doctor_checks_the_login_it_runs_as() {
    let app = TestApp::spawn().await;
    for (group, job) in [
        ("etl_ingest", "ingest"),
        ("etl_analyst", "analyst"),
        ("etl_recoverer", "recoverer"),
        ("etl_auditor", "auditor"),
        ("etl_privacy", "privacy officer"),
        ("etl_opener", "recovery service"),
        ("etl_approver", "approver"),
    ] {
        let (name, url) = app.login_user(group).await;
        let output = app.etl_as(&url, &["doctor"]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert_eq!(output.status.code(), Some(0), "{group}: {stdout}");
        assert!(!stdout.contains("FAIL"), "{group}: {stdout}");
        assert!(
            stdout.contains(&format!(
                "OK    login: {name} is a member of {group} (jobs: {job})"
            )),
            "{group}: {stdout}"
        );
        assert!(
            stdout.contains(&format!("OK    {job} access: ")),
            "{group}: {stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "SKIP  migrations applied: cannot check as {name}: only the schema owner"
            )),
            "{group}: {stdout}"
        );
        let keys_checked = matches!(group, "etl_ingest" | "etl_privacy");
        assert_eq!(
            stdout.contains("OK    data keys: "),
            keys_checked,
            "{group}: {stdout}"
        );
        assert!(output.stderr.is_empty(), "{group}: {stdout}");
    }

    // A login whose jobs call no AWS service needs no region, whatever the environment holds.
    let (_, analyst) = app.login_user("etl_analyst").await;
    let output = app
        .command(&["doctor", "--kms-key-id", &app.kms_key_id])
        .env("DATABASE_URL", &analyst)
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("SKIP  AWS: cannot check as"), "{stdout}");

    let (name, url) = app.login_user("etl_analyst").await;
    sqlx::query(&format!("REVOKE etl_analyst FROM {name}"))
        .execute(&app.pool)
        .await
        .unwrap();
    let output = app.etl_as(&url, &["doctor"]).await;
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains(&format!("FAIL  login: {name} is a member of no etl role"))
            && stdout.contains(&format!("TO {name}")),
        "{stdout}"
    );

    // Without a region: one line naming the variable, the AWS checks skipped, no SDK warnings.
    let output = app
        .command(&["doctor"])
        .env_remove("AWS_REGION")
        .env_remove("AWS_DEFAULT_REGION")
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert_eq!(output.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("FAIL  AWS region: no region configured\n      → set AWS_REGION"),
        "{stdout}"
    );
    assert!(
        stdout.contains("SKIP  data keys: cannot check: no AWS region"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("FAIL").count(), 1, "{stdout}");
    assert!(
        output.stderr.is_empty(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A newer vault key version wrapped under a KMS key of someone else's (here made with `keys
/// rotate`, as anyone who can write the keyring could plant it): unpinned, ingest would seal with
/// it; with ETL_KMS_KEY_ID set, ingest and the key jobs refuse it, exit 2, in one line.
#[tokio::test]
async fn a_data_key_under_another_kms_key_is_refused_when_the_key_is_pinned() {
    let app = TestApp::spawn().await;
    let other = crate::helpers::create_kms_key(&aws_sdk_kms::Client::new(&app.sdk)).await;
    app.etl_ok(&[
        "keys",
        "rotate",
        "--purpose",
        "vault",
        "--kms-key-id",
        &other,
    ])
    .await;
    app.send(&[crate::helpers::event("10.30.0.1", "300-00-0001")])
        .await;
    for args in [&["ingest", "--drain"][..], &["keys", "reseal"][..]] {
        let output = app
            .command(args)
            .env("ETL_KMS_KEY_ID", &app.kms_key_id)
            .output()
            .await
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        let last = stderr.trim().lines().last().unwrap_or_default();
        assert!(
            last.starts_with("error: ")
                && last.contains("refusing a keyring row wrapped under KMS key")
                && last.contains(&other)
                && last.contains("ETL_KMS_KEY_ID pins"),
            "{args:?}: {stderr}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 0);
    // Nor is the planted row re-wrapped into trust under a new key.
    let third = crate::helpers::create_kms_key(&aws_sdk_kms::Client::new(&app.sdk)).await;
    let rewrap = app
        .command(&["keys", "rewrap", "--kms-key-id", &third])
        .env("ETL_KMS_KEY_ID", &app.kms_key_id)
        .output()
        .await
        .unwrap();
    assert_eq!(rewrap.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&rewrap.stderr)
            .contains("refusing to re-wrap: vault key version 2"),
        "{}",
        String::from_utf8_lossy(&rewrap.stderr)
    );
    // Unpinned, the same run seals under the other key: what the pin prevents.
    let (summary, _) = app.drain(&[]).await;
    assert_eq!(summary.written, 1);
}

/// What an owner changes is on record, in the transaction of the change: data keys created,
/// rotated and re-wrapped, and the retention settings.
#[tokio::test]
async fn key_and_retention_changes_append_audit_rows_in_their_own_transaction() {
    let app = TestApp::spawn().await;
    let rows = |kind: &'static str| {
        let pool = app.pool.clone();
        async move {
            sqlx::query_scalar::<_, String>(
                "SELECT detail FROM recovery.audit_log WHERE kind = $1 ORDER BY id",
            )
            .bind(kind)
            .fetch_all(&pool)
            .await
            .unwrap()
        }
    };
    let created = rows("key_creation").await;
    assert_eq!(created.len(), 4, "{created:?}");
    assert!(
        created[0].starts_with("purpose=mask version=1 kms_key=arn:"),
        "{created:?}"
    );

    app.etl_ok(&["keys", "rotate", "--purpose", "vault"]).await;
    let same_transaction: bool = sqlx::query_scalar(
        "SELECT k.xmin::text = a.xmin::text FROM keyring.data_keys k, recovery.audit_log a \
         WHERE k.purpose = 'vault' AND k.version = 2 AND a.kind = 'key_rotation'",
    )
    .fetch_one(&app.pool)
    .await
    .unwrap();
    assert!(
        same_transaction,
        "the rotation and its audit row commit together"
    );

    let other = crate::helpers::create_kms_key(&aws_sdk_kms::Client::new(&app.sdk)).await;
    app.etl_ok(&["keys", "rewrap", "--kms-key-id", &other])
        .await;
    let rewrapped = rows("key_rewrap").await;
    assert_eq!(rewrapped.len(), 5, "every stored version: {rewrapped:?}");
    assert!(
        rewrapped.iter().all(|r| r.contains(&other)),
        "{rewrapped:?}"
    );

    app.etl_ok(&["retention", "set", "--logins", "30"]).await;
    assert_eq!(
        rows("retention_setting").await,
        ["logins_days=30 quarantine_days=0 claims_days=0 (0: forever)"]
    );
    app.etl_ok(&["audit", "verify"]).await;
}

/// The compose file's owner (deploy/compose/owner.sql): a login that is not a superuser migrates,
/// creates the data keys and ingests over the reference table, and the audit chain holds.
#[tokio::test]
async fn the_schema_owner_need_not_be_a_superuser() {
    let app = TestApp::spawn_bare().await;
    app.pool
        .execute(
            "CREATE TABLE user_logins(user_id varchar(128), device_type varchar(32), \
             masked_ip varchar(256), masked_device_id varchar(256), locale varchar(32), \
             app_version integer, create_date date)",
        )
        .await
        .unwrap();
    let owner = format!("o_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let setup = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/compose/owner.sql"),
    )
    .unwrap()
    // psql's own commands (`\o`) are not SQL.
    .lines()
    .filter(|line| !line.starts_with('\\'))
    .collect::<Vec<_>>()
    .join("\n")
    .replace("etl_owner", &owner)
    .replace(":'owner_password'", "'pw'");
    sqlx::raw_sql(&setup).execute(&app.pool).await.unwrap();
    let superuser: bool = sqlx::query_scalar("SELECT rolsuper FROM pg_roles WHERE rolname = $1")
        .bind(&owner)
        .fetch_one(&app.pool)
        .await
        .unwrap();
    assert!(!superuser);
    let (_, host_and_db) = app.database_url.split_once('@').unwrap();
    let url = format!("postgres://{owner}:pw@{host_and_db}");
    for args in [
        &["migrate"][..],
        &["keys", "init", "--kms-key-id", &app.kms_key_id][..],
        &["doctor", "--kms-key-id", &app.kms_key_id][..],
    ] {
        let output = app.etl_as(&url, args).await;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    app.send(&[crate::helpers::event("10.32.0.1", "320-00-0001")])
        .await;
    let output = app.etl_as(&url, &["ingest", "--drain"]).await;
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(app.count("SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(
        app.etl_as(&url, &["audit", "verify"]).await.status.code(),
        Some(0)
    );
}
