//! Hostile input, generated and hand-picked: every message ends as exactly one row or one
//! quarantine entry, and the process never panics.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::helpers::{event, TestApp};

/// Any JSON value, nested a few levels, with strings that may hold any unicode (NUL included).
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(|n| serde_json::json!(n)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| serde_json::json!(f)),
        ".{0,40}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Bodies shaped like events, with each field replaced by something hostile now and then.
fn hostile_body() -> impl Strategy<Value = String> {
    let field = |good: &'static str| {
        prop_oneof![
            3 => Just(serde_json::Value::String(good.to_owned())),
            1 => json_value(),
            1 => "\\PC{0,300}".prop_map(serde_json::Value::String),
        ]
    };
    let object = (
        field("3f1e3c1a-0000-4000-8000-000000000001"),
        field("2.3.0"),
        field("android"),
        field("10.0.0.1"),
        field("RU"),
        field("123-45-6789"),
        any::<bool>(),
    )
        .prop_map(|(user, version, device, ip, locale, device_id, drop_one)| {
            let mut map = serde_json::Map::new();
            for (key, value) in [
                ("user_id", user),
                ("app_version", version),
                ("device_type", device),
                ("ip", ip),
                ("locale", locale),
                ("device_id", device_id),
            ] {
                map.insert(key.to_owned(), value);
            }
            if drop_one {
                map.remove("locale");
            }
            serde_json::Value::Object(map).to_string()
        });
    prop_oneof![
        6 => object,
        1 => json_value().prop_map(|v| v.to_string()),
        1 => "\\PC{1,200}",
    ]
}

#[tokio::test]
async fn generated_and_hand_picked_hostile_bodies_each_end_exactly_once() {
    let app = TestApp::spawn().await;
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = hostile_body();
    let mut bodies: Vec<String> = (0..300)
        .map(|_| strategy.new_tree(&mut runner).unwrap().current())
        .filter(|body| !body.trim().is_empty())
        .collect();
    let valid = event("10.6.0.1", "600-00-0001");
    bodies.extend([
        // SQL injection text in every free-form field: stored as text, never executed.
        valid.replace("\"android\"", "\"'); DROP TABLE user_logins; --\""),
        // Duplicate keys, IPv6 and IPv4-mapped forms, escaped lone surrogates, deep nesting.
        valid.replacen('{', "{\"device_id\": \"1\", ", 1),
        valid.replace("\"10.6.0.1\"", "\"::ffff:10.6.0.1\""),
        valid.replace("\"10.6.0.1\"", "\"fe80::1ff:fe23:4567:890a\""),
        valid.replace("\"RU\"", "\"\\udc00\""),
        format!("{{\"a\": {}{}}}", "[".repeat(5000), "]".repeat(5000)),
        // Near the 256 KiB SQS limit.
        valid.replacen(
            '{',
            &format!("{{\"padding\": \"{}\", ", "x".repeat(255 * 1024)),
            1,
        ),
        "[]".into(),
        "null".into(),
        "\u{feff}{}".into(),
    ]);
    app.send(&bodies).await;
    let (summary, logs) = app.drain(&[]).await;
    assert!(!logs.contains("panicked"), "{logs}");
    let rows = app.count("SELECT count(*) FROM user_logins").await;
    let quarantined = app.count("SELECT count(*) FROM etl.quarantine").await;
    assert_eq!(rows + quarantined, bodies.len() as i64);
    assert_eq!(summary.deleted, bodies.len() as u64);
    assert!(rows >= 4, "the valid hand-picked bodies are written");
    assert!(quarantined >= 100, "most generated bodies are rejected");
    assert_eq!(
        app.count("SELECT count(*) FROM user_logins WHERE device_type LIKE '%DROP TABLE%'")
            .await,
        1
    );
    assert_eq!(app.queue_depth().await, 0);
}
