//! The simulator's own tests: the real AWS SDK client, and etl's, against it in-process.

use super::*;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    Message as SdkMessage, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};
use etl::adapters::sqs::{Receipt, SqsProtocol, SqsQueue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A simulator on a free port with no latency, a queue `bench` and an SDK client for it.
#[derive(Clone)]
struct Harness {
    base_url: String,
    sdk: SdkConfig,
    sqs: aws_sdk_sqs::Client,
    queue_url: String,
}

async fn start() -> Harness {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let sim = Sim::new(port, Duration::ZERO, CancellationToken::new());
    let base_url = sim.base_url.clone();
    tokio::spawn(serve(listener, sim));
    let sdk = aws_config::defaults(BehaviorVersion::latest())
        .endpoint_url(&base_url)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new("test", "test", None, None, "sqs_sim"))
        .load()
        .await;
    let sqs = aws_sdk_sqs::Client::new(&sdk);
    let created = sqs.create_queue().queue_name("bench").send().await.unwrap();
    let queue_url = created.queue_url.unwrap();
    assert_eq!(queue_url, format!("{base_url}/000000000000/bench"));
    Harness {
        base_url,
        sdk,
        sqs,
        queue_url,
    }
}

impl Harness {
    async fn send(&self, bodies: &[&str]) {
        for chunk in bodies.chunks(MAX_BATCH) {
            let entries = chunk.iter().enumerate().map(|(i, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .message_body(*body)
                    .build()
                    .unwrap()
            });
            let output = self
                .sqs
                .send_message_batch()
                .queue_url(&self.queue_url)
                .set_entries(Some(entries.collect()))
                .send()
                .await
                .unwrap();
            assert_eq!(
                (output.successful.len(), output.failed.len()),
                (chunk.len(), 0)
            );
        }
    }

    async fn receive(&self, max: i32, wait: i32, visibility: i32) -> Vec<SdkMessage> {
        self.sqs
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max)
            .wait_time_seconds(wait)
            .visibility_timeout(visibility)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .send()
            .await
            .unwrap()
            .messages
            .unwrap_or_default()
    }

    /// (visible, in flight)
    async fn depth(&self) -> (String, String) {
        let output = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .unwrap();
        let attributes = output.attributes.unwrap();
        (
            attributes[&QueueAttributeName::ApproximateNumberOfMessages].clone(),
            attributes[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible].clone(),
        )
    }

    /// An unsigned call over a raw connection: (status line, body).
    async fn raw(&self, target: &str, body: &str) -> (String, String) {
        let address = self.base_url.trim_start_matches("http://");
        let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
        let request = format!(
            "POST / HTTP/1.1\r\nHost: {address}\r\nX-Amz-Target: {target}\r\n\
             Content-Type: application/x-amz-json-1.0\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = String::new();
        stream.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }
}

fn attribute(message: &SdkMessage, name: MessageSystemAttributeName) -> &str {
    &message.attributes.as_ref().unwrap()[&name]
}

fn delete_entry(id: &str, message: &SdkMessage) -> DeleteMessageBatchRequestEntry {
    DeleteMessageBatchRequestEntry::builder()
        .id(id)
        .receipt_handle(message.receipt_handle().unwrap())
        .build()
        .unwrap()
}

