//! Amazon SQS. Two clients behind one interface, so the pipeline does not know which runs:
//! [`json::JsonQueue`] (the AWS SDK, AWS JSON 1.0 protocol: real SQS and current emulators) and
//! [`query::QueryQueue`] (the Query protocol with XML replies, which the reference LocalStack
//! 0.14 image speaks).

pub mod json;
pub mod query;

use std::time::Duration;

use crate::domain::Message;

pub use json::JsonQueue;
pub use query::QueryQueue;

/// SQS accepts at most ten entries per batch call and per receive.
pub const MAX_BATCH: usize = 10;
/// SQS's longest visibility timeout (12 hours).
pub const MAX_VISIBILITY_SECONDS: u64 = 43_200;
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

impl ReceivedMessage {
    /// The pipeline's message, and the receipt that only the SQS source keeps.
    pub fn into_parts(self) -> (Message, Receipt) {
        let receipt = Receipt {
            message_id: self.message_id.clone(),
            receipt_handle: self.receipt_handle,
        };
        let message = Message {
            id: self.message_id,
            body: self.body,
            sent_timestamp: self.sent_timestamp,
            receive_count: self.receive_count,
            line: None,
        };
        (message, receipt)
    }
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

impl Receipt {
    /// The receipts of received messages.
    pub fn of_all(messages: &[ReceivedMessage]) -> Vec<Receipt> {
        messages
            .iter()
            .map(|m| Receipt {
                message_id: m.message_id.clone(),
                receipt_handle: m.receipt_handle.clone(),
            })
            .collect()
    }
}

/// Entries of a batch call that SQS did not carry out.
#[derive(Debug, Default)]
pub struct BatchFailures {
    /// Entries SQS may accept on a retry (throttling, internal errors).
    pub retryable: Vec<Receipt>,
    /// Entries that cannot succeed with this receipt handle (for example an expired one). A
    /// message that could not be deleted is redelivered and skipped as already processed.
    pub permanent: Vec<Receipt>,
}

impl BatchFailures {
    /// Records the failure of the entry whose batch id is `id` (its index in `receipts`).
    pub(crate) fn add(&mut self, receipts: &[Receipt], id: &str, sender_fault: bool) {
        let Some(receipt) = id.parse::<usize>().ok().and_then(|i| receipts.get(i)) else {
            return;
        };
        if sender_fault {
            self.permanent.push(receipt.clone());
        } else {
            self.retryable.push(receipt.clone());
        }
    }

    pub fn len(&self) -> usize {
        self.retryable.len() + self.permanent.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Which SQS wire protocol to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SqsProtocol {
    /// Try AWS JSON once at start; fall back to Query if the endpoint does not answer it.
    Auto,
    /// AWS JSON 1.0 through the AWS SDK (real SQS, current emulators).
    Json,
    /// The Query protocol with XML replies (the reference LocalStack 0.14 image).
    Query,
}

impl SqsProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Json => "json",
            Self::Query => "query",
        }
    }
}

/// A queue, whichever protocol reaches it.
#[derive(Clone, Debug)]
pub enum SqsQueue {
    Json(JsonQueue),
    Query(QueryQueue),
}

impl SqsQueue {
    /// The queue at `queue_url` over `protocol`; `Auto` probes with `GetQueueAttributes`, first
    /// over AWS JSON, then over Query. Returns the protocol chosen.
    pub async fn connect(
        config: &aws_config::SdkConfig,
        queue_url: &str,
        protocol: SqsProtocol,
    ) -> Result<(Self, SqsProtocol), SqsError> {
        match protocol {
            SqsProtocol::Json => Ok((Self::json(config, queue_url), SqsProtocol::Json)),
            SqsProtocol::Query => Ok((
                Self::Query(QueryQueue::new(config, queue_url)?),
                SqsProtocol::Query,
            )),
            SqsProtocol::Auto => {
                let json = Self::json(config, queue_url);
                let json_error = match json.depth().await {
                    Ok(_) => return Ok((json, SqsProtocol::Json)),
                    Err(err) => err,
                };
                let query = Self::Query(QueryQueue::new(config, queue_url)?);
                match query.depth().await {
                    Ok(_) => Ok((query, SqsProtocol::Query)),
                    Err(query_error) => Err(SqsError::Call {
                        operation: "GetQueueAttributes",
                        detail: format!("neither protocol answered; AWS JSON: {json_error}; Query: {query_error}"),
                    }),
                }
            }
        }
    }

    /// A queue reached through the AWS SDK (AWS JSON protocol).
    pub fn json(config: &aws_config::SdkConfig, queue_url: impl Into<String>) -> Self {
        Self::Json(JsonQueue::new(config, queue_url))
    }

    /// One long poll for up to `max` messages, hidden from other consumers for `visibility`.
    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        match self {
            Self::Json(queue) => queue.receive(max, wait, visibility).await,
            Self::Query(queue) => queue.receive(max, wait, visibility).await,
        }
    }

    /// Deletes up to ten receipts in one call and sorts what failed.
    pub async fn delete_batch(&self, receipts: &[Receipt]) -> Result<BatchFailures, SqsError> {
        match self {
            Self::Json(queue) => queue.delete_batch(receipts).await,
            Self::Query(queue) => queue.delete_batch(receipts).await,
        }
    }

    /// Sets the visibility timeout of up to ten receipts in one call.
    pub async fn change_visibility_batch(
        &self,
        receipts: &[Receipt],
        timeout: Duration,
    ) -> Result<BatchFailures, SqsError> {
        match self {
            Self::Json(queue) => queue.change_visibility_batch(receipts, timeout).await,
            Self::Query(queue) => queue.change_visibility_batch(receipts, timeout).await,
        }
    }

    /// Visible and in-flight message counts.
    pub async fn depth(&self) -> Result<QueueDepth, SqsError> {
        match self {
            Self::Json(queue) => queue.depth().await,
            Self::Query(queue) => queue.depth().await,
        }
    }

    /// Sends up to ten bodies in one call; returns how many SQS refused.
    pub async fn send_batch(&self, bodies: &[String]) -> Result<usize, SqsError> {
        match self {
            Self::Json(queue) => queue.send_batch(bodies).await,
            Self::Query(queue) => queue.send_batch(bodies).await,
        }
    }
}
