//! Reading the XML replies and error bodies.

use quick_xml::events::Event;

use super::{ReceivedMessage, SqsError};

/// The error for a reply that is not what `operation` returns.
pub(super) fn malformed(operation: &'static str, detail: String) -> SqsError {
    SqsError::Call {
        operation,
        detail: format!("unexpected reply: {detail}"),
    }
}

/// `<ErrorResponse><Error><Code>..</Code><Message>..</Message>`: code and message of an SQS error.
/// Error replies describe the request's problem, never a message body.
pub(super) fn error_reply(xml: &str) -> (Option<String>, Option<String>) {
    let elements = parse_elements(xml).unwrap_or_default();
    let find = |name: &str| {
        elements
            .iter()
            .find(|e| e.ends_with(&["Error", name]))
            .map(|e| e.text.clone())
    };
    (find("Code"), find("Message"))
}

/// A closed element: the local names from the root to it, and its own text, unescaped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Element {
    path: Vec<String>,
    pub(super) text: String,
}

impl Element {
    pub(super) fn ends_with(&self, names: &[&str]) -> bool {
        self.path.len() >= names.len()
            && self.path[self.path.len() - names.len()..]
                .iter()
                .zip(names)
                .all(|(a, b)| a == b)
    }
}

/// Every element in closing order (children before their parent). Text is kept byte for byte:
/// entity and character references are resolved, line ends are not normalized.
pub(super) fn parse_elements(xml: &str) -> Result<Vec<Element>, String> {
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
pub(super) fn attributes(elements: &[Element]) -> Vec<(String, String)> {
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

pub(super) fn parse_messages(xml: &str) -> Result<Vec<ReceivedMessage>, String> {
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
            error_reply(xml),
            (
                Some("AWS.SimpleQueueService.NonExistentQueue".to_owned()),
                Some("The specified queue does not exist.".to_owned())
            )
        );
        assert_eq!(error_reply("not xml <"), (None, None));
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
    fn rejects_unknown_entities() {
        assert!(parse_elements("<a>&bogus;</a>").is_err());
    }
}
