//! The SQS Query protocol: form-encoded `Action=...` requests signed with SigV4, XML replies. The
//! reference LocalStack 0.14 image speaks only this; real SQS still accepts it.

use std::time::{Duration, SystemTime};

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use quick_xml::events::Event;

use super::{
    BatchFailures, QueueDepth, Receipt, ReceivedMessage, SqsError, MAX_BATCH,
    MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS,
};

const API_VERSION: &str = "2012-11-05";
/// Beyond the long-poll wait, how long one HTTP exchange may take.
const HTTP_HEADROOM: Duration = Duration::from_secs(10);

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
            http: http_client()?,
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

    /// One signed POST of `Action=action` and `params` to the queue URL; returns the XML reply.
    async fn call(
        &self,
        action: &'static str,
        params: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<String, SqsError> {
        let body = form_body(action, &params);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut request = self
            .http
            .post(&self.queue_url)
            .timeout(timeout)
            .header("content-type", content_type);
        for (name, value) in self.signature(action, content_type, &body).await? {
            request = request.header(name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|err| SqsError::Call {
                operation: action,
                detail: format!("request failed: {}", without_url(&err)),
            })?;
        let status = response.status();
        let text = response.text().await.map_err(|err| SqsError::Call {
            operation: action,
            detail: format!("reading the reply failed: {}", without_url(&err)),
        })?;
        if status.is_success() {
            Ok(text)
        } else {
            Err(SqsError::Call {
                operation: action,
                detail: describe_error(status.as_u16(), &text),
            })
        }
    }

    /// SigV4 headers for a POST of `body`.
    async fn signature(
        &self,
        action: &'static str,
        content_type: &str,
        body: &str,
    ) -> Result<Vec<(String, String)>, SqsError> {
        let signing_error = |detail: String| SqsError::Call {
            operation: action,
            detail: format!("cannot sign the request: {detail}"),
        };
        let provider = self
            .config
            .credentials_provider()
            .ok_or_else(|| signing_error("no AWS credentials configured".to_owned()))?;
        let credentials = provider
            .provide_credentials()
            .await
            .map_err(|err| signing_error(err.to_string()))?;
        let region = self
            .config
            .region()
            .ok_or_else(|| signing_error("no AWS region configured".to_owned()))?;
        let identity = Identity::from(credentials);
        let params = v4::SigningParams::builder()
            .identity(&identity)
            .region(region.as_ref())
            .name("sqs")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|err| signing_error(err.to_string()))?
            .into();
        let headers = [("content-type", content_type)];
        let signable = SignableRequest::new(
            "POST",
            self.queue_url.as_str(),
            headers.into_iter(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|err| signing_error(err.to_string()))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|err| signing_error(err.to_string()))?
            .into_parts();
        Ok(instructions
            .headers()
            .map(|(name, value)| (name.to_owned(), value.to_owned()))
            .collect())
    }
}

/// `Action=..&Version=..&name=value...`, form-encoded.
fn form_body(action: &str, params: &[(String, String)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action)
        .append_pair("Version", API_VERSION);
    for (name, value) in params {
        form.append_pair(name, value);
    }
    form.finish()
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

/// An HTTPS client on rustls with the aws-lc-rs provider, the crypto the AWS SDK and sqlx use:
/// reqwest's own choice would be ring. The Mozilla roots are what reqwest's `rustls-tls` trusted.
fn http_client() -> Result<reqwest::Client, SqsError> {
    let setup_error = |detail: String| SqsError::Call {
        operation: "client setup",
        detail,
    };
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| setup_error(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|err| setup_error(without_url(&err)))
}

/// reqwest errors can carry the URL; keep the kind only.
fn without_url(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        err.without_url_ref().to_string()
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(url.as_str(), "<queue>"),
            None => text,
        }
    }
}

fn malformed(operation: &'static str, detail: String) -> SqsError {
    SqsError::Call {
        operation,
        detail: format!("unexpected reply: {detail}"),
    }
}

/// `<ErrorResponse><Error><Code>..</Code><Message>..</Message>`: code and message of an SQS error.
/// Error replies describe the request's problem, never a message body.
fn describe_error(status: u16, xml: &str) -> String {
    let elements = parse_elements(xml).unwrap_or_default();
    let find = |name: &str| {
        elements
            .iter()
            .find(|e| e.ends_with(&["Error", name]))
            .map(|e| e.text.as_str())
    };
    match (find("Code"), find("Message")) {
        (Some(code), Some(message)) => format!("HTTP {status}: {code}: {message}"),
        (Some(code), None) => format!("HTTP {status}: {code}"),
        _ => format!("HTTP {status}"),
    }
}