#[tokio::test]
async fn a_received_message_is_hidden_until_its_visibility_timeout_then_redelivered() {
    let sim = start().await;
    sim.send(&["hello"]).await;
    let first = sim.receive(10, 0, 1).await;
    let received_at = std::time::Instant::now();
    assert_eq!(first.len(), 1);
    let message = &first[0];
    assert_eq!(message.body(), Some("hello"));
    assert_eq!(
        message.md5_of_body(),
        Some("5d41402abc4b2a76b9719d911017c592")
    );
    assert_eq!(
        attribute(message, MessageSystemAttributeName::ApproximateReceiveCount),
        "1"
    );
    let sent: u64 = attribute(message, MessageSystemAttributeName::SentTimestamp)
        .parse()
        .unwrap();
    assert!(
        sent.abs_diff(now_ms()) < 60_000,
        "SentTimestamp is in milliseconds: {sent}"
    );

    assert!(
        sim.receive(10, 0, 1).await.is_empty(),
        "in flight, so hidden"
    );
    // Long polls of a second each: the simulator answers one as soon as the message is back.
    let again = loop {
        let messages = sim.receive(10, 1, 30).await;
        if !messages.is_empty() {
            break messages;
        }
        assert!(
            received_at.elapsed() < Duration::from_secs(10),
            "not redelivered"
        );
    };
    assert!(
        received_at.elapsed() >= Duration::from_millis(900),
        "redelivered early"
    );
    assert_eq!(again.len(), 1);
    assert_eq!(again[0].message_id(), message.message_id());
    assert_ne!(again[0].receipt_handle(), message.receipt_handle());
    assert_eq!(
        attribute(
            &again[0],
            MessageSystemAttributeName::ApproximateReceiveCount
        ),
        "2"
    );
    assert_eq!(
        attribute(&again[0], MessageSystemAttributeName::SentTimestamp),
        attribute(message, MessageSystemAttributeName::SentTimestamp)
    );
}

#[tokio::test]
async fn only_the_latest_handle_deletes_and_a_deleted_message_is_gone() {
    let sim = start().await;
    sim.send(&["a"]).await;
    // A visibility timeout of 0 makes it visible again at once: its handle is then stale.
    let stale = sim.receive(1, 0, 0).await.remove(0);
    let current = sim.receive(1, 0, 30).await.remove(0);
    assert_eq!(current.message_id(), stale.message_id());
    assert_eq!(
        attribute(
            &current,
            MessageSystemAttributeName::ApproximateReceiveCount
        ),
        "2"
    );

    let output = sim
        .sqs
        .delete_message_batch()
        .queue_url(&sim.queue_url)
        .entries(delete_entry("stale", &stale))
        .entries(delete_entry("current", &current))
        .send()
        .await
        .unwrap();
    let deleted: Vec<&str> = output.successful.iter().map(|entry| entry.id()).collect();
    assert_eq!(deleted, ["current"]);
    assert_eq!(output.failed.len(), 1);
    assert_eq!(output.failed[0].id(), "stale");
    assert_eq!(output.failed[0].code(), "ReceiptHandleIsInvalid");
    assert!(output.failed[0].sender_fault());

    assert_eq!(sim.depth().await, ("0".into(), "0".into()));
    assert!(sim.receive(10, 0, 30).await.is_empty());
    let again = sim
        .sqs
        .delete_message_batch()
        .queue_url(&sim.queue_url)
        .entries(delete_entry("current", &current))
        .send()
        .await
        .unwrap();
    assert_eq!((again.successful.len(), again.failed.len()), (0, 1));
}

#[tokio::test]
async fn a_visibility_change_to_zero_makes_a_message_visible_at_once() {
    let sim = start().await;
    sim.send(&["a"]).await;
    let message = sim.receive(1, 0, 30).await.remove(0);
    assert!(sim.receive(1, 0, 30).await.is_empty());
    // A long poll that is (most likely) already waiting when the change comes.
    let poll = tokio::spawn({
        let sim = sim.clone();
        async move {
            let started = std::time::Instant::now();
            (sim.receive(1, 10, 30).await, started.elapsed())
        }
    });
    let entry = |id: &str, handle: &str| {
        ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(id)
            .receipt_handle(handle)
            .visibility_timeout(0)
            .build()
            .unwrap()
    };
    let output = sim
        .sqs
        .change_message_visibility_batch()
        .queue_url(&sim.queue_url)
        .entries(entry("real", message.receipt_handle().unwrap()))
        .entries(entry("bogus", "not-a-handle"))
        .send()
        .await
        .unwrap();
    assert_eq!(output.successful.len(), 1);
    assert_eq!(output.successful[0].id(), "real");
    assert_eq!(output.failed.len(), 1);
    assert_eq!(output.failed[0].code(), "ReceiptHandleIsInvalid");

    let (messages, waited) = poll.await.unwrap();
    assert!(
        waited < Duration::from_secs(5),
        "the poll waited {waited:?}"
    );
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0].message_id(), message.message_id());
    assert_eq!(
        attribute(
            &messages[0],
            MessageSystemAttributeName::ApproximateReceiveCount
        ),
        "2"
    );
}

