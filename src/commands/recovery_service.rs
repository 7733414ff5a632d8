//! `etl recovery-service`: opens recovery requests on the database's word (see
//! `recovery::service`), for a login that is a member of etl_opener and whose identity may call
//! KMS Decrypt on the vault and quarantine keys. Serves `/healthz`, `/readyz` and `/metrics`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::{DatabaseArgs, KmsPinArgs, Outcome};
use crate::adapters::{aws, postgres};
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::recovery::service::{self, ServiceSettings};
use crate::server::{self, Readiness};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Args)]
pub struct RecoveryServiceArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kms: KmsPinArgs,

    /// Address of the operations endpoint: Prometheus /metrics, /healthz and /readyz. Port 0
    /// picks a free port (logged at start).
    #[arg(long, env = "ETL_METRICS_ADDR", default_value = "127.0.0.1:9899")]
    pub metrics_addr: SocketAddr,

    /// Longest wait between two looks for requests when no notification arrives, for example
    /// `5s`. A committed request notifies the service at once; this only bounds a missed one.
    #[arg(long, env = "ETL_RECOVERY_POLL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub poll: Duration,

    /// How long an unwrapped key version is kept in memory after KMS unwrapped it.
    #[arg(long, env = "ETL_RECOVERY_KEY_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub key_ttl: Duration,

    /// How long sealed replies wait for their client before they are deleted.
    #[arg(long, env = "ETL_RECOVERY_REPLY_TTL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub reply_ttl: Duration,

    /// Database connections: the listener, the claim, the opening row and `/readyz` each take one.
    #[arg(long, env = "ETL_DB_MAX_CONNECTIONS", default_value_t = 5)]
    pub db_max_connections: u32,
}

/// What `etl recovery-service` runs with.
#[derive(Debug, Clone)]
pub struct RecoveryServiceSettings {
    pub database: DatabaseSettings,
    pub metrics_addr: SocketAddr,
    pub service: ServiceSettings,
    pub db_max_connections: u32,
}

impl TryFrom<&RecoveryServiceArgs> for RecoveryServiceSettings {
    type Error = ConfigError;

    fn try_from(args: &RecoveryServiceArgs) -> Result<Self, ConfigError> {
        let second = Duration::from_secs(1);
        let day = Duration::from_secs(24 * 3600);
        ConfigError::check_range(
            "--poll",
            args.poll,
            Duration::from_millis(100),
            Duration::from_secs(300),
            "between 100ms and 5m",
        )?;
        ConfigError::check_range("--key-ttl", args.key_ttl, second, day, "between 1s and 24h")?;
        ConfigError::check_range(
            "--reply-ttl",
            args.reply_ttl,
            second,
            day,
            "between 1s and 24h",
        )?;
        ConfigError::check_range(
            "--db-max-connections",
            args.db_max_connections,
            4,
            64,
            "between 4 and 64",
        )?;
        Ok(Self {
            database: args.database.settings()?,
            metrics_addr: args.metrics_addr,
            service: ServiceSettings {
                poll: args.poll,
                key_ttl: args.key_ttl,
                reply_ttl: args.reply_ttl,
            },
            db_max_connections: args.db_max_connections,
        })
    }
}

pub async fn run(args: RecoveryServiceArgs) -> anyhow::Result<Outcome> {
    let settings = RecoveryServiceSettings::try_from(&args)?;
    let options = postgres::read_committed(settings.database.options.clone());
    postgres::check_connection(&options).await?;
    let pool = postgres::pool(options, settings.db_max_connections);
    let shutdown = CancellationToken::new();
    tokio::spawn(super::cancel_on_signal(shutdown.clone()));
    let readiness = Readiness::recovery_service(pool.clone());
    let metrics_addr = server::start(
        settings.metrics_addr,
        std::sync::Arc::clone(&readiness),
        shutdown.clone(),
    )
    .await?;
    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    service::run(pool, kms, settings.service, shutdown, || {
        readiness.started();
        info!(%metrics_addr, "recovery service started");
    })
    .await?;
    Ok(Outcome::Success)
}
