//! The Query protocol client (for the reference LocalStack 0.14 image) against the local
//! LocalStack, which speaks both protocols: the same cases as the AWS JSON path.

use std::time::Duration;

use etl::adapters::sqs::{QueryQueue, Receipt, SqsProtocol, SqsQueue};

use crate::helpers::{event, sample_bodies, TestApp};

#[tokio::test]
async fn query_client_round_trips_bodies_byte_for_byte() {
    let app = TestApp::spawn().await;
    let queue = SqsQueue::Query(QueryQueue::new(&app.sdk, &app.queue_url).unwrap());
    let bodies: Vec<String> = vec![
        event("10.5.0.1", "500-00-0001"),
        r#"{"quotes": "\"x\"", "tag": "<b>&amp;</b>", "plus": "a+b=c&d"}"#.to_owned(),
        "unicode é ü 中文 📱 and a tab\tend".to_owned(),
        "line one\r\nline two".to_owned(),
    ];
    assert_eq!(queue.send_batch(&bodies).await.unwrap(), 0);

    let mut received = Vec::new();
    while received.len() < bodies.len() {
        received.extend(
            queue
                .receive(10, Duration::from_secs(1), Duration::from_secs(30))
                .await
                .unwrap(),
        );
    }
    let mut got: Vec<&str> = received.iter().map(|m| m.body.as_str()).collect();
    let mut sent: Vec<&str> = bodies.iter().map(String::as_str).collect();
    got.sort_unstable();
    sent.sort_unstable();
    assert_eq!(got, sent);
    assert!(received
        .iter()
        .all(|m| m.sent_timestamp.is_some() && m.receive_count == Some(1)));

    let receipts = Receipt::of_all(&received);
    assert!(queue
        .change_visibility_batch(&receipts, Duration::ZERO)
        .await
        .unwrap()
        .is_empty());
    let mut again = Vec::new();
    while again.len() < bodies.len() {
        again.extend(
            queue
                .receive(10, Duration::from_secs(1), Duration::from_secs(30))
                .await
                .unwrap(),
        );
    }
    assert!(again.iter().all(|m| m.receive_count == Some(2)));
    let receipts = Receipt::of_all(&again);
    assert!(queue.delete_batch(&receipts).await.unwrap().is_empty());
    let depth = queue.depth().await.unwrap();
    assert_eq!((depth.visible, depth.in_flight), (0, 0));
}

#[tokio::test]
async fn the_sample_drains_the_same_over_the_query_protocol() {
    let app = TestApp::spawn().await;
    let bodies = sample_bodies();
    let valid = bodies
        .iter()
        .filter(|b| etl::domain::LoginEvent::parse(b).is_ok())
        .count();
    app.send(&bodies).await;
    let (summary, logs) = app.drain(&["--sqs-protocol", "query"]).await;
    assert!(
        logs.contains("protocol=\"query\"") || logs.contains("protocol=query"),
        "{logs}"
    );
    assert_eq!(summary.written, valid as u64);
    assert_eq!(summary.deleted, bodies.len() as u64);
    app.assert_exactly_once(valid, bodies.len() - valid).await;
}

#[tokio::test]
async fn auto_detection_prefers_json_and_query_can_be_forced() {
    let app = TestApp::spawn().await;
    let (_, auto) = SqsQueue::connect(&app.sdk, &app.queue_url, SqsProtocol::Auto)
        .await
        .unwrap();
    assert_eq!(auto, SqsProtocol::Json);
    let (queue, forced) = SqsQueue::connect(&app.sdk, &app.queue_url, SqsProtocol::Query)
        .await
        .unwrap();
    assert_eq!(forced, SqsProtocol::Query);
    assert!(matches!(queue, SqsQueue::Query(_)));
    assert!(queue.depth().await.is_ok());
    let url = etl::adapters::sqs::query::get_queue_url(
        &app.sdk,
        &std::env::var("AWS_ENDPOINT_URL").unwrap(),
        app.queue_url.rsplit('/').next().unwrap(),
    )
    .await
    .unwrap();
    assert!(
        url.ends_with(app.queue_url.rsplit('/').next().unwrap()),
        "{url}"
    );
}
