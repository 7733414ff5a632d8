//! Logging. Lines go to stderr (stdout carries command output such as summaries); the format is
//! readable text or one JSON object per line (`--log-format json`).
//!
//! No personal data reaches a log line at any level: our code logs message ids, counts and
//! reasons, never bodies, ips, device ids or keys; and events of other crates are kept at INFO
//! or less verbose whatever the filter says, because the AWS SDK's and HTTP stack's debug and
//! trace events include request and response bodies (that is, message bodies).

use std::io::IsTerminal;

use tracing::{Level, Metadata};
use tracing_indicatif::filter::{hide_indicatif_span_fields, IndicatifFilter};
use tracing_indicatif::IndicatifLayer;
use tracing_subscriber::filter::{filter_fn, EnvFilter};
use tracing_subscriber::fmt::format::DefaultFields;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, Layer};

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// Installs the global subscriber. An invalid filter falls back to `info` with a warning. Text
/// logs on a terminal go through `tracing-indicatif`, so progress bars (spans with an
/// `indicatif.pb_show` field) and log lines do not tear each other.
pub fn init(format: LogFormat, filter: &str) {
    let (env_filter, bad_filter) = match EnvFilter::try_new(filter) {
        Ok(env_filter) => (env_filter, false),
        Err(_) => (EnvFilter::new("info"), true),
    };
    let indicatif = (format == LogFormat::Text && std::io::stderr().is_terminal()).then(|| {
        IndicatifLayer::new()
            .with_span_field_formatter(hide_indicatif_span_fields(DefaultFields::new()))
    });
    let lines = match (&indicatif, format) {
        (Some(indicatif), _) => fmt::layer()
            .with_writer(indicatif.get_stderr_writer())
            .boxed(),
        (None, LogFormat::Text) => fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .boxed(),
        (None, LogFormat::Json) => fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(
            lines
                .with_filter(filter_fn(is_safe))
                .with_filter(env_filter),
        )
        .with(indicatif.map(|layer| layer.with_filter(IndicatifFilter::new(false))))
        .init();
    if bad_filter {
        tracing::warn!("invalid --log-level / ETL_LOG filter; using `info`");
    }
}

/// The error that ends a command, on stderr: `error: <line>`, or under `--log-format json` one
/// JSON object shaped as the log lines are (flattened fields), so a log pipeline parses it too.
pub fn fatal(format: LogFormat, line: &str) {
    match format {
        LogFormat::Text => eprintln!("error: {line}"),
        LogFormat::Json => eprintln!(
            "{}",
            serde_json::json!({
                "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
                "level": "ERROR",
                "message": line,
                "target": "etl",
            })
        ),
    }
}

/// Our own events at any level; other crates' events at INFO, WARN and ERROR only (the instance
/// metadata client's at ERROR), and PostgreSQL's notices (such as "policy does not exist, skipping" during migrations) from WARN.
fn is_safe(metadata: &Metadata<'_>) -> bool {
    let target = metadata.target();
    if target.starts_with("etl") {
        return true;
    }
    let ceiling = if target == "sqlx::postgres::notice" {
        Level::WARN
    } else if target.starts_with("aws_config::imds") {
        // Off EC2, the region and credential lookups of the instance metadata service fail with
        // a long warning each; what is missing is said once, by our own error or `etl doctor`.
        Level::ERROR
    } else {
        Level::INFO
    };
    *metadata.level() <= ceiling
}
