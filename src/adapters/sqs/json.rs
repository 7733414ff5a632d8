//! Amazon SQS through the AWS SDK, which speaks the AWS JSON 1.0 protocol (real SQS and current
//! emulators).

use std::time::Duration;

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};

use crate::adapters::aws::unreached_cause;

use super::{
    BatchFailures, QueueDepth, Receipt, ReceivedMessage, SqsError, MAX_BATCH,
    MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS,
};

#[derive(Clone, Debug)]
pub struct JsonQueue {
    client: aws_sdk_sqs::Client,
    queue_url: String,
}

impl JsonQueue {
    pub fn new(config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self {
            client: aws_sdk_sqs::Client::new(config),
            queue_url: queue_url.into(),
        }
    }

    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        let output = self
            .client
            .receive_message()
            .queue_url(&self.queue_url)
            .max_number_of_messages(max.clamp(1, MAX_BATCH) as i32)
            .wait_time_seconds(wait.as_secs().min(u64::from(MAX_WAIT_SECONDS)) as i32)
            .visibility_timeout(visibility.as_secs().min(MAX_VISIBILITY_SECONDS) as i32)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
            .send()
            .await
            .map_err(|err| call_error(&self.queue_url, "ReceiveMessage", err))?;
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

    pub async fn delete_batch(&self, receipts: &[Receipt]) -> Result<BatchFailures, SqsError> {
        let mut failures = BatchFailures::default();
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
            .map_err(|err| build_error("DeleteMessageBatch", err))?;
        let output = self
            .client
            .delete_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| call_error(&self.queue_url, "DeleteMessageBatch", err))?;
        for failed in output.failed {
            failures.add(receipts, &failed.id, failed.sender_fault);
        }
        Ok(failures)
    }

    pub async fn change_visibility_batch(
        &self,
        receipts: &[Receipt],
        timeout: Duration,
    ) -> Result<BatchFailures, SqsError> {
        let mut failures = BatchFailures::default();
        if receipts.is_empty() {
            return Ok(failures);
        }
        let seconds = timeout.as_secs().min(MAX_VISIBILITY_SECONDS) as i32;
        let entries = receipts
            .iter()
            .enumerate()
            .map(|(index, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(index.to_string())
                    .receipt_handle(&receipt.receipt_handle)
                    .visibility_timeout(seconds)
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|err| build_error("ChangeMessageVisibilityBatch", err))?;
        let output = self
            .client
            .change_message_visibility_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| call_error(&self.queue_url, "ChangeMessageVisibilityBatch", err))?;
        for failed in output.failed {
            failures.add(receipts, &failed.id, failed.sender_fault);
        }
        Ok(failures)
    }

    pub async fn depth(&self) -> Result<QueueDepth, SqsError> {
        let output = self
            .client
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .map_err(|err| call_error(&self.queue_url, "GetQueueAttributes", err))?;
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
            .map_err(|err| build_error("SendMessageBatch", err))?;
        let output = self
            .client
            .send_message_batch()
            .queue_url(&self.queue_url)
            .set_entries(Some(entries))
            .send()
            .await
            .map_err(|err| call_error(&self.queue_url, "SendMessageBatch", err))?;
        Ok(output.failed.len())
    }
}

/// One line for the user: SQS's error code, classified, when it answered; else why it did not
/// (refused, timed out). The SDK's full error, raw response included, goes to the debug log;
/// SQS's error replies describe the request, never a message body.
fn call_error<E, R>(queue_url: &str, operation: &'static str, err: SdkError<E, R>) -> SqsError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    tracing::debug!(operation, error = %DisplayErrorContext(&err), "SQS call failed");
    if let Some(code) = err.code() {
        return SqsError::answered(queue_url, operation, code, err.message());
    }
    match &err {
        SdkError::TimeoutError(_) => SqsError::unreachable(queue_url, "timed out"),
        SdkError::DispatchFailure(failure) => {
            SqsError::unreachable(queue_url, unreached_cause(&err, failure.is_timeout()))
        }
        _ => SqsError::Call {
            operation,
            detail: unreached_cause(&err, false),
        },
    }
}

/// A request the SDK would not build (a missing required field).
fn build_error(operation: &'static str, err: aws_sdk_sqs::error::BuildError) -> SqsError {
    SqsError::Call {
        operation,
        detail: err.to_string(),
    }
}
