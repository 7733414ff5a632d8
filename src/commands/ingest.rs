//! `etl ingest`: the long-running service (or, with `--drain`, a run until the queue is empty),
//! and backfills from a file with `--from-file`.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::{DatabaseArgs, IpPrefixArgs, KmsPinArgs, Outcome, SqsProtocolArg};
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, DatabaseError};
use crate::adapters::s3::{AnchorLocation, AnchorStore};
use crate::adapters::sqs::{SqsProtocol, SqsQueue, MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS};
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::crypto::GENESIS;
use crate::domain::{IpPrefix, QueueUrl};
use crate::keys::load_live_keys;
use crate::pipeline::batcher::BatchLimits;
use crate::pipeline::{writers, Committer, Stats, Summary, WriteJob};
use crate::server::{self, Readiness};
use crate::sources::{self, sqs::progress, sqs::SqsSourceOptions};
use crate::startup;

#[derive(Debug, Args)]
pub struct IngestArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub kms: KmsPinArgs,

    /// URL of the SQS queue to consume.
    #[arg(long, env = "ETL_QUEUE_URL", required_unless_present = "from_file")]
    pub queue_url: Option<String>,

    /// Read one JSON body per line from this file (`-` for stdin) instead of SQS: a backfill or a
    /// dead-letter queue export, through the same validation, masking, vault and quarantine.
    /// Each line's id is `file:<fingerprint of the first line>:<line number>`; replaying the
    /// file, or a longer one that starts with it, writes nothing twice. Ends at the end of the
    /// input.
    #[arg(long, value_name = "PATH", conflicts_with = "drain")]
    pub from_file: Option<PathBuf>,

    /// SQS wire protocol: `auto` probes once at start (AWS JSON, then Query); `query` is what the
    /// reference LocalStack 0.14 image speaks.
    #[arg(long, value_enum, env = "ETL_SQS_PROTOCOL", default_value_t = SqsProtocolArg::Auto)]
    pub sqs_protocol: SqsProtocolArg,

    /// Exit when the queue is empty (an empty receive, then zero visible and zero in-flight
    /// messages) and print a summary, instead of running until SIGINT/SIGTERM.
    #[arg(long)]
    pub drain: bool,

    /// Print the final summary as one JSON object on stdout.
    #[arg(long)]
    pub summary_json: bool,

    /// Concurrent `ReceiveMessage` calls (10 messages each). They stop receiving while the
    /// writers are behind. [default: 16]
    #[arg(long, env = "ETL_RECEIVERS")]
    pub receivers: Option<usize>,

    /// Concurrent write transactions. [default: 4]
    #[arg(long, env = "ETL_WRITERS")]
    pub writers: Option<usize>,

    /// Largest write batch, in messages: received messages are coalesced into transactions of
    /// up to this many (with --from-file, consecutive lines). `--batch-size` is an old name.
    #[arg(
        long,
        env = "ETL_BATCH_MESSAGES",
        default_value_t = 2000,
        alias = "batch-size"
    )]
    pub batch_messages: usize,

    /// Longest a received message waits for its batch to fill before the batch is written
    /// anyway, for example `500ms` or `2s`; at most half the visibility timeout.
    #[arg(long, env = "ETL_BATCH_WAIT", default_value = "1s", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// Most bytes received messages may hold at once, for example `64MiB`: bodies until their
    /// batch is written, ids and receipt handles until deleted. Receiving waits while it is
    /// used up, and a receive asks for as many messages as its receiver's share holds, so
    /// 256 KiB bodies do not take the memory that 2 KiB ones are sized for. At least 1MiB; a
    /// message larger than it still passes, alone.
    #[arg(long, env = "ETL_MAX_INFLIGHT_BYTES", default_value = "64MiB")]
    pub max_inflight_bytes: bytesize::ByteSize,

    /// Deprecated: sets both --receivers and --writers where those are not given.
    #[arg(long, env = "ETL_POLLERS", hide = true)]
    pub pollers: Option<usize>,

    /// Long-poll wait per receive, 0 to 20 seconds [default: 20, or 1 with --drain so the run
    /// ends promptly once the queue is empty].
    #[arg(long, env = "ETL_WAIT_SECONDS")]
    pub wait_seconds: Option<u8>,

    /// Seconds a received message stays hidden from other consumers. A batch still in flight at
    /// half this time gets it extended (a heartbeat), so this bounds only how long a crashed
    /// consumer's messages wait before redelivery.
    #[arg(long, env = "ETL_VISIBILITY_TIMEOUT", default_value_t = 30)]
    pub visibility_timeout: u64,

    /// After this many receives (SQS ApproximateReceiveCount), a message that still cannot be
    /// written is quarantined instead of returned to the queue, so one poison message cannot
    /// block it. Keep it below the maxReceiveCount of the queue's redrive policy, if it has one.
    #[arg(long, env = "ETL_MAX_RECEIVES", default_value_t = 10)]
    pub max_receives: i32,

    /// Address of the operations endpoint: Prometheus /metrics, /healthz and /readyz. Port 0
    /// picks a free port (logged at start).
    #[arg(long, env = "ETL_METRICS_ADDR", default_value = "127.0.0.1:9898")]
    pub metrics_addr: SocketAddr,

    /// Database connections [default: writers + 2].
    #[arg(long, env = "ETL_DB_MAX_CONNECTIONS")]
    pub db_max_connections: Option<u32>,

    /// Write the audit chain's head to this S3 location (as `etl audit anchor` does) at start and
    /// every --audit-anchor-every while ingest runs, so that the chain is anchored outside the
    /// database; `etl audit verify --anchors` checks it against every anchor.
    #[arg(long, env = "ETL_AUDIT_ANCHOR_TO", value_name = "s3://BUCKET/PREFIX")]
    pub audit_anchor_to: Option<String>,

    /// How often ingest writes an audit anchor, with --audit-anchor-to.
    #[arg(long, env = "ETL_AUDIT_ANCHOR_EVERY", default_value = "1h", value_parser = humantime::parse_duration)]
    pub audit_anchor_every: Duration,

    #[command(flatten)]
    pub ip_prefix: IpPrefixArgs,
}