/// A closed element: the local names from the root to it, and its own text, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Element {
    path: Vec<String>,
    text: String,
}

impl Element {
    fn ends_with(&self, names: &[&str]) -> bool {
        self.path.len() >= names.len()
            && self.path[self.path.len() - names.len()..]
                .iter()
                .zip(names)
                .all(|(a, b)| a == b)
    }
}

/// Every element in closing order (children before their parent). Text is kept byte for byte:
/// entity and character references are resolved, line ends are not normalized.
fn parse_elements(xml: &str) -> Result<Vec<Element>, String> {
    let mut reader = quick_xml::Reader::from_str(xml);
    let mut stack: Vec<(String, String)> = Vec::new();
    let mut elements = Vec::new();
    loop {
        let event = reader
            .read_event()
            .map_err(|err| format!("XML error at {}: {err}", reader.buffer_position()))?;
        match event {
            Event::Start(start) => {
                let name = start.local_name().as_ref().to_owned();
                stack.push((name, String::new()));
            }
            Event::Empty(start) => {
                let mut path: Vec<String> = stack.iter().map(|(name, _)| name.clone()).collect();
                path.push(start.local_name().as_ref().to_owned());
                elements.push(Element {
                    path,
                    text: String::new(),
                });
            }
            Event::Text(text) => {
                if let Some((_, buffer)) = stack.last_mut() {
                    buffer.push_str(&text.into_inner());
                }
            }
            Event::CData(data) => {
                if let Some((_, buffer)) = stack.last_mut() {
                    buffer.push_str(&data.into_inner());
                }
            }
            Event::GeneralRef(reference) => {
                let resolved = match reference.resolve_char_ref() {
                    Ok(Some(ch)) => ch,
                    Ok(None) => match reference.into_inner().as_ref() {
                        "lt" => '<',
                        "gt" => '>',
                        "amp" => '&',
                        "apos" => '\'',
                        "quot" => '"',
                        other => return Err(format!("unknown entity &{other};")),
                    },
                    Err(err) => return Err(format!("bad character reference: {err}")),
                };
                if let Some((_, buffer)) = stack.last_mut() {
                    buffer.push(resolved);
                }
            }
            Event::End(_) => {
                let path: Vec<String> = stack.iter().map(|(name, _)| name.clone()).collect();
                let Some((_, text)) = stack.pop() else {
                    return Err("unbalanced closing tag".to_owned());
                };
                elements.push(Element { path, text });
            }
            Event::Eof => break,
            _ => {}
        }
    }
    Ok(elements)
}

/// `<Attribute><Name>..</Name><Value>..</Value></Attribute>` pairs, in order.
fn attributes(elements: &[Element]) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let (mut name, mut value) = (String::new(), String::new());
    for element in elements {
        if element.ends_with(&["Attribute", "Name"]) {
            name.clone_from(&element.text);
        } else if element.ends_with(&["Attribute", "Value"]) {
            value.clone_from(&element.text);
        } else if element.ends_with(&["Attribute"]) {
            pairs.push((std::mem::take(&mut name), std::mem::take(&mut value)));
        }
    }
    pairs
}

