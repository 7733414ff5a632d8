use std::io::{BufRead, BufReader};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use backon::Retryable;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres;
use crate::adapters::sqs::{SqsProtocol, SqsQueue};
use crate::cli::IngestArgs;
use crate::configuration::{IngestSettings, IngestSource};
use crate::pipeline::batcher::BatchLimits;
use crate::pipeline::{backoff, writers, Committer, LiveKeys, Stats, Summary, WriteJob};
use crate::server::{self, Readiness};
use crate::sources::{self, sqs::progress, sqs::SqsSourceOptions};
use crate::startup::{self, StartupError};

/// Headroom of each SQS attempt over the long-poll wait, so a healthy receive never times out.
const ATTEMPT_HEADROOM: Duration = Duration::from_secs(10);

pub async fn run(args: &IngestArgs) -> anyhow::Result<()> {
    let settings = IngestSettings::try_from(args)?;
    if args.pollers.is_some() {
        warn!("--pollers / ETL_POLLERS is deprecated: use --receivers and --writers");
    }
    let sdk = aws::load_config(settings.wait + ATTEMPT_HEADROOM).await;
    let pool = postgres::pool(
        settings.database.options.clone(),
        settings.db_max_connections,
    );
    let summary = match &settings.source {
        IngestSource::Queue(url) => {
            let (queue, protocol) =
                SqsQueue::connect(&sdk, url.as_str(), args.sqs_protocol).await?;
            from_queue(&settings, args, &sdk, pool, (queue, protocol)).await?
        }
        IngestSource::File(path) => from_file(&settings, &sdk, pool, path).await?,
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
    if matches!(settings.source, IngestSource::File(_)) && summary.write_failures > 0 {
        anyhow::bail!(
            "{} batches were not written; run the same command again to write them (committed lines are skipped)",
            summary.write_failures
        );
    }
    Ok(())
}

/// Unwraps the keys (retrying transient failures) and logs the audit chain head; `ingest` and
/// `lambda` start alike.
pub(super) async fn load_keys(
    pool: &sqlx::PgPool,
    sdk: &aws_config::SdkConfig,
) -> anyhow::Result<Arc<LiveKeys>> {
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
    Ok(Arc::new(LiveKeys::new(transformer, kms)))
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
    (queue, protocol): (SqsQueue, SqsProtocol),
) -> anyhow::Result<Summary> {
    let shutdown = CancellationToken::new();
    tokio::spawn(cancel_on_signal(shutdown.clone()));
    // The endpoint comes up before the keys load, so /healthz answers during startup.
    let readiness = Readiness::new(pool.clone(), queue.clone());
    let metrics_addr =
        server::start(args.metrics_addr, Arc::clone(&readiness), shutdown.clone()).await?;
    let keys = load_keys(&pool, sdk).await?;
    readiness.keys_loaded();

    // Logged once the keys are loaded: a run that cannot start prints its error line alone.
    info!(
        protocol = protocol.as_str(),
        %metrics_addr,
        receivers = settings.receivers,
        writers = settings.writers,
        batch_messages = settings.batch_messages,
        batch_wait_ms = settings.batch_wait.as_millis() as u64,
        drain = settings.drain,
        "ingest started"
    );
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let progress_done = CancellationToken::new();
    if settings.drain {
        tokio::spawn(progress::report(
            Arc::clone(&stats),
            queue.clone(),
            progress_done.clone(),
        ));
    }
    let (jobs, writers) = start_writers(settings, pool, keys, &stats);
    let writers = tokio::spawn(watch_writers(writers, shutdown.clone()));
    let options = SqsSourceOptions {
        receivers: settings.receivers,
        wait: settings.wait,
        drain: settings.drain,
        visibility: settings.visibility,
        batch: BatchLimits {
            max_messages: settings.batch_messages,
            max_wait: settings.batch_wait,
        },
    };
    sources::sqs::run(queue, jobs, Arc::clone(&stats), options, shutdown.clone()).await;
    let writers_ok = writers.await.unwrap_or(false);
    progress_done.cancel();
    shutdown.cancel();
    anyhow::ensure!(
        writers_ok,
        "a writer task ended abnormally; ingest stopped (what it did not commit stays on the queue)"
    );
    Ok(stats.summary(started.elapsed()))
}

/// The writers both sources feed, with the one committer they share; and the channel to them,
/// one batch waiting per writer (more would only hold memory).
fn start_writers(
    settings: &IngestSettings,
    pool: sqlx::PgPool,
    keys: Arc<LiveKeys>,
    stats: &Arc<Stats>,
) -> (mpsc::Sender<WriteJob>, JoinSet<()>) {
    let committer = Committer::new(pool, keys, Arc::clone(stats), settings.max_receives);
    let (jobs, queued) = mpsc::channel(settings.writers);
    let writers = writers::spawn(Arc::new(committer), settings.writers, queued);
    (jobs, writers)
}

/// Waits for the writers to end; if one ends abnormally, stops the run rather than keep receiving
/// messages that fewer writers, or none, would write. Returns whether all ended normally.
async fn watch_writers(mut writers: JoinSet<()>, shutdown: CancellationToken) -> bool {
    let mut all_ok = true;
    while let Some(joined) = writers.join_next().await {
        if let Err(err) = joined {
            error!(error = %err, "writer task ended abnormally; stopping");
            all_ok = false;
            shutdown.cancel();
        }
    }
    all_ok
}

async fn from_file(
    settings: &IngestSettings,
    sdk: &aws_config::SdkConfig,
    pool: sqlx::PgPool,
    path: &Path,
) -> anyhow::Result<Summary> {
    let input: Box<dyn BufRead + Send> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let keys = load_keys(&pool, sdk).await?;
    info!(
        writers = settings.writers,
        batch_messages = settings.batch_messages,
        "ingest from file started"
    );
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    // The reader needs the pool, the line key and the counters the writers' committer holds.
    let committer = Committer::new(
        pool.clone(),
        Arc::clone(&keys),
        Arc::clone(&stats),
        settings.max_receives,
    );
    let (jobs, writers) = start_writers(settings, pool, keys, &stats);
    sources::file::run(input, &committer, jobs, writers, settings.batch_messages)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(stats.summary(started.elapsed()))
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
