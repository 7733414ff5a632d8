//! The SQS Query protocol: form-encoded `Action=...` requests signed with SigV4, XML replies. The
//! reference LocalStack 0.14 image speaks only this; real SQS still accepts it.
//!
//! The operations are here; `http` builds and sends the requests, `sigv4` signs them and `xml`
//! reads the replies.

mod http;
mod sigv4;
mod xml;

use std::time::Duration;

use super::{
    BatchFailures, QueueDepth, Receipt, ReceivedMessage, SqsError, MAX_BATCH,
    MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS,
};
use http::HTTP_HEADROOM;
use xml::{attributes, malformed, parse_elements, parse_messages};

#[derive(Clone, Debug)]
pub struct QueryQueue {
    http: reqwest::Client,
    /// Shared: the configuration is large and every clone of the queue would copy it.
    config: std::sync::Arc<aws_config::SdkConfig>,
    queue_url: String,
}

impl QueryQueue {
    pub fn new(
        config: &aws_config::SdkConfig,
        queue_url: impl Into<String>,
    ) -> Result<Self, SqsError> {
        Ok(Self {
            http: http::client()?,
            config: std::sync::Arc::new(config.clone()),
            queue_url: queue_url.into(),
        })
    }

    pub async fn receive(
        &self,
        max: usize,
        wait: Duration,
        visibility: Duration,
    ) -> Result<Vec<ReceivedMessage>, SqsError> {
        let wait = wait.as_secs().min(u64::from(MAX_WAIT_SECONDS));
        let params = vec![
            (
                "MaxNumberOfMessages".to_owned(),
                max.clamp(1, MAX_BATCH).to_string(),
            ),
            ("WaitTimeSeconds".to_owned(), wait.to_string()),
            (
                "VisibilityTimeout".to_owned(),
                visibility.as_secs().min(MAX_VISIBILITY_SECONDS).to_string(),
            ),
            ("AttributeName.1".to_owned(), "SentTimestamp".to_owned()),
            (
                "AttributeName.2".to_owned(),
                "ApproximateReceiveCount".to_owned(),
            ),
        ];
        let xml = self
            .call(
                "ReceiveMessage",
                params,
                Duration::from_secs(wait) + HTTP_HEADROOM,
            )
            .await?;
        parse_messages(&xml).map_err(|detail| malformed("ReceiveMessage", detail))
    }

    pub async fn delete_batch(&self, receipts: &[Receipt]) -> Result<BatchFailures, SqsError> {
        self.batch(
            "DeleteMessageBatch",
            "DeleteMessageBatchRequestEntry",
            receipts,
            None,
        )
        .await
    }

    pub async fn change_visibility_batch(
        &self,
        receipts: &[Receipt],
        timeout: Duration,
    ) -> Result<BatchFailures, SqsError> {
        let seconds = timeout.as_secs().min(MAX_VISIBILITY_SECONDS);
        self.batch(
            "ChangeMessageVisibilityBatch",
            "ChangeMessageVisibilityBatchRequestEntry",
            receipts,
            Some(seconds),
        )
        .await
    }

    pub async fn depth(&self) -> Result<QueueDepth, SqsError> {
        let params = vec![
            (
                "AttributeName.1".to_owned(),
                "ApproximateNumberOfMessages".to_owned(),
            ),
            (
                "AttributeName.2".to_owned(),
                "ApproximateNumberOfMessagesNotVisible".to_owned(),
            ),
        ];
        let xml = self
            .call("GetQueueAttributes", params, HTTP_HEADROOM)
            .await?;
        let elements =
            parse_elements(&xml).map_err(|detail| malformed("GetQueueAttributes", detail))?;
        let mut depth = QueueDepth {
            visible: 0,
            in_flight: 0,
        };
        for (name, value) in attributes(&elements) {
            let count = value.parse().unwrap_or(0);
            match name.as_str() {
                "ApproximateNumberOfMessages" => depth.visible = count,
                "ApproximateNumberOfMessagesNotVisible" => depth.in_flight = count,
                _ => {}
            }
        }
        Ok(depth)
    }

    pub async fn send_batch(&self, bodies: &[String]) -> Result<usize, SqsError> {
        let mut params = Vec::with_capacity(bodies.len() * 2);
        for (index, body) in bodies.iter().enumerate() {
            let prefix = format!("SendMessageBatchRequestEntry.{}", index + 1);
            params.push((format!("{prefix}.Id"), index.to_string()));
            params.push((format!("{prefix}.MessageBody"), body.clone()));
        }
        let xml = self.call("SendMessageBatch", params, HTTP_HEADROOM).await?;
        let elements =
            parse_elements(&xml).map_err(|detail| malformed("SendMessageBatch", detail))?;
        Ok(elements
            .iter()
            .filter(|e| e.ends_with(&["BatchResultErrorEntry"]))
            .count())
    }

    async fn batch(
        &self,
        action: &'static str,
        entry: &str,
        receipts: &[Receipt],
        visibility: Option<u64>,
    ) -> Result<BatchFailures, SqsError> {
        let mut failures = BatchFailures::default();
        if receipts.is_empty() {
            return Ok(failures);
        }
        let mut params = Vec::with_capacity(receipts.len() * 3);
        for (index, receipt) in receipts.iter().enumerate() {
            let prefix = format!("{entry}.{}", index + 1);
            params.push((format!("{prefix}.Id"), index.to_string()));
            params.push((
                format!("{prefix}.ReceiptHandle"),
                receipt.receipt_handle.clone(),
            ));
            if let Some(seconds) = visibility {
                params.push((format!("{prefix}.VisibilityTimeout"), seconds.to_string()));
            }
        }
        let xml = self.call(action, params, HTTP_HEADROOM).await?;
        let elements = parse_elements(&xml).map_err(|detail| malformed(action, detail))?;
        let (mut id, mut sender_fault) = (String::new(), false);
        for element in &elements {
            if element.ends_with(&["BatchResultErrorEntry", "Id"]) {
                id.clone_from(&element.text);
            } else if element.ends_with(&["BatchResultErrorEntry", "SenderFault"]) {
                sender_fault = element.text == "true";
            } else if element.ends_with(&["BatchResultErrorEntry"]) {
                failures.add(receipts, &id, sender_fault);
                (id, sender_fault) = (String::new(), false);
            }
        }
        Ok(failures)
    }
}

/// The queue URL of `queue_name` at `endpoint_url` (Action=GetQueueUrl).
pub async fn get_queue_url(
    config: &aws_config::SdkConfig,
    endpoint_url: &str,
    queue_name: &str,
) -> Result<String, SqsError> {
    let endpoint = QueryQueue::new(config, endpoint_url)?;
    let params = vec![("QueueName".to_owned(), queue_name.to_owned())];
    let xml = endpoint.call("GetQueueUrl", params, HTTP_HEADROOM).await?;
    parse_elements(&xml)
        .map_err(|detail| malformed("GetQueueUrl", detail))?
        .into_iter()
        .find(|e| e.ends_with(&["QueueUrl"]))
        .map(|e| e.text)
        .ok_or_else(|| malformed("GetQueueUrl", "no QueueUrl in the reply".to_owned()))
}
