//! The binary's edge: an error as one line for the user, and its whole chain, without
//! repetition, for the debug log.
//!
//! Each boundary (SQS, KMS, PostgreSQL, configuration) has an error type whose message already
//! says the cause in words, names the resource and gives the fix; the layers above add what was
//! being done. Below a boundary error are the SDK's and sqlx's own errors, which repeat it in
//! other words: the user's line stops there, the debug log goes on.

use std::error::Error as StdError;

use crate::adapters::kms::KmsError;
use crate::adapters::postgres::{describe_unlocated, DatabaseError};
use crate::adapters::sqs::SqsError;
use crate::configuration::ConfigError;

/// The user's line: each layer's own words down to the first boundary error.
pub fn one_line(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for layer in err.chain() {
        if let Some(sqlx) = layer.downcast_ref::<sqlx::Error>() {
            // A database error no boundary classified: classified here, without the server.
            push_new(&mut parts, describe_unlocated(sqlx));
            break;
        }
        push_new(&mut parts, own_words(layer));
        if is_boundary(layer) {
            break;
        }
    }
    parts.join(": ")
}

/// A write to stdout that failed: the reader went away, or the disk under a redirect is full.
/// Only this error, not a broken pipe to the database or an endpoint, ends a command quietly.
#[derive(Debug, thiserror::Error)]
#[error("cannot write to stdout: {0}")]
pub struct StdoutError(#[from] pub std::io::Error);

/// Whether the error is stdout's reader going away (`etl dev generate | head`): the command did
/// what was asked of it, as `head` asked, so it ends quietly and successfully.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|layer| {
        layer
            .downcast_ref::<StdoutError>()
            .is_some_and(|stdout| stdout.0.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The whole chain for the debug log: each layer's own words, none repeated.
pub fn chain(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for layer in err.chain() {
        push_new(&mut parts, own_words(layer));
    }
    parts.join(": ")
}

fn is_boundary(layer: &(dyn StdError + 'static)) -> bool {
    layer.is::<DatabaseError>()
        || layer.is::<SqsError>()
        || layer.is::<KmsError>()
        || layer.is::<ConfigError>()
}

/// A layer's message without its source's message where it ends with it (`{context}: {source}`).
fn own_words(layer: &(dyn StdError + 'static)) -> String {
    let text = layer.to_string();
    let Some(source) = layer.source().map(ToString::to_string) else {
        return text;
    };
    if text == source {
        return String::new();
    }
    match text.strip_suffix(&source) {
        Some(rest) => rest.trim_end_matches([':', ' ']).to_owned(),
        None => text,
    }
}

/// Adds `text` unless it is empty or already said.
fn push_new(parts: &mut Vec<String>, text: String) {
    if !text.is_empty() && !parts.iter().any(|part| part.contains(&text)) {
        parts.push(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("while executing migrations: {0}")]
    struct Wrapper(#[source] sqlx::Error);

    fn missing_database() -> sqlx::Error {
        sqlx::Error::Protocol("database \"nope\" does not exist".into())
    }

    #[test]
    fn the_line_stops_at_the_boundary_and_the_chain_does_not_repeat() {
        let err = anyhow::Error::new(Wrapper(missing_database())).context("applying migrations");
        let line = one_line(&err);
        assert_eq!(
            line,
            "applying migrations: while executing migrations: database of DATABASE_URL: \
             encountered unexpected or invalid data: database \"nope\" does not exist"
        );
        let chain = chain(&err);
        assert_eq!(chain.matches("does not exist").count(), 1, "{chain}");
    }

    #[test]
    fn a_boundary_error_ends_the_line() {
        let err = anyhow::Error::new(ConfigError::QueueUrl).context("starting");
        assert_eq!(
            one_line(&err),
            "starting: --queue-url / ETL_QUEUE_URL must be an http(s) URL of an SQS queue"
        );
    }
}
