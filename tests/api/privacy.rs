//! Personal data stays in the vault ciphertext: not in other columns, not in logs; and the vault
//! opens to the original values only for the right row.

use etl::domain::{LoginEvent, PiiField};

use crate::helpers::{sample_bodies, TestApp};

/// Every table of the product's schemas, each row as text.
async fn all_rows_as_text(app: &TestApp) -> String {
    let tables: Vec<(String, String)> = sqlx::query_as(
        "SELECT table_schema::text, table_name::text FROM information_schema.tables \
         WHERE table_schema IN ('public', 'etl', 'vault', 'keyring') AND table_type = 'BASE TABLE'",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(tables.len() >= 5, "{tables:?}");
    let mut text = String::new();
    for (schema, table) in tables {
        let rows: Vec<String> =
            sqlx::query_scalar(&format!(r#"SELECT t::text FROM "{schema}"."{table}" AS t"#))
                .fetch_all(&app.pool)
                .await
                .unwrap();
        text.extend(rows.into_iter().map(|row| row + "\n"));
    }
    text
}

#[tokio::test]
async fn no_raw_ip_device_id_or_body_in_tables_or_verbose_logs() {
    let app = TestApp::spawn().await;
    let bodies = sample_bodies();
    app.send(&bodies).await;
    let (summary, logs) = app.drain(&["--log-level", "trace"]).await;
    assert_eq!(summary.deleted, bodies.len() as u64);
    assert!(logs.lines().count() > 10, "expected verbose logs");

    let tables = all_rows_as_text(&app).await;
    assert!(
        tables.contains(r"\x"),
        "bytea columns are present in the dump"
    );
    let mut secrets: Vec<String> = Vec::new();
    for body in &bodies {
        secrets.push(body.clone());
        if let Ok(event) = LoginEvent::parse(body) {
            secrets.push(event.ip.canonical());
            secrets.push(event.device_id.canonical().to_owned());
        }
    }
    for secret in &secrets {
        assert!(
            !tables.contains(secret.as_str()),
            "a raw value is stored outside the vault"
        );
        assert!(
            !logs.contains(secret.as_str()),
            "a raw value reached the logs"
        );
    }
}

#[tokio::test]
async fn every_vault_entry_opens_to_its_value_and_only_in_its_row() {
    let app = TestApp::spawn().await;
    let bodies = sample_bodies();
    app.send(&bodies).await;
    app.drain(&[]).await;

    let transformer = app.transformer().await;
    let rows: Vec<(String, String, i32, Vec<u8>)> = sqlx::query_as(
        "SELECT field, encode(mask, 'hex'), vault_key_version, ciphertext FROM vault.entries",
    )
    .fetch_all(&app.pool)
    .await
    .unwrap();
    assert!(!rows.is_empty());
    let mut expected = std::collections::HashSet::new();
    for event in bodies.iter().filter_map(|b| LoginEvent::parse(b).ok()) {
        expected.insert(("ip".to_owned(), event.ip.canonical()));
        expected.insert((
            "device_id".to_owned(),
            event.device_id.canonical().to_owned(),
        ));
    }
    let sealer = transformer.sealer();
    let masker = transformer.masker();
    for (field_name, mask, version, ciphertext) in &rows {
        assert_eq!(*version, sealer.version());
        let field = if field_name == "ip" {
            PiiField::Ip
        } else {
            PiiField::DeviceId
        };
        let value = sealer.open_value(field, mask, ciphertext).unwrap();
        assert!(expected.contains(&(field_name.clone(), value.to_string())));
        assert_eq!(
            &masker.mask(field, &value),
            mask,
            "the mask is the value's mask"
        );
        let other_field = if field == PiiField::Ip {
            PiiField::DeviceId
        } else {
            PiiField::Ip
        };
        assert!(sealer.open_value(other_field, mask, ciphertext).is_err());
        let other_mask = &rows.iter().find(|r| &r.1 != mask).unwrap().1;
        assert!(sealer.open_value(field, other_mask, ciphertext).is_err());
    }
    assert_eq!(rows.len(), expected.len());
}
