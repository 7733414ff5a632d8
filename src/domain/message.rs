//! A message as the pipeline sees it, whichever source it came from.

use super::file_line::FileLine;

/// One message to validate, mask and write. Sources build it: the SQS source from a received
/// message (whose receipt handle it keeps to itself), the file source from a line. `Debug` omits
/// the body, which holds personal data.
#[derive(Clone)]
pub struct Message {
    /// Stable across redeliveries: the SQS message id, or `file:<fingerprint>:<line>`.
    pub id: String,
    pub body: String,
    /// `SentTimestamp` as the queue sent it: milliseconds on real SQS, seconds on the reference
    /// LocalStack; `None` for a line of a file.
    pub sent_timestamp: Option<String>,
    /// SQS `ApproximateReceiveCount`; `None` for a line of a file.
    pub receive_count: Option<i32>,
    /// Where in a file the message was read; `None` for a queue message.
    pub line: Option<FileLine>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("id", &self.id)
            .field("receive_count", &self.receive_count)
            .field("line", &self.line)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_omits_the_body() {
        let message = Message {
            id: "m-1".into(),
            body: r#"{"ip": "10.0.0.1"}"#.into(),
            sent_timestamp: None,
            receive_count: Some(1),
            line: None,
        };
        let shown = format!("{message:?}");
        assert!(
            shown.contains("m-1") && !shown.contains("10.0.0.1"),
            "{shown}"
        );
    }
}
