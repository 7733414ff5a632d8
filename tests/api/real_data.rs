//! The real queue content end to end, and app_version encoding on its strings.

use std::collections::{BTreeMap, HashSet};

use etl::domain::{AppVersion, LoginEvent};

use crate::helpers::{real_sample_path, sample_bodies, TestApp};

#[tokio::test]
async fn sample_queue_ends_as_rows_and_quarantine_with_an_empty_queue() {
    let app = TestApp::spawn().await;
    let bodies = sample_bodies();
    let events: Vec<LoginEvent> = bodies
        .iter()
        .filter_map(|b| LoginEvent::parse(b).ok())
        .collect();
    let expected_rows = events.len() as i64;
    let expected_null_locales = events.iter().filter(|e| e.locale.is_none()).count() as i64;
    let distinct_ips: HashSet<String> = events.iter().map(|e| e.ip.canonical()).collect();
    let distinct_devices: HashSet<&str> = events.iter().map(|e| e.device_id.canonical()).collect();
    let expected_vault = (distinct_ips.len() + distinct_devices.len()) as i64;
    if real_sample_path().is_some() {
        assert_eq!(
            (
                bodies.len(),
                expected_rows,
                expected_null_locales,
                expected_vault
            ),
            (100, 99, 29, 198)
        );
    }

    let file = std::env::temp_dir().join(format!("etl-sample-{}.jsonl", uuid::Uuid::new_v4()));
    std::fs::write(&file, bodies.join("\n")).unwrap();
    app.etl_ok(&["dev", "seed", "--from-file", file.to_str().unwrap()])
        .await;
    std::fs::remove_file(&file).unwrap();

    let (summary, _) = app.drain(&[]).await;
    let invalid = bodies.len() as i64 - expected_rows;
    assert_eq!(summary.received, bodies.len() as u64);
    assert_eq!(summary.written, expected_rows as u64);
    assert_eq!(summary.quarantined, invalid as u64);
    assert_eq!(summary.duplicates_skipped, 0);
    assert_eq!(summary.deleted, bodies.len() as u64);

    assert_eq!(
        app.count("SELECT count(*) FROM user_logins").await,
        expected_rows
    );
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE locale IS NULL")
            .await,
        expected_null_locales
    );
    assert_eq!(
        app.count("SELECT count(*) FROM vault.entries").await,
        expected_vault
    );
    assert_eq!(
        app.count("SELECT count(*) FROM etl.quarantine").await,
        invalid
    );
    assert_eq!(
        app.count(
            "SELECT count(*) FROM user_logins WHERE user_id IS NULL OR masked_ip IS NULL \
                   OR masked_device_id IS NULL OR app_version IS NULL OR create_date IS NULL"
        )
        .await,
        0
    );
    assert_eq!(app.queue_depth().await, 0);

    let listed: serde_json::Value = serde_json::from_str(
        &app.etl_ok(&["quarantine", "list", "--format", "json"])
            .await,
    )
    .unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len() as i64, invalid);
    for entry in listed {
        assert!(
            entry["message_id"].is_string() && entry["received_at"].is_string(),
            "{entry}"
        );
        assert!(
            entry.get("body").is_none() && entry.get("body_ciphertext").is_none(),
            "{entry}"
        );
    }
    if real_sample_path().is_some() {
        assert_eq!(listed[0]["reason"], "missing_field");
        assert_eq!(listed[0]["detail"], "required field `user_id` is missing");
    }
}

#[test]
fn app_version_codes_keep_order_and_never_collide_across_versions() {
    let texts: HashSet<String> = sample_bodies()
        .iter()
        .filter_map(|body| serde_json::from_str::<serde_json::Value>(body).ok())
        .filter_map(|value| value["app_version"].as_str().map(str::to_owned))
        .chain((0..3000).map(|i| format!("{}.{}.{}", i % 7, (i * 37) % 1000, (i * 11) % 1000)))
        .chain((0..500).map(|i| format!("{}.{}", i % 13, i % 1000)))
        .collect();
    if real_sample_path().is_some() {
        assert!(texts.len() >= 96 + 3000);
    }
    // Distinct versions (numeric parts, missing parts as zero) must get distinct codes, in order.
    let mut by_version: BTreeMap<AppVersion, HashSet<i32>> = BTreeMap::new();
    for text in &texts {
        let version = AppVersion::parse(text).unwrap_or_else(|err| panic!("{text}: {err}"));
        by_version
            .entry(version)
            .or_default()
            .insert(version.code());
    }
    let codes: Vec<i32> = by_version
        .values()
        .map(|codes| {
            assert_eq!(codes.len(), 1);
            *codes.iter().next().unwrap()
        })
        .collect();
    assert!(
        codes.windows(2).all(|pair| pair[0] < pair[1]),
        "codes are not strictly increasing"
    );
}