/// Where `etl ingest` reads messages.
#[derive(Debug, Clone)]
pub enum IngestSource {
    Queue {
        url: QueueUrl,
        protocol: SqsProtocol,
    },
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub database: DatabaseSettings,
    pub source: IngestSource,
    pub receivers: usize,
    pub writers: usize,
    pub batch_messages: usize,
    pub batch_wait: Duration,
    pub max_inflight_bytes: usize,
    pub wait: Duration,
    pub drain: bool,
    pub summary_json: bool,
    pub db_max_connections: u32,
    pub visibility: Duration,
    pub max_receives: i32,
    pub metrics_addr: SocketAddr,
    /// Whether the deprecated `--pollers` was given (a warning is logged at start).
    pub deprecated_pollers: bool,
    /// Where and how often to anchor the audit chain.
    pub audit_anchor: Option<(AnchorLocation, Duration)>,
    /// Whether rows carry their ip's network, and how long a prefix.
    pub ip_prefix: Option<IpPrefix>,
}

/// Receive wait in drain mode unless given: short, so the final empty receive ends the run quickly.
const DRAIN_WAIT_SECONDS: u8 = 1;
const DEFAULT_RECEIVERS: usize = 16;
const DEFAULT_WRITERS: usize = 4;
const MAX_WRITERS: usize = 64;
/// Four of the largest messages SQS sent before 2025 (256 KiB).
const MIN_INFLIGHT_BYTES: usize = 1024 * 1024;

impl TryFrom<&IngestArgs> for IngestSettings {
    type Error = ConfigError;

