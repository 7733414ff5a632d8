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
