//! Shared AWS SDK configuration. Region, credentials and endpoint come from the SDK's own
//! variables (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_ENDPOINT_URL`, ...)
//! and profiles; nothing here re-implements that.

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, SdkConfig};

/// Loads the SDK configuration. `attempt_timeout` bounds each HTTP attempt; for SQS it must exceed
/// the long-poll wait or a receive could hang on a half-open connection.
pub async fn load_config(attempt_timeout: Duration) -> SdkConfig {
    let timeouts = TimeoutConfig::builder()
        .connect_timeout(Duration::from_secs(5))
        .operation_attempt_timeout(attempt_timeout)
        .build();
    aws_config::defaults(BehaviorVersion::latest())
        .timeout_config(timeouts)
        .load()
        .await
}

/// Why a request got no answer, in words: `connection refused`, `timed out`, or the innermost
/// cause the error chain gives.
pub fn unreached_cause(err: &(dyn std::error::Error + 'static), timed_out: bool) -> String {
    let mut layer: Option<&(dyn std::error::Error + 'static)> = Some(err);
    let mut innermost = err.to_string();
    while let Some(current) = layer {
        if let Some(io) = current.downcast_ref::<std::io::Error>() {
            match io.kind() {
                std::io::ErrorKind::ConnectionRefused => return "connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => return "timed out".to_owned(),
                _ => {}
            }
        }
        innermost = current.to_string();
        layer = current.source();
    }
    if timed_out {
        "timed out".to_owned()
    } else {
        innermost
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_found_in_the_chain() {
        #[derive(Debug, thiserror::Error)]
        #[error("dispatch failure")]
        struct Outer(#[source] std::io::Error);
        let refused = Outer(std::io::ErrorKind::ConnectionRefused.into());
        assert_eq!(unreached_cause(&refused, false), "connection refused");
        let other = Outer(std::io::Error::other("dns lookup failed"));
        assert_eq!(unreached_cause(&other, false), "dns lookup failed");
        assert_eq!(unreached_cause(&other, true), "timed out");
    }
}
