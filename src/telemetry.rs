//! Logging. Lines go to stderr (stdout carries command output such as summaries); the format is
//! readable text or one JSON object per line. Nothing logged anywhere carries personal data: the
//! code logs message ids, counts and reasons, never bodies, ips, device ids or keys.

use tracing_subscriber::EnvFilter;

use crate::cli::LogFormat;

/// Installs the global subscriber. An invalid filter falls back to `info` with a warning.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(env_filter) => (env_filter, false),
        Err(_) => (EnvFilter::new("info"), true),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(env_filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
    if bad_filter {
        tracing::warn!("invalid --log-level / ETL_LOG filter; using `info`");
    }
}
