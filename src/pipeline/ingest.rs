//! The ingest loop. Each of `pollers` tasks long-polls SQS, transforms what it got, writes it in
//! one transaction and deletes it only after the commit; the delete runs while the poller
//! receives its next batch. In-flight work is bounded by `pollers × 10` messages being written
//! plus `pollers × 2` committed batches being deleted.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::BackoffBuilder;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use super::commit::{backoff, CommitError, Committer};
use super::known_masks::KnownMasks;
use super::{Stats, Summary, Transformer};
use crate::adapters::sqs::{Receipt, ReceivedMessage, SqsQueue, MAX_BATCH};

#[derive(Debug, Clone)]
pub struct IngestOptions {
    /// Concurrent receive → write → delete loops.
    pub pollers: usize,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Stop when the queue is empty instead of running until shut down.
    pub drain: bool,
    /// Visibility timeout asked for on each receive.
    pub visibility: Duration,
    /// Receives after which a message that still cannot be written is quarantined.
    pub max_receives: i32,
}

/// Runs until `shutdown` is cancelled or, with `drain`, until the queue is empty. Work already
/// received when shutdown comes is finished, committed and deleted.
pub async fn run(
    queue: SqsQueue,
    pool: PgPool,
    transformer: Arc<Transformer>,
    options: IngestOptions,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> Summary {
    let started = Instant::now();
    let known_masks = Arc::new(KnownMasks::default());
    let mut pollers = JoinSet::new();
    for poller in 0..options.pollers.max(1) {
        let worker = Poller {
            queue: queue.clone(),
            committer: Committer {
                pool: pool.clone(),
                transformer: Arc::clone(&transformer),
                known_masks: Arc::clone(&known_masks),
                stats: Arc::clone(&stats),
                max_receives: options.max_receives,
            },
            stats: Arc::clone(&stats),
            options: options.clone(),
            shutdown: shutdown.clone(),
        };
        pollers.spawn(worker.run().instrument(info_span!("poller", poller)));
    }
    while let Some(joined) = pollers.join_next().await {
        if let Err(err) = joined {
            error!(error = %err, "poller task ended abnormally");
        }
    }
    stats.summary(started.elapsed())
}

struct Poller {
    queue: SqsQueue,
    committer: Committer,
    stats: Arc<Stats>,
    options: IngestOptions,
    shutdown: CancellationToken,
}

/// Deletes of committed batches that may run while the poller receives the next one. The messages
/// are committed, so a delete that never happens costs only a skipped redelivery; the bound keeps
/// a slow SQS from piling them up.
const DELETES_IN_FLIGHT: usize = 2;

impl Poller {
    async fn run(self) {
        let mut receive_backoff = backoff().build();
        let mut deletes = JoinSet::new();
        loop {
            let received = tokio::select! {
                // Dropping an in-flight receive loses nothing: whatever SQS handed out becomes
                // visible again after the visibility timeout.
                () = self.shutdown.cancelled() => break,
                received = self.queue.receive(MAX_BATCH, self.options.wait, self.options.visibility) => received,
            };
            let messages = match received {
                Ok(messages) => {
                    receive_backoff = backoff().build();
                    messages
                }
                Err(err) => {
                    self.stats.receive_failed();
                    let delay = receive_backoff.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "receive failed");
                    if self.pause(delay).await {
                        break;
                    }
                    continue;
                }
            };
            if messages.is_empty() {
                if self.options.drain {
                    // Messages whose delete is still running count as in flight.
                    while deletes.join_next().await.is_some() {}
                    if self.queue_is_drained().await {
                        break;
                    }
                }
                continue;
            }
            self.stats.received(messages.len());
            let batch_id = uuid::Uuid::new_v4().simple().to_string();
            let span = info_span!("batch", batch_id = &batch_id[..12]);
            if let Some(committed) = self.process(&messages).instrument(span.clone()).await {
                while deletes.len() >= DELETES_IN_FLIGHT {
                    deletes.join_next().await;
                }
                let (queue, stats) = (self.queue.clone(), Arc::clone(&self.stats));
                deletes.spawn(delete(queue, stats, committed).instrument(span));
            }
        }
        // Shutdown or drained: the committed batches' deletes finish before the poller ends.
        while deletes.join_next().await.is_some() {}
    }

    /// Sleeps unless shutdown comes first; returns whether it did.
    async fn pause(&self, delay: Duration) -> bool {
        tokio::select! {
            () = self.shutdown.cancelled() => true,
            () = tokio::time::sleep(delay) => false,
        }
    }

    /// An empty receive followed by zero visible and zero in-flight messages.
    async fn queue_is_drained(&self) -> bool {
        match self.queue.depth().await {
            Ok(depth) => {
                debug!(
                    visible = depth.visible,
                    in_flight = depth.in_flight,
                    "queue depth after empty receive"
                );
                depth.is_empty()
            }
            Err(err) => {
                warn!(error = %err, "could not read queue depth");
                false
            }
        }
    }

    /// Commits a batch while a heartbeat keeps it hidden and returns its receipts to delete; or, if
    /// it cannot be committed, hides it for a backoff delay so it comes back later.
    async fn process(&self, messages: &[ReceivedMessage]) -> Option<Vec<Receipt>> {
        for message in messages {
            debug!(message_id = %message.message_id, receive_count = ?message.receive_count, "received");
        }
        let started = Instant::now();
        let receipts = Receipt::of_all(messages);
        let outcome = self
            .with_heartbeat(&receipts, self.committer.commit(messages))
            .await;
        self.stats.batch_finished(messages.len(), started.elapsed());
        match outcome {
            Ok(()) => Some(receipts),
            Err(err) => {
                if matches!(err, CommitError::Seal(_)) {
                    self.stats.transform_failed();
                } else {
                    self.stats.write_failed();
                }
                let delay = redelivery_delay(messages);
                error!(error = %err, messages = messages.len(), retry_in_s = delay.as_secs(),
                       "batch not committed; it stays on the queue and comes back after the delay");
                if let Err(err) = self.queue.change_visibility_batch(&receipts, delay).await {
                    warn!(error = %err, "could not set the redelivery delay; the visibility timeout applies");
                }
                None
            }
        }
    }

    /// Runs `work`, extending the visibility of `receipts` every half visibility timeout so no
    /// other consumer receives them while this one still works on them.
    async fn with_heartbeat<T>(&self, receipts: &[Receipt], work: impl Future<Output = T>) -> T {
        let period = self.options.visibility / 2;
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        tokio::pin!(work);
        loop {
            tokio::select! {
                output = &mut work => return output,
                _ = ticks.tick() => {
                    match self.queue.change_visibility_batch(receipts, self.options.visibility).await {
                        Ok(failures) if failures.is_empty() => debug!("visibility extended"),
                        Ok(failures) => warn!(failed = failures.len(), "visibility not extended for some messages"),
                        Err(err) => warn!(error = %err, "visibility heartbeat failed"),
                    }
                }
            }
        }
    }
}

