//! The URL of an SQS queue.

/// An http(s) URL with a host and a path, as SQS queue URLs are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl(String);

/// The text is not an http(s) URL of a queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not an http(s) URL of an SQS queue")]
pub struct InvalidQueueUrl;

impl QueueUrl {
    pub fn parse(text: &str) -> Result<Self, InvalidQueueUrl> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or(InvalidQueueUrl)?;
        match rest.split_once('/') {
            Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty() => {
                Ok(Self(text.to_owned()))
            }
            _ => Err(InvalidQueueUrl),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_urls() {
        assert!(QueueUrl::parse("http://localhost:4566/000000000000/login-queue").is_ok());
        assert!(QueueUrl::parse("https://sqs.us-east-1.amazonaws.com/123/q").is_ok());
        assert!(QueueUrl::parse("login-queue").is_err());
        assert!(QueueUrl::parse("http://host/").is_err());
        assert!(QueueUrl::parse("ftp://host/q").is_err());
    }
}