    fn try_from(args: &IngestArgs) -> Result<Self, ConfigError> {
        // The deprecated --pollers stands for both where they are not given.
        if let Some(pollers) = args.pollers {
            ConfigError::check_range("--pollers", pollers, 1, 256, "between 1 and 256")?;
        }
        let receivers = args.receivers.or(args.pollers).unwrap_or(DEFAULT_RECEIVERS);
        // --pollers allowed 256 loops; writers beyond 64 only wait for connections.
        let writers = args
            .writers
            .or(args.pollers.map(|p| p.min(MAX_WRITERS)))
            .unwrap_or(DEFAULT_WRITERS);
        ConfigError::check_range("--receivers", receivers, 1, 256, "between 1 and 256")?;
        ConfigError::check_range("--writers", writers, 1, MAX_WRITERS, "between 1 and 64")?;
        ConfigError::check_range(
            "--batch-messages",
            args.batch_messages,
            1,
            100_000,
            "between 1 and 100000",
        )?;
        let default_wait = if args.drain {
            DRAIN_WAIT_SECONDS
        } else {
            MAX_WAIT_SECONDS
        };
        let wait_seconds = args.wait_seconds.unwrap_or(default_wait);
        ConfigError::check_range(
            "--wait-seconds",
            wait_seconds,
            0,
            MAX_WAIT_SECONDS,
            "between 0 and 20",
        )?;
        // Each writer holds one connection at a time; the file source's lock holds one more.
        let db_max_connections = args.db_max_connections.unwrap_or(writers as u32 + 2);
        // A writer short of a connection waits out the pool's timeout as a transient failure.
        if (db_max_connections as usize) < writers {
            return Err(ConfigError::OutOfRange {
                flag: "--db-max-connections",
                expected: "at least --writers",
            });
        }
        ConfigError::check_range(
            "--max-receives",
            args.max_receives,
            1,
            i32::MAX,
            "at least 1",
        )?;
        ConfigError::check_range(
            "--visibility-timeout",
            args.visibility_timeout,
            2,
            MAX_VISIBILITY_SECONDS,
            "between 2 and 43200 seconds",
        )?;
        let visibility = Duration::from_secs(args.visibility_timeout);
        let max_inflight_bytes =
            usize::try_from(args.max_inflight_bytes.as_u64()).unwrap_or(usize::MAX);
        ConfigError::check_range(
            "--max-inflight-bytes",
            max_inflight_bytes,
            MIN_INFLIGHT_BYTES,
            usize::MAX,
            "at least 1MiB",
        )?;
        // A batch waiting longer would need its visibility extended before it is even written.
        if args.batch_wait > visibility / 2 {
            return Err(ConfigError::OutOfRange {
                flag: "--batch-wait",
                expected: "at most half of --visibility-timeout",
            });
        }
        Ok(Self {
            database: args.database.settings()?,
            source: match (&args.from_file, &args.queue_url) {
                (Some(path), _) => IngestSource::File(path.clone()),
                (None, Some(url)) => IngestSource::Queue {
                    url: QueueUrl::parse(url)?,
                    protocol: args.sqs_protocol.into(),
                },
                (None, None) => return Err(ConfigError::QueueUrl),
            },
            visibility,
            max_receives: args.max_receives,
            receivers,
            writers,
            batch_messages: args.batch_messages,
            batch_wait: args.batch_wait,
            max_inflight_bytes,
            wait: Duration::from_secs(wait_seconds.into()),
            drain: args.drain,
            summary_json: args.summary_json,
            db_max_connections,
            metrics_addr: args.metrics_addr,
            deprecated_pollers: args.pollers.is_some(),
            ip_prefix: args.ip_prefix.ip_prefix,
            audit_anchor: match &args.audit_anchor_to {
                None => None,
                Some(to) => {
                    if args.audit_anchor_every < Duration::from_secs(1) {
                        return Err(ConfigError::OutOfRange {
                            flag: "--audit-anchor-every",
                            expected: "at least 1s",
                        });
                    }
                    let location = AnchorLocation::parse(to).map_err(|_| {
                        ConfigError::Invalid("--audit-anchor-to must be s3://BUCKET/PREFIX")
                    })?;
                    Some((location, args.audit_anchor_every))
                }
            },
        })
    }
}

/// Headroom of each SQS attempt over the long-poll wait, so a healthy receive never times out.
const ATTEMPT_HEADROOM: Duration = Duration::from_secs(10);