/// Deletes committed messages, retrying the entries SQS failed for transient reasons.
async fn delete(queue: SqsQueue, stats: Arc<Stats>, receipts: Vec<Receipt>) {
    let total = receipts.len();
    let mut pending = receipts;
    let mut delays = backoff().build();
    while !pending.is_empty() {
        match queue.delete_batch(&pending).await {
            Ok(failures) => {
                let failed = failures.retryable.len() + failures.permanent.len();
                stats.deleted(pending.len() - failed);
                for receipt in &failures.permanent {
                    warn!(message_id = %receipt.message_id,
                          "SQS refused the delete; the message will be redelivered and skipped");
                }
                stats.delete_failed(failures.permanent.len());
                pending = failures.retryable;
            }
            Err(err) => warn!(error = %err, "delete failed; retrying"),
        }
        if pending.is_empty() {
            break;
        }
        let Some(delay) = delays.next() else {
            stats.delete_failed(pending.len());
            warn!(
                messages = pending.len(),
                "giving up deleting; the messages will be redelivered and skipped"
            );
            break;
        };
        tokio::time::sleep(delay).await;
    }
    debug!(messages = total, "batch done");
}

/// How long a batch that could not be committed stays hidden: doubling with each receive from
/// 2 s, capped at 5 minutes, with up to 20 % jitter so retries of many batches spread out.
fn redelivery_delay(messages: &[ReceivedMessage]) -> Duration {
    let receives = messages
        .iter()
        .filter_map(|m| m.receive_count)
        .max()
        .unwrap_or(1)
        .clamp(1, 16);
    let base = Duration::from_secs(2u64 << (receives - 1).min(8)).min(Duration::from_secs(300));
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}