#[tokio::test]
async fn queue_attributes_count_visible_and_in_flight_and_errors_have_the_aws_shape() {
    let sim = start().await;
    let bodies: Vec<String> = (0..25).map(|i| format!("body {i}")).collect();
    sim.send(&bodies.iter().map(String::as_str).collect::<Vec<_>>())
        .await;
    assert_eq!(sim.receive(10, 0, 30).await.len(), 10);
    assert_eq!(sim.depth().await, ("15".into(), "10".into()));

    let all = sim
        .sqs
        .get_queue_attributes()
        .queue_url(&sim.queue_url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap();
    assert_eq!(
        all[&QueueAttributeName::QueueArn],
        "arn:aws:sqs:us-east-1:000000000000:bench"
    );
    assert_eq!(all[&QueueAttributeName::VisibilityTimeout], "30");
    assert_eq!(
        all[&QueueAttributeName::ApproximateNumberOfMessagesNotVisible],
        "10"
    );

    let url = sim
        .sqs
        .get_queue_url()
        .queue_name("bench")
        .send()
        .await
        .unwrap();
    assert_eq!(url.queue_url(), Some(sim.queue_url.as_str()));
    let missing = sim.sqs.get_queue_url().queue_name("missing").send().await;
    assert!(missing
        .unwrap_err()
        .into_service_error()
        .is_queue_does_not_exist());
    let missing = sim
        .sqs
        .receive_message()
        .queue_url(format!("{}/000000000000/missing", sim.base_url))
        .send()
        .await;
    assert!(missing
        .unwrap_err()
        .into_service_error()
        .is_queue_does_not_exist());

    // Unsigned calls are answered too; an unknown action gets an AWS JSON error.
    let (head, body) = sim
        .raw("AmazonSQS.GetQueueUrl", r#"{"QueueName":"bench"}"#)
        .await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains(&sim.queue_url), "{body}");
    let (head, body) = sim.raw("AmazonSQS.Frobnicate", "{}").await;
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(head
        .to_ascii_lowercase()
        .contains("x-amzn-query-error: invalidaction;sender"));
    assert!(body.contains("UnknownOperationException"), "{body}");
}

#[tokio::test]
async fn etls_own_client_receives_and_deletes_through_it() {
    let sim = start().await;
    let (queue, protocol) = SqsQueue::connect(&sim.sdk, &sim.queue_url, SqsProtocol::Auto)
        .await
        .unwrap();
    assert_eq!(protocol, SqsProtocol::Json);
    let bodies: Vec<String> = (0..10).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    assert_eq!(queue.send_batch(&bodies).await.unwrap(), 0);

    let received = queue
        .receive(10, Duration::from_secs(1), Duration::from_secs(30))
        .await
        .unwrap();
    assert_eq!(received.len(), 10);
    assert!(received
        .iter()
        .all(|m| m.receive_count == Some(1) && m.sent_timestamp.is_some()));
    let failures = queue
        .delete_batch(&Receipt::of_all(&received))
        .await
        .unwrap();
    assert!(failures.is_empty(), "{failures:?}");
    assert!(queue.depth().await.unwrap().is_empty());

    // Calls per action, as a benchmark reads them.
    let address = sim.base_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(address).await.unwrap();
    let request = format!("GET /_stats HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (_, body) = response.split_once("\r\n\r\n").unwrap();
    let calls: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(calls["ReceiveMessage"], 1, "{calls}");
    assert_eq!(calls["DeleteMessageBatch"], 1, "{calls}");
    assert_eq!(calls["SendMessageBatch"], 1, "{calls}");
}