pub async fn run(args: IngestArgs) -> anyhow::Result<Outcome> {
    let settings = IngestSettings::try_from(&args)?;
    if settings.deprecated_pollers {
        warn!("--pollers / ETL_POLLERS is deprecated: use --receivers and --writers");
    }
    let sdk = aws::load_config(settings.wait + ATTEMPT_HEADROOM).await;
    let pool = postgres::pool(
        settings.database.options.clone(),
        settings.db_max_connections,
    );
    let summary = match &settings.source {
        IngestSource::Queue { url, protocol } => {
            // From the first wait on: Kubernetes sends SIGKILL 30 s after SIGTERM.
            let shutdown = CancellationToken::new();
            tokio::spawn(super::cancel_on_signal(shutdown.clone()));
            wait_for_database(&settings, &shutdown).await?;
            let queue = tokio::select! {
                connected = SqsQueue::connect(&sdk, url.as_str(), *protocol) => connected?,
                () = shutdown.cancelled() => anyhow::bail!("stopped by a signal while connecting to SQS"),
            };
            let kms = tokio::select! {
                kms = args.kms.kms(&sdk) => kms?,
                () = shutdown.cancelled() => anyhow::bail!("stopped by a signal while resolving --kms-key-id / ETL_KMS_KEY_ID"),
            };
            from_queue(&settings, (&sdk, kms), pool, queue, shutdown).await?
        }
        IngestSource::File(path) => {
            // No signal handler here: SIGTERM ends a file run at once, and what it did not
            // commit is read again by the next run.
            let shutdown = CancellationToken::new();
            wait_for_database(&settings, &shutdown).await?;
            let kms = args.kms.kms(&sdk).await?;
            from_file(&settings, kms, pool, path, &shutdown).await?
        }
    };
    info!(
        written = summary.written,
        quarantined = summary.quarantined,
        "ingest stopped"
    );
    if settings.summary_json {
        outln!("{}", serde_json::to_string(&summary)?)?;
    } else {
        out!("{summary}")?;
    }
    // From SQS, a batch that was not written stays on the queue and comes back; from a file, its
    // lines wait for the next run, so the run must not look successful.
    if matches!(settings.source, IngestSource::File(_)) && summary.write_failures > 0 {
        anyhow::bail!(
            "{} not written; run the same command again to write them (committed lines are skipped)",
            crate::human::count(summary.write_failures as i64, "batch")
        );
    }
    Ok(Outcome::Success)
}

/// Waits until the database accepts a connection, retrying what may pass. Connecting directly,
/// not through the pool, keeps the cause (`connection refused`) the pool's timeout would hide.
async fn wait_for_database(
    settings: &IngestSettings,
    shutdown: &CancellationToken,
) -> anyhow::Result<()> {
    let options = &settings.database.options;
    startup::retrying(
        shutdown,
        "the database",
        || postgres::check_connection(options),
        DatabaseError::is_transient,
    )
    .await
    .context("refusing to start without the database")
}

