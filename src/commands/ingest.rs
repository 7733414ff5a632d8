use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use backon::Retryable;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres;
use crate::adapters::sqs::SqsQueue;
use crate::cli::IngestArgs;
use crate::configuration::{IngestSettings, IngestSource};
use crate::pipeline::backoff;
use crate::pipeline::file_source::{self, FileOptions};
use crate::pipeline::known_masks::KnownMasks;
use crate::pipeline::{self, progress, Committer, IngestOptions, Stats, Summary, Transformer};
use crate::server::{self, Readiness};
use crate::startup::{self, StartupError};

/// Headroom of each SQS attempt over the long-poll wait, so a healthy receive never times out.
const ATTEMPT_HEADROOM: Duration = Duration::from_secs(10);

pub async fn run(args: &IngestArgs) -> anyhow::Result<()> {
    let settings = IngestSettings::try_from(args)?;
    let sdk = aws::load_config(settings.wait + ATTEMPT_HEADROOM).await;
    let pool = postgres::pool(
        settings.database.options.clone(),
        settings.db_max_connections,
    );
    let summary = match &settings.source {
        IngestSource::Queue(url) => {
            let (queue, protocol) = SqsQueue::connect(&sdk, url.as_str(), args.sqs_protocol)
                .await
                .context("cannot reach the queue")?;
            info!(protocol = protocol.as_str(), "SQS protocol");
            from_queue(&settings, args, &sdk, pool, queue).await?
        }
        IngestSource::File { path, batch_size } => {
            from_file(&settings, &sdk, pool, path, *batch_size).await?
        }
    };
    info!(
        written = summary.written,
        quarantined = summary.quarantined,
        "ingest stopped"
    );
    if settings.summary_json {
        println!("{}", serde_json::to_string(&summary)?);
    } else {
        print!("{summary}");
    }
    // From SQS, a batch that was not written stays on the queue and comes back; from a file, its
    // lines wait for the next run, so the run must not look successful.
    if matches!(settings.source, IngestSource::File { .. }) && summary.write_failures > 0 {
        anyhow::bail!(
            "{} batches were not written; run the same command again to write them (committed lines are skipped)",
            summary.write_failures
        );
    }
    Ok(())
}

async fn load_keys(
    pool: &sqlx::PgPool,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<Arc<Transformer>> {
    let kms = Kms::new(sdk);
    // A database or KMS hiccup at start is retried beyond the SDK's own retries; a missing key,
    // a denial or a wrong encryption context is not.
    let transformer = (|| startup::load_transformer(pool, &kms))
        .retry(backoff())
        .when(StartupError::is_transient)
        .notify(|err, delay| warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "cannot load the keys yet; retrying"))
        .await
        .context("refusing to start without the data keys")?;
    log_audit_head(pool).await;
    Ok(Arc::new(transformer))
}

/// The audit chain head at start, so that log storage outside the database keeps an anchor for
/// `etl audit verify --anchor`. Not a reason to stop ingesting if it cannot be read.
async fn log_audit_head(pool: &sqlx::PgPool) {
    match crate::adapters::postgres::audit::head(pool).await {
        Ok(head) => {
            let (id, hash) = head.unwrap_or((0, crate::crypto::GENESIS.to_vec()));
            info!(audit_head = %format!("{id}:{}", hex::encode(hash)), "audit chain head");
        }
        Err(err) => warn!(error = %err, "cannot read the audit chain head"),
    }
}

async fn from_queue(
    settings: &IngestSettings,
    args: &IngestArgs,
    sdk: &aws_config::SdkConfig,
    pool: sqlx::PgPool,
    queue: SqsQueue,
) -> anyhow::Result<Summary> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // The endpoint comes up before the keys load, so /healthz answers during startup.
    let readiness = Readiness::new(pool.clone(), queue.clone());
    server::start(args.metrics_addr, Arc::clone(&readiness), shutdown.clone()).await?;
    let transformer = load_keys(&pool, sdk).await?;
    readiness.keys_loaded();

    info!(
        pollers = settings.pollers,
        drain = settings.drain,
        "ingest started"
    );
    let stats = Arc::new(Stats::default());
    let progress_done = CancellationToken::new();
    if settings.drain {
        tokio::spawn(progress::report(
            Arc::clone(&stats),
            queue.clone(),
            progress_done.clone(),
        ));
    }
    let summary = pipeline::run(
        queue,
        pool,
        transformer,
        IngestOptions {
            pollers: settings.pollers,
            wait: settings.wait,
            drain: settings.drain,
            visibility: settings.visibility,
            max_receives: settings.max_receives,
        },
        stats,
        shutdown.clone(),
    )
    .await;
    progress_done.cancel();
    shutdown.cancel();
    Ok(summary)
}

async fn from_file(
    settings: &IngestSettings,
    sdk: &aws_config::SdkConfig,
    pool: sqlx::PgPool,
    path: &Path,
    batch_size: usize,
) -> anyhow::Result<Summary> {
    let input: Box<dyn BufRead + Send> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let transformer = load_keys(&pool, sdk).await?;
    info!(
        writers = settings.pollers,
        batch_size, "ingest from file started"
    );
    let committer = Committer {
        pool,
        transformer,
        known_masks: Arc::new(KnownMasks::default()),
        stats: Arc::new(Stats::default()),
        max_receives: settings.max_receives,
    };
    let options = FileOptions {
        batch_size,
        writers: settings.pollers,
    };
    file_source::run(input, committer, options)
        .await
        .with_context(|| format!("reading {}", path.display()))
}

/// SIGINT or SIGTERM stops polling; what is in flight is finished.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    info!("shutdown requested; finishing the batches in flight");
    shutdown.cancel();
}
