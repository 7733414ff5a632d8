//! `etl lambda`: the function behind an SQS event source mapping. A cold start unwraps the keys
//! once and opens a small pool; then the runtime loop of `lambda_runtime` hands each SQS event
//! to [`crate::sources::lambda::Handler`] and returns its `SQSBatchResponse`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use lambda_runtime::{service_fn, LambdaEvent};
use tracing::info;

use super::ingest::load_keys;
use crate::adapters::{aws, postgres};
use crate::cli::LambdaArgs;
use crate::configuration::LambdaSettings;
use crate::sources::lambda::{Handler, SqsEventPayload};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

/// What the Lambda service sets in a function's environment and the runtime needs (it would
/// panic without them).
const RUNTIME_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
];

pub async fn run(args: &LambdaArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let settings = LambdaSettings::try_from(args)?;
    check_runtime_environment()?;
    let sdk = aws::load_config(KMS_ATTEMPT_TIMEOUT).await;
    let pool = postgres::pool(
        settings.database.options.clone(),
        settings.db_max_connections,
    );
    let keys = load_keys(&pool, &sdk).await?;
    let handler = Arc::new(Handler::new(pool, keys, settings.max_receives));
    info!(
        init_ms = started.elapsed().as_millis() as u64,
        db_max_connections = settings.db_max_connections,
        "lambda function ready"
    );
    lambda_runtime::run(service_fn(move |event: LambdaEvent<SqsEventPayload>| {
        let handler = Arc::clone(&handler);
        async move {
            handler
                .handle(event.payload.0, event.context.deadline())
                .await
        }
    }))
    .await
    .map_err(|err| anyhow::anyhow!("the Lambda Runtime API loop stopped: {err}"))
}

fn check_runtime_environment() -> anyhow::Result<()> {
    for name in RUNTIME_VARIABLES {
        std::env::var(name).with_context(|| {
            format!("{name} is not set: `etl lambda` runs inside AWS Lambda (or an emulator of its Runtime API)")
        })?;
    }
    std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")?
        .parse::<i32>()
        .context("AWS_LAMBDA_FUNCTION_MEMORY_SIZE is not a number of megabytes")?;
    Ok(())
}