async fn from_queue(
    settings: &IngestSettings,
    (sdk, kms): (&aws_config::SdkConfig, Kms),
    pool: sqlx::PgPool,
    (queue, protocol): (SqsQueue, SqsProtocol),
    shutdown: CancellationToken,
) -> anyhow::Result<Summary> {
    // The endpoint comes up before the keys load, so /healthz answers during startup.
    let readiness = Readiness::ingest(pool.clone(), queue.clone());
    let metrics_addr = server::start(
        settings.metrics_addr,
        Arc::clone(&readiness),
        shutdown.clone(),
    )
    .await?;
    let keys = load_live_keys(&pool, kms, &shutdown).await?;
    if let Some((location, every)) = &settings.audit_anchor {
        let store = AnchorStore::new(sdk, location.clone());
        anchor_once(&pool, &store).await;
        tokio::spawn(anchor_audit_chain(
            pool.clone(),
            store,
            *every,
            shutdown.clone(),
        ));
    }
    readiness.started();

    // Logged once the keys are loaded: a run that cannot start prints its error line alone.
    info!(
        protocol = protocol.as_str(),
        %metrics_addr,
        receivers = settings.receivers,
        writers = settings.writers,
        batch_messages = settings.batch_messages,
        batch_wait_ms = settings.batch_wait.as_millis() as u64,
        drain = settings.drain,
        ip_prefix = %ip_prefix_setting(settings),
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
    let committer = Committer::new(pool, keys, Arc::clone(&stats), settings.max_receives)
        .with_ip_prefix(settings.ip_prefix);
    let (jobs, writers) = start_writers(settings, Arc::new(committer));
    let writers = tokio::spawn(watch_writers(writers, shutdown.clone()));
    let options = SqsSourceOptions {
        receivers: settings.receivers,
        wait: settings.wait,
        drain: settings.drain,
        visibility: settings.visibility,
        batch: BatchLimits {
            max_messages: settings.batch_messages,
            // A batch at each writer, one waiting for each and one filling: the budget's share
            // of each, so large bodies fill batches rather than wait out --batch-wait.
            max_bytes: settings.max_inflight_bytes / (2 * settings.writers + 1),
            max_wait: settings.batch_wait,
        },
        max_inflight_bytes: settings.max_inflight_bytes,
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

/// Writes the audit chain's head to S3 every `every` until `shutdown` (the first one was written
/// at start). A failure is logged and retried at the next tick: anchoring is not a reason to stop
/// ingesting.
async fn anchor_audit_chain(
    pool: sqlx::PgPool,
    store: AnchorStore,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => anchor_once(&pool, &store).await,
        }
    }
}

/// One anchor of the chain's head, logged (never an error that stops ingest).
async fn anchor_once(pool: &sqlx::PgPool, store: &AnchorStore) {
    let (id, hash) = match postgres::audit::head(pool).await {
        Ok(head) => head.unwrap_or((0, GENESIS.to_vec())),
        Err(err) => {
            warn!(error = %postgres::redacted(&err), "cannot read the audit chain head to anchor it");
            return;
        }
    };
    match store.put(id, &hash).await {
        Ok(written) => info!(
            audit_head = %format!("{id}:{}", hex::encode(&hash)),
            uri = %written.uri,
            locked = written.locked,
            "audit anchor written"
        ),
        Err(err) => warn!(error = %err, "cannot write the audit anchor"),
    }
}

/// The writers both sources feed, with the one committer they share; and the channel to them,
/// one batch waiting per writer (more would only hold memory).
fn start_writers(
    settings: &IngestSettings,
    committer: Arc<Committer>,
) -> (mpsc::Sender<WriteJob>, JoinSet<()>) {
    let (jobs, queued) = mpsc::channel(settings.writers);
    let writers = writers::spawn(committer, settings.writers, queued);
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
    kms: Kms,
    pool: sqlx::PgPool,
    path: &Path,
    shutdown: &CancellationToken,
) -> anyhow::Result<Summary> {
    let input: Box<dyn BufRead + Send> = if path.as_os_str() == "-" {
        Box::new(BufReader::new(std::io::stdin()))
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(BufReader::with_capacity(1 << 20, file))
    };
    let keys = load_live_keys(&pool, kms, shutdown).await?;
    info!(
        writers = settings.writers,
        batch_messages = settings.batch_messages,
        ip_prefix = %ip_prefix_setting(settings),
        "ingest from file started"
    );
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    // The reader needs the pool, the line key and the counters the writers' committer holds.
    let committer = Arc::new(
        Committer::new(pool, keys, Arc::clone(&stats), settings.max_receives)
            .with_ip_prefix(settings.ip_prefix),
    );
    let (jobs, writers) = start_writers(settings, Arc::clone(&committer));
    sources::file::run(input, &committer, jobs, writers, settings.batch_messages)
        .await
        .with_context(|| format!("reading {}", path.display()))?;
    Ok(stats.summary(started.elapsed()))
}

/// `--ip-prefix` as logged at start: `24,48`, or `off`.
fn ip_prefix_setting(settings: &IngestSettings) -> String {
    settings
        .ip_prefix
        .map_or("off".to_owned(), |prefix| prefix.to_string())
}
