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

/// An SQS failure in one line: the cause in words, the queue by name, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SqsError {
    #[error(
        "the queue {queue} does not exist: create it, or correct --queue-url / ETL_QUEUE_URL \
         (SQS {operation}: {code})"
    )]
    QueueDoesNotExist {
        operation: &'static str,
        queue: String,
        code: String,
    },
    #[error(
        "SQS denied {operation} on the queue {queue}: this AWS identity needs sqs:{operation} on \
         it ({code})"
    )]
    AccessDenied {
        operation: &'static str,
        queue: String,
        code: String,
    },
    #[error(
        "SQS did not accept the AWS credentials ({code}): check AWS_ACCESS_KEY_ID and \
         AWS_SECRET_ACCESS_KEY, or the profile"
    )]
    Credentials { code: String },
    #[error(
        "cannot reach SQS at {endpoint}: {cause}; check --queue-url / ETL_QUEUE_URL and \
         AWS_ENDPOINT_URL, and that the endpoint is up"
    )]
    Unreachable { endpoint: String, cause: String },
    #[error(
        "the endpoint of the queue {queue} answered neither SQS protocol (AWS JSON: {json}; \
         Query: {query}): check --queue-url and AWS_ENDPOINT_URL, or give --sqs-protocol"
    )]
    NoProtocol {
        queue: String,
        json: String,
        query: String,
    },
    #[error("SQS {operation} failed: {detail}")]
    Call {
        operation: &'static str,
        detail: String,
    },
}

impl SqsError {
    /// The error for SQS's answer `code` (and `message`) to `operation` on `queue_url`.
    pub(crate) fn answered(
        queue_url: &str,
        operation: &'static str,
        code: &str,
        message: Option<&str>,
    ) -> Self {
        let queue = queue_name(queue_url);
        let code = code.to_owned();
        match code.as_str() {
            "AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist" => {
                Self::QueueDoesNotExist {
                    operation,
                    queue,
                    code,
                }
            }
            "AccessDenied" | "AccessDeniedException" => Self::AccessDenied {
                operation,
                queue,
                code,
            },
            "InvalidClientTokenId"
            | "UnrecognizedClientException"
            | "SignatureDoesNotMatch"
            | "IncompleteSignature"
            | "MissingAuthenticationToken"
            | "ExpiredToken" => Self::Credentials { code },
            _ => Self::Call {
                operation,
                detail: match message {
                    Some(message) => format!("{code}: {message}"),
                    None => code,
                },
            },
        }
    }

    /// The error for a request that got no answer from the endpoint of `queue_url`.
    pub(crate) fn unreachable(queue_url: &str, cause: impl Into<String>) -> Self {
        Self::Unreachable {
            endpoint: endpoint_of(queue_url),
            cause: cause.into(),
        }
    }

    /// An answer that no other protocol would change: the queue is missing, or access is denied.
    fn is_definitive(&self) -> bool {
        matches!(
            self,
            Self::QueueDoesNotExist { .. } | Self::AccessDenied { .. } | Self::Credentials { .. }
        )
    }
}

/// The queue's name: the last segment of its URL.
fn queue_name(queue_url: &str) -> String {
    queue_url
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(queue_url)
        .to_owned()
}

/// `scheme://host:port` of a queue URL.
fn endpoint_of(queue_url: &str) -> String {
    match url::Url::parse(queue_url) {
        Ok(url) => format!(
            "{}://{}{}",
            url.scheme(),
            url.host_str().unwrap_or_default(),
            url.port()
                .map(|port| format!(":{port}"))
                .unwrap_or_default()
        ),
        Err(_) => queue_url.to_owned(),
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
                    // The endpoint spoke AWS JSON and said no: Query would say the same.
                    Err(err) if err.is_definitive() => return Err(err),
                    Err(err) => err,
                };
                let query = Self::Query(QueryQueue::new(config, queue_url)?);
                match query.depth().await {
                    Ok(_) => Ok((query, SqsProtocol::Query)),
                    Err(query_error) if query_error.is_definitive() => Err(query_error),
                    // Nothing answered at all: one protocol's words say it.
                    Err(SqsError::Unreachable { .. })
                        if matches!(json_error, SqsError::Unreachable { .. }) =>
                    {
                        Err(json_error)
                    }
                    Err(query_error) => Err(SqsError::NoProtocol {
                        queue: queue_name(queue_url),
                        json: json_error.to_string(),
                        query: query_error.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    const URL: &str = "http://127.0.0.1:4566/000000000000/login-queue";

    #[test]
    fn answers_are_classified_and_name_the_queue() {
        let missing = SqsError::answered(
            URL,
            "GetQueueAttributes",
            "AWS.SimpleQueueService.NonExistentQueue",
            Some("The specified queue does not exist."),
        );
        assert!(missing.is_definitive());
        assert!(missing
            .to_string()
            .starts_with("the queue login-queue does not exist: create it"));
        let denied = SqsError::answered(URL, "ReceiveMessage", "AccessDenied", None);
        assert!(denied.is_definitive());
        assert!(denied.to_string().contains("needs sqs:ReceiveMessage"));
        let other = SqsError::answered(URL, "ReceiveMessage", "InternalError", Some("boom"));
        assert!(!other.is_definitive());
        assert_eq!(
            other.to_string(),
            "SQS ReceiveMessage failed: InternalError: boom"
        );
    }

    #[test]
    fn an_unreachable_endpoint_is_named_without_the_path() {
        let err = SqsError::unreachable(URL, "connection refused");
        assert_eq!(
            err.to_string(),
            "cannot reach SQS at http://127.0.0.1:4566: connection refused; check --queue-url / \
             ETL_QUEUE_URL and AWS_ENDPOINT_URL, and that the endpoint is up"
        );
    }
}
