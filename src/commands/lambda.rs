//! `etl lambda`: the function behind an SQS event source mapping. A cold start unwraps the keys
//! once and opens a small pool; then the runtime loop of `lambda_runtime` hands each SQS event
//! to [`crate::sources::lambda::Handler`] and returns its `SQSBatchResponse`.

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use clap::Args;
use lambda_runtime::{service_fn, LambdaEvent};
use tracing::info;

use super::{IpPrefixArgs, KmsPinArgs, Outcome};
use crate::adapters::{aws, postgres, secrets};
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::domain::IpPrefix;
use crate::keys::load_live_keys;
use crate::sources::lambda::{Handler, SqsEventPayload};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("database").required(true).args(["database_url", "database_url_secret"])))]
pub struct LambdaArgs {
    /// PostgreSQL connection URL. Prefer --database-url-secret: a function's environment is
    /// readable by whoever may read its configuration.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// AWS Secrets Manager secret (name or ARN) holding the PostgreSQL connection URL, read once
    /// at cold start (`secretsmanager:GetSecretValue`). Its value is the URL, or the JSON of an
    /// RDS-managed secret (`username`, `password`, `host`, `port`, `dbname`), which connects with
    /// sslmode=verify-full.
    #[arg(long, env = "ETL_DATABASE_URL_SECRET", value_name = "SECRET")]
    pub database_url_secret: Option<String>,

    #[command(flatten)]
    pub kms: KmsPinArgs,

    /// After this many receives (the record's ApproximateReceiveCount), a message that still
    /// cannot be written is quarantined instead of failed again. Keep it below the
    /// maxReceiveCount of the queue's redrive policy.
    #[arg(long, env = "ETL_MAX_RECEIVES", default_value_t = 10)]
    pub max_receives: i32,

    /// Database connections of one function instance. An instance handles one event at a time,
    /// which needs one connection; at high concurrency put a connection proxy (RDS Proxy,
    /// PgBouncer) in front of PostgreSQL.
    #[arg(long, env = "ETL_DB_MAX_CONNECTIONS", default_value_t = 2)]
    pub db_max_connections: u32,

    #[command(flatten)]
    pub ip_prefix: IpPrefixArgs,
}

/// What `etl lambda` runs with.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    pub database: DatabaseSource,
    pub max_receives: i32,
    pub db_max_connections: u32,
    /// Whether rows carry their ip's network, and how long a prefix.
    pub ip_prefix: Option<IpPrefix>,
}

/// Where the database URL comes from.
#[derive(Debug, Clone)]
pub enum DatabaseSource {
    Url(Box<DatabaseSettings>),
    /// Read from this secret at cold start.
    Secret(String),
}

impl TryFrom<&LambdaArgs> for LambdaSettings {
    type Error = ConfigError;

    fn try_from(args: &LambdaArgs) -> Result<Self, ConfigError> {
        ConfigError::check_range(
            "--max-receives",
            args.max_receives,
            1,
            i32::MAX,
            "at least 1",
        )?;
        // One event at a time per instance: more connections only hold server slots that
        // hundreds of concurrent instances would exhaust.
        ConfigError::check_range(
            "--db-max-connections",
            args.db_max_connections,
            1,
            8,
            "between 1 and 8 for `etl lambda`",
        )?;
        let database = match (&args.database_url_secret, &args.database_url) {
            (Some(secret), _) => DatabaseSource::Secret(secret.clone()),
            (None, Some(url)) => DatabaseSource::Url(Box::new(DatabaseSettings::parse(url)?)),
            (None, None) => {
                return Err(ConfigError::Invalid(
                    "--database-url-secret / ETL_DATABASE_URL_SECRET or --database-url / DATABASE_URL is required",
                ))
            }
        };
        Ok(Self {
            database,
            max_receives: args.max_receives,
            db_max_connections: args.db_max_connections,
            ip_prefix: args.ip_prefix.ip_prefix,
        })
    }
}

/// What the Lambda service sets in a function's environment and the runtime needs (it would
/// panic without them).
const RUNTIME_VARIABLES: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
];

pub async fn run(args: LambdaArgs) -> anyhow::Result<Outcome> {
    let started = Instant::now();
    let settings = LambdaSettings::try_from(&args)?;
    check_runtime_environment()?;
    let sdk = aws::load_config(KMS_ATTEMPT_TIMEOUT).await;
    let database = match &settings.database {
        DatabaseSource::Url(database) => (**database).clone(),
        DatabaseSource::Secret(secret) => {
            let url = secrets::database_url(&sdk, secret).await?;
            DatabaseSettings::parse(&url)
                .with_context(|| format!("the database URL in the secret {secret}"))?
        }
    };
    let pool = postgres::pool(database.options, settings.db_max_connections);
    // The runtime ends a function by freezing or killing it, not with a signal to give way to.
    let kms = args.kms.kms(&sdk).await?;
    let keys = load_live_keys(&pool, kms, &tokio_util::sync::CancellationToken::new()).await?;
    let handler = Arc::new(Handler::new(
        pool,
        keys,
        settings.max_receives,
        settings.ip_prefix,
    ));
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
    .map_err(|err| anyhow::anyhow!("the Lambda Runtime API loop stopped: {err}"))?;
    Ok(Outcome::Success)
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
