//! The operations endpoint of `etl ingest` and `etl recovery-service`: Prometheus metrics at
//! `/metrics`, liveness at `/healthz` and readiness at `/readyz` (database and queue reachable,
//! started), on one address, loopback by default.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::Router;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::adapters::sqs::SqsQueue;

/// Batch durations, from a fast local commit to a long outage.
const DURATION_BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
/// How often the queue depth gauge is refreshed.
const DEPTH_INTERVAL: Duration = Duration::from_secs(15);
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot install the metrics recorder: {0}")]
    Recorder(String),
    #[error("cannot listen on --metrics-addr {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// What `/readyz` checks: the database, the queue where there is one, and that the process has
/// finished starting.
pub struct Readiness {
    pool: PgPool,
    queue: Option<SqsQueue>,
    started: AtomicBool,
    /// The line `/readyz` shows until then.
    starting: &'static str,
    /// The last probe of the database and the queue, and when it was made.
    last_probe: tokio::sync::Mutex<Option<(Instant, Vec<&'static str>)>>,
}

/// How long a probe's answer stands: however often `/readyz` is called (a kubelet, a load
/// balancer, anyone who reaches the port), PostgreSQL and SQS see one probe per interval.
const PROBE_INTERVAL: Duration = Duration::from_secs(5);

impl Readiness {
    /// `etl ingest`: ready once its keys are loaded.
    pub fn ingest(pool: PgPool, queue: SqsQueue) -> Arc<Self> {
        Self::new(pool, Some(queue), "keys: not loaded yet")
    }

    /// `etl recovery-service`: ready once it listens for requests.
    pub fn recovery_service(pool: PgPool) -> Arc<Self> {
        Self::new(pool, None, "requests: not listening yet")
    }

    fn new(pool: PgPool, queue: Option<SqsQueue>, starting: &'static str) -> Arc<Self> {
        Arc::new(Self {
            pool,
            queue,
            started: AtomicBool::new(false),
            starting,
            last_probe: tokio::sync::Mutex::new(None),
        })
    }

    pub fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }

    /// One line per failing check; empty when ready.
    async fn problems(&self) -> Vec<&'static str> {
        let mut problems = Vec::new();
        if !self.started.load(Ordering::Relaxed) {
            problems.push(self.starting);
        }
        // Callers meanwhile wait for this probe's answer rather than probe again.
        let mut last = self.last_probe.lock().await;
        match last
            .as_ref()
            .filter(|(at, _)| at.elapsed() < PROBE_INTERVAL)
        {
            Some((_, probed)) => problems.extend(probed),
            None => {
                let probed = self.probe().await;
                problems.extend(&probed);
                *last = Some((Instant::now(), probed));
            }
        }
        problems
    }

    /// The database's and the queue's answers, each bounded by `CHECK_TIMEOUT`.
    async fn probe(&self) -> Vec<&'static str> {
        metrics::counter!("etl_readiness_probes_total").increment(1);
        let mut problems = Vec::new();
        let database =
            tokio::time::timeout(CHECK_TIMEOUT, sqlx::query("SELECT 1").execute(&self.pool)).await;
        if !matches!(database, Ok(Ok(_))) {
            problems.push("database: unreachable");
        }
        if let Some(queue) = &self.queue {
            let depth = tokio::time::timeout(CHECK_TIMEOUT, queue.depth()).await;
            if !matches!(depth, Ok(Ok(_))) {
                problems.push("queue: unreachable");
            }
        }
        problems
    }
}

/// Installs the Prometheus recorder and serves the endpoint until `shutdown`. Returns the bound
/// address (useful with port 0).
pub async fn start(
    addr: SocketAddr,
    readiness: Arc<Readiness>,
    shutdown: CancellationToken,
) -> Result<SocketAddr, ServerError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &DURATION_BUCKETS)
        .and_then(|builder| builder.install_recorder())
        .map_err(|err| ServerError::Recorder(err.to_string()))?;
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServerError::Bind { addr, source })?;
    let bound = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { addr, source })?;
    let app = Router::new()
        .route("/metrics", get(render))
        .with_state(handle)
        .merge(
            Router::new()
                .route("/healthz", get(|| async { "ok\n" }))
                .route("/readyz", get(ready))
                .with_state(Arc::clone(&readiness)),
        );
    let stop = shutdown.clone();
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await });
        if let Err(err) = served.await {
            warn!(error = %err, "metrics endpoint stopped");
        }
    });
    if readiness.queue.is_some() {
        tokio::spawn(refresh_depth(readiness, shutdown));
    }
    // `etl ingest` logs the address once it has started; this is for a start that stalls.
    debug!(addr = %bound, "serving /metrics, /healthz and /readyz");
    Ok(bound)
}

async fn render(State(handle): State<PrometheusHandle>) -> String {
    handle.render()
}

async fn ready(State(readiness): State<Arc<Readiness>>) -> (StatusCode, String) {
    let problems = readiness.problems().await;
    if problems.is_empty() {
        (StatusCode::OK, "ready\n".to_owned())
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, problems.join("\n") + "\n")
    }
}

/// Keeps `etl_queue_messages{state="visible"|"in_flight"}` current.
async fn refresh_depth(readiness: Arc<Readiness>, shutdown: CancellationToken) {
    let mut ticks = tokio::time::interval(DEPTH_INTERVAL);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let Some(queue) = &readiness.queue else {
            return;
        };
        if let Ok(depth) = queue.depth().await {
            metrics::gauge!("etl_queue_messages", "state" => "visible").set(depth.visible as f64);
            metrics::gauge!("etl_queue_messages", "state" => "in_flight")
                .set(depth.in_flight as f64);
        }
    }
}
