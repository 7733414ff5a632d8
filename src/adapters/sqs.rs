//! Amazon SQS through the AWS SDK (AWS JSON protocol).

use std::time::Duration;

use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    DeleteMessageBatchRequestEntry, MessageSystemAttributeName, QueueAttributeName,
    SendMessageBatchRequestEntry,
};

/// SQS accepts at most ten entries per batch call and per receive.
pub const MAX_BATCH: usize = 10;
/// SQS's longest long-poll wait.
pub const MAX_WAIT_SECONDS: u8 = 20;

#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    #[error("SQS {operation} failed: {detail}")]
    Call {
        operation: &'static str,
        detail: String,
    },
}

/// One received message. `Debug` omits the body.
#[derive(Clone)]
pub struct ReceivedMessage {
    pub message_id: String,
    pub receipt_handle: String,
    pub body: String,
    /// `SentTimestamp` as sent: milliseconds on real SQS, seconds on the reference LocalStack.
    pub sent_timestamp: Option<String>,
    pub receive_count: Option<i32>,
}

impl std::fmt::Debug for ReceivedMessage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivedMessage")
            .field("message_id", &self.message_id)
            .field("receive_count", &self.receive_count)
            .finish_non_exhaustive()
    }
}

/// Approximate queue depth, from `GetQueueAttributes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueDepth {
    pub visible: u64,
    pub in_flight: u64,
}

impl QueueDepth {
    pub fn is_empty(self) -> bool {
        self.visible == 0 && self.in_flight == 0
    }
}

/// A receipt to delete: the message id (for reporting) and its receipt handle.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub message_id: String,
    pub receipt_handle: String,
}

/// What a batch delete left undone.
#[derive(Debug, Default)]
pub struct DeleteFailures {
    /// Entries SQS may accept on a retry (throttling, internal errors).
    pub retryable: Vec<Receipt>,
    /// Entries that cannot be deleted with this handle (for example an expired receipt handle).
    /// They will be redelivered and skipped as already processed.
    pub permanent: Vec<Receipt>,
}

#[derive(Clone, Debug)]
pub struct SqsQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl SqsQueue {
    pub fn new(config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.into(),
        }
    }

    pub fn url(&self) -> &str {
        &self.queue_url
    }

    /// One long poll for up to `max` messages.
    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(u64::from(MAX_WAIT_SECONDS)) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|err| call_error("ReceiveMessage", err))?;
        Ok(output
            .messages
            .unwrap_or_default()
            .into_iter()
            .filter_map(|message| {
                let mut attributes = message.attributes.unwrap_or_default();
                Some(ReceivedMessage {
                    message_id: message.message_id?,
                    receipt_handle: message.receipt_handle?,
                    body: message.body.unwrap_or_default(),
                    sent_timestamp: attributes.remove(&MessageSystemAttributeName::SentTimestamp),
                    receive_count: attributes
                        .get(&MessageSystemAttributeName::ApproximateReceiveCount)
                        .and_then(|count| count.parse().ok()),
                })
            })
            .collect())
    }

    /// Deletes up to ten receipts in one call and sorts what failed.
    pub async fn delete_batch(&self, receipts: &[Receipt]) -> Result<DeleteFailures, SqsError> {
        let mut failures = DeleteFailures::default();
        if receipts.is_empty() {
            return Ok(failures);
        }
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(index, receipt)| {
                DeleteMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(&receipt.receipt_handle)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| call_error("DeleteMessageBatch", err))?;
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| call_error("DeleteMessageBatch", err))?;
        for failed in output.failed {
            let Some(receipt) = failed
                .id
                .parse::<usize>()
                .ok()
                .and_then(|i| receipts.get(i))
            else {
                continue;
            };
            if failed.sender_fault {
                failures.permanent.push(receipt.clone());
            } else {
                failures.retryable.push(receipt.clone());
            }
        }
        Ok(failures)
    }

    /// Visible and in-flight message counts.
    pub async fn depth(&self) -> Result<QueueDepth, SqsError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|err| call_error("GetQueueAttributes", err))?;
        let attributes = output.attributes.unwrap_or_default();
        let count = |name: &QueueAttributeName| {
            attributes
                .get(name)
                .and_then(|value| value.parse().ok())
                .unwrap_or(0)
        };
        Ok(QueueDepth {
            visible: count(&QueueAttributeName::ApproximateNumberOfMessages),
            in_flight: count(&QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
        })
    }

    /// Sends up to ten bodies in one call; returns how many SQS refused.
    pub async fn send_batch(&self, bodies: &[String]) -> Result<usize, SqsError> {
        let entries = bodies
            .iter()
            .enumerate()
            .map(|(index, body)| {
                SendMessageBatchRequestEntry::builder()
                    .id(index.to_string())
                    .message_body(body)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| call_error("SendMessageBatch", err))?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| call_error("SendMessageBatch", err))?;
        Ok(output.failed.len())
    }
}

/// SDK errors describe the service's answer (code, message, request id); they never contain
/// message bodies, which are only in requests we build.
fn call_error<E: std::error::Error>(operation: &'static str, err: E) -> SqsError {
    SqsError::Call {
        operation,
        detail: DisplayErrorContext(err).to_string(),
    }
}
