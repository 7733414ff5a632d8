//! The SQS Query protocol (form-encoded `Action=...` requests, XML replies), for the reference
//! LocalStack 0.14 image, whose SQS does not speak AWS JSON 1.0.

use std::time::Duration;

use super::{BatchFailures, QueueDepth, Receipt, ReceivedMessage, SqsError};

#[derive(Clone, Debug)]
pub struct QueryQueue {
    queue_url: String,
}

impl QueryQueue {
    pub async fn receive(
        &self,
        _max: usize,
        _wait: Duration,
        _visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        Err(self.unsupported("ReceiveMessage"))
    }

    pub async fn delete_batch(&self, _receipts: &[Receipt]) -> Result<BatchFailures, SqsError> {
        Err(self.unsupported("DeleteMessageBatch"))
    }

    pub async fn change_visibility_batch(
        &self,
        _receipts: &[Receipt],
        _timeout: Duration,
    ) -> Result<BatchFailures, SqsError> {
        Err(self.unsupported("ChangeMessageVisibilityBatch"))
    }

    pub async fn depth(&self) -> Result<QueueDepth, SqsError> {
        Err(self.unsupported("GetQueueAttributes"))
    }

    pub async fn send_batch(&self, _bodies: &[String]) -> Result<usize, SqsError> {
        Err(self.unsupported("SendMessageBatch"))
    }

    fn unsupported(&self, operation: &'static str) -> SqsError {
        SqsError::Call {
            operation,
            detail: format!(
                "the Query protocol client is not built yet ({})",
                self.queue_url
            ),
        }
    }
}