fn parse_messages(xml: &str) -> Result<Vec<ReceivedMessage>, String> {
    let elements = parse_elements(xml)?;
    let mut messages = Vec::new();
    let mut current: Vec<Element> = Vec::new();
    for element in elements {
        if element.ends_with(&["ReceiveMessageResult", "Message"]) {
            let field = |name: &str| {
                current
                    .iter()
                    .find(|e| e.ends_with(&["Message", name]))
                    .map(|e| e.text.clone())
            };
            let mut sent_timestamp = None;
            let mut receive_count = None;
            for (name, value) in attributes(&current) {
                match name.as_str() {
                    "SentTimestamp" => sent_timestamp = Some(value),
                    "ApproximateReceiveCount" => receive_count = value.parse().ok(),
                    _ => {}
                }
            }
            if let (Some(message_id), Some(receipt_handle)) =
                (field("MessageId"), field("ReceiptHandle"))
            {
                messages.push(ReceivedMessage {
                    message_id,
                    receipt_handle,
                    body: field("Body").unwrap_or_default(),
                    sent_timestamp,
                    receive_count,
                });
            }
            current.clear();
        } else {
            current.push(element);
        }
    }
    Ok(messages)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RECEIVED: &str = r#"<?xml version="1.0"?><ReceiveMessageResponse xmlns="http://queue.amazonaws.com/doc/2012-11-05/"><ReceiveMessageResult><Message><MessageId>id-1</MessageId><ReceiptHandle>rh-1</ReceiptHandle><MD5OfBody>x</MD5OfBody><Body>{&quot;ip&quot;: &quot;10.0.0.1&quot;, &quot;t&quot;: &quot;a &amp; b &lt;c&gt; é 📱&quot;}&#xD;
</Body><Attribute><Name>SentTimestamp</Name><Value>1709251200</Value></Attribute><Attribute><Name>ApproximateReceiveCount</Name><Value>3</Value></Attribute></Message><Message><MessageId>id-2</MessageId><ReceiptHandle>rh-2</ReceiptHandle><Body>plain</Body></Message></ReceiveMessageResult><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;

    #[test]
    fn parses_messages_with_escaped_bodies_and_attributes() {
        let messages = parse_messages(RECEIVED).unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].message_id, "id-1");
        assert_eq!(messages[0].receipt_handle, "rh-1");
        assert_eq!(
            messages[0].body,
            "{\"ip\": \"10.0.0.1\", \"t\": \"a & b <c> é 📱\"}\r\n"
        );
        assert_eq!(messages[0].sent_timestamp.as_deref(), Some("1709251200"));
        assert_eq!(messages[0].receive_count, Some(3));
        assert_eq!(messages[1].body, "plain");
        assert_eq!(messages[1].receive_count, None);
    }

    #[test]
    fn an_empty_receive_has_no_messages() {
        let xml = r#"<ReceiveMessageResponse><ReceiveMessageResult/><ResponseMetadata><RequestId>r</RequestId></ResponseMetadata></ReceiveMessageResponse>"#;
        assert!(parse_messages(xml).unwrap().is_empty());
    }

    #[test]
    fn reads_error_replies_and_batch_failures() {
        let xml = r#"<ErrorResponse><Error><Type>Sender</Type><Code>AWS.SimpleQueueService.NonExistentQueue</Code><Message>The specified queue does not exist.</Message></Error></ErrorResponse>"#;
        assert_eq!(
            describe_error(400, xml),
            "HTTP 400: AWS.SimpleQueueService.NonExistentQueue: The specified queue does not exist."
        );
        assert_eq!(describe_error(500, "not xml <"), "HTTP 500");
        let elements = parse_elements(r#"<R><Result><BatchResultErrorEntry><Id>1</Id><SenderFault>true</SenderFault><Code>ReceiptHandleIsInvalid</Code></BatchResultErrorEntry></Result></R>"#).unwrap();
        assert_eq!(
            elements
                .iter()
                .filter(|e| e.ends_with(&["BatchResultErrorEntry"]))
                .count(),
            1
        );
    }

    #[test]
    fn attributes_pair_names_with_values() {
        let xml = r#"<R><GetQueueAttributesResult><Attribute><Name>ApproximateNumberOfMessages</Name><Value>5</Value></Attribute><Attribute><Name>ApproximateNumberOfMessagesNotVisible</Name><Value>2</Value></Attribute></GetQueueAttributesResult></R>"#;
        let pairs = attributes(&parse_elements(xml).unwrap());
        assert_eq!(
            pairs,
            vec![
                ("ApproximateNumberOfMessages".to_owned(), "5".to_owned()),
                (
                    "ApproximateNumberOfMessagesNotVisible".to_owned(),
                    "2".to_owned()
                )
            ]
        );
    }

    #[test]
    fn form_encoding_keeps_bodies_intact() {
        let body = form_body(
            "SendMessageBatch",
            &[("B".to_owned(), "a&b=c+d é \"x\"".to_owned())],
        );
        assert_eq!(
            body,
            "Action=SendMessageBatch&Version=2012-11-05&B=a%26b%3Dc%2Bd+%C3%A9+%22x%22"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(decoded[2].1, "a&b=c+d é \"x\"");
    }

    #[test]
    fn rejects_unknown_entities() {
        assert!(parse_elements("<a>&bogus;</a>").is_err());
    }
}
