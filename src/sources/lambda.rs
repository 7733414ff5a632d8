//! The Lambda source: an SQS event from an event source mapping → the pipeline's messages → the
//! one commit path, as one batch → an `SQSBatchResponse`.
//!
//! AWS polls the queue, invokes the function with up to 10,000 messages, and deletes what the
//! response does not list in `batchItemFailures` (with `ReportBatchItemFailures` on the mapping).
//! So a message counts as processed once it is committed, as a row or in quarantine; when the
//! commit fails (a transient failure that outlived its retries, or the invocation's deadline
//! came first), the event's messages are all listed, since they were one transaction, and come
//! back. A message committed before (a redelivery) is skipped by its id, as in `etl ingest`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use serde::{Deserialize, Deserializer};
use sqlx::PgPool;
use tracing::{error, info};

use crate::domain::{IpPrefix, Message};
use crate::keys::LiveKeys;
use crate::pipeline::batch::ClaimKind;
use crate::pipeline::{Committer, Stats};

/// How long before the invocation's deadline a commit still retrying is given up, so that the
/// response (listing its messages as failed) reaches Lambda before the function is stopped.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);

/// The invocation's payload. A payload that is not an SQS event is refused with a fixed message:
/// serde's own messages can quote the value that did not fit, and that could be a body.
pub struct SqsEventPayload(pub SqsEvent);

impl<'de> Deserialize<'de> for SqsEventPayload {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        SqsEvent::deserialize(deserializer)
            .map(Self)
            .map_err(|_| serde::de::Error::custom("the payload is not an SQS event"))
    }
}

/// An event the handler cannot answer message by message: the whole invocation fails, and the
/// event source mapping makes all its messages visible again.
#[derive(Debug, thiserror::Error)]
pub enum InvalidEvent {
    #[error("record {index} of the SQS event has no messageId")]
    MissingMessageId { index: usize },
}

impl From<InvalidEvent> for lambda_runtime::Diagnostic {
    fn from(err: InvalidEvent) -> Self {
        Self {
            error_type: "InvalidSqsEvent".to_owned(),
            error_message: err.to_string(),
        }
    }
}

/// What one warm function instance keeps between invocations: the pool, the unwrapped keys and
/// the masks it has seen committed (in the committer), so only the first invocation pays for
/// them.
pub struct Handler {
    committer: Committer,
}

impl Handler {
    pub fn new(
        pool: PgPool,
        keys: Arc<LiveKeys>,
        max_receives: i32,
        ip_prefix: Option<IpPrefix>,
    ) -> Self {
        Self {
            committer: Committer::new(pool, keys, Arc::new(Stats::default()), max_receives)
                .with_ip_prefix(ip_prefix),
        }
    }

    /// Commits the event's messages as one batch, and lists them in `batchItemFailures` if that
    /// fails or the `deadline` (minus [`DEADLINE_MARGIN`]) comes first.
    pub async fn handle(
        &self,
        event: SqsEvent,
        deadline: SystemTime,
    ) -> Result<SqsBatchResponse, InvalidEvent> {
        let messages = messages(event)?;
        let started = Instant::now();
        let stats = self.committer.stats();
        stats.received(messages.len());
        let budget = deadline
            .duration_since(SystemTime::now())
            .unwrap_or_default()
            .saturating_sub(DEADLINE_MARGIN);
        // Cut short, a commit rolls back (or, if its COMMIT had reached the server, is skipped
        // as a redelivery next time); vault entries committed ahead of it stay valid.
        let commit = self.committer.commit(&messages, ClaimKind::MessageIds);
        let outcome = tokio::time::timeout(budget, commit).await;
        stats.batch_finished(messages.len(), started.elapsed());
        let mut response = SqsBatchResponse::default();
        // The figures of this invocation alone, for its log line.
        let committed = match outcome {
            Ok(Ok(committed)) => Ok(committed),
            Ok(Err(err)) => Err(err.to_string()),
            Err(_) => Err("the invocation's deadline came before the commit".to_owned()),
        };
        match committed {
            Ok(committed) => info!(
                messages = messages.len(),
                written = committed.written,
                quarantined = committed.quarantined_total(),
                duplicates_skipped = committed.duplicates_skipped,
                forgotten_skipped = committed.forgotten_skipped,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "event committed"
            ),
            Err(cause) => {
                stats.write_failed();
                error!(error = %cause, messages = messages.len(),
                       "event not committed; its messages are reported as batch item failures");
                for message in &messages {
                    response.add_failure(message.id.clone());
                }
            }
        }
        Ok(response)
    }
}

/// The pipeline's messages of an SQS event, in order.
pub fn messages(event: SqsEvent) -> Result<Vec<Message>, InvalidEvent> {
    event
        .records
        .into_iter()
        .enumerate()
        .map(|(index, record)| message(record).ok_or(InvalidEvent::MissingMessageId { index }))
        .collect()
}

/// A record as the SQS source would have received it. Without a body (SQS never sends one
/// empty) the message is judged as the empty body, and so quarantined, never dropped.
fn message(record: SqsMessage) -> Option<Message> {
    let mut attributes = record.attributes;
    Some(Message {
        id: record.message_id.filter(|id| !id.is_empty())?,
        body: record.body.unwrap_or_default(),
        sent_timestamp: attributes.remove("SentTimestamp"),
        receive_count: attributes
            .get("ApproximateReceiveCount")
            .and_then(|count| count.parse().ok()),
        line: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(json: serde_json::Value) -> SqsEvent {
        serde_json::from_value::<SqsEventPayload>(json).unwrap().0
    }

    #[test]
    fn records_become_messages_with_their_attributes() {
        let messages = messages(event(serde_json::json!({"Records": [
            {"messageId": "m-1", "receiptHandle": "r", "body": "{}", "eventSource": "aws:sqs",
             "attributes": {"ApproximateReceiveCount": "3", "SentTimestamp": "1545082649183"}},
            {"messageId": "m-2", "attributes": {}}
        ]})))
        .unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].id, "m-1");
        assert_eq!(messages[0].body, "{}");
        assert_eq!(messages[0].receive_count, Some(3));
        assert_eq!(messages[0].sent_timestamp.as_deref(), Some("1545082649183"));
        assert!(messages[0].line.is_none());
        assert_eq!(messages[1].body, "");
        assert_eq!(messages[1].receive_count, None);
    }

    #[test]
    fn a_record_without_message_id_fails_the_event() {
        let err = messages(event(serde_json::json!({"Records": [
            {"messageId": "m-1", "body": "{}"}, {"body": "{}"}
        ]})))
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 1 of the SQS event has no messageId"
        );
    }

    #[test]
    fn a_payload_that_is_not_an_sqs_event_is_refused_without_quoting_it() {
        let payload = serde_json::json!({"Records": [{"messageId": "m", "body": 4242}]});
        let err = serde_json::from_value::<SqsEventPayload>(payload)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert_eq!(err, "the payload is not an SQS event");
    }
}
