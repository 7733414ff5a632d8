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
    assert_eq!(purposes, ["mask", "quarantine", "vault"]);
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
    app.etl_ok(&["migrate"]).await;
    app.etl_ok(&["migrate"]).await;
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
