//! The ingest loop. Each of `pollers` tasks long-polls SQS, transforms what it got, writes it in
//! one transaction and deletes it only after the commit. In-flight work is bounded by
//! `pollers × 10` messages.

use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{BackoffBuilder, ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info_span, warn, Instrument};

use super::{Stats, Summary, Transformer};
use crate::adapters::postgres::{self, writer};
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
}

/// Runs until `shutdown` is cancelled or, with `drain`, until the queue is empty. Work already
/// received when shutdown comes is finished, committed and deleted.
pub async fn run(
    queue: SqsQueue,
    pool: PgPool,
    transformer: Arc<Transformer>,
    options: IngestOptions,
    shutdown: CancellationToken,
) -> Summary {
    let started = Instant::now();
    let stats = Arc::new(Stats::default());
    let mut pollers = JoinSet::new();
    for poller in 0..options.pollers.max(1) {
        let worker = Poller {
            queue: queue.clone(),
            pool: pool.clone(),
            transformer: Arc::clone(&transformer),
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
    pool: PgPool,
    transformer: Arc<Transformer>,
    stats: Arc<Stats>,
    options: IngestOptions,
    shutdown: CancellationToken,
}

impl Poller {
    async fn run(self) {
        let mut receive_backoff = backoff().build();
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
                if self.options.drain && self.queue_is_drained().await {
                    break;
                }
                continue;
            }
            self.stats.received(messages.len());
            let batch_id = uuid::Uuid::new_v4().simple().to_string();
            self.process(&messages)
                .instrument(info_span!("batch", batch_id = &batch_id[..12]))
                .await;
        }
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

    async fn process(&self, messages: &[ReceivedMessage]) {
        for message in messages {
            debug!(message_id = %message.message_id, receive_count = ?message.receive_count, "received");
        }
        let batch = match self.transformer.prepare(messages, chrono::Utc::now()) {
            Ok(batch) => batch,
            Err(err) => {
                self.stats.write_failed();
                error!(error = %err, messages = messages.len(), "could not seal batch; left on the queue");
                return;
            }
        };
        let write = || writer::write_batch(&self.pool, &batch);
        let outcome = write
            .retry(backoff())
            .when(postgres::is_transient)
            .notify(|err, delay| {
                warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
            })
            .await;
        match outcome {
            Ok(outcome) => {
                debug!(written = outcome.written, quarantined = ?outcome.quarantined,
                       duplicates_skipped = outcome.duplicates_skipped, "batch committed");
                self.stats.committed(&outcome);
                self.delete(messages).await;
            }
            Err(err) => {
                self.stats.write_failed();
                error!(error = %err, messages = messages.len(),
                       "batch not written; its messages stay on the queue and will be redelivered");
            }
        }
    }

    /// Deletes committed messages, retrying the entries SQS failed for transient reasons.
    async fn delete(&self, messages: &[ReceivedMessage]) {
        let mut pending: Vec<Receipt> = messages
            .iter()
            .map(|m| Receipt {
                message_id: m.message_id.clone(),
                receipt_handle: m.receipt_handle.clone(),
            })
            .collect();
        let mut delays = backoff().build();
        while !pending.is_empty() {
            match self.queue.delete_batch(&pending).await {
                Ok(failures) => {
                    let failed = failures.retryable.len() + failures.permanent.len();
                    self.stats.deleted(pending.len() - failed);
                    for receipt in &failures.permanent {
                        warn!(message_id = %receipt.message_id,
                              "SQS refused the delete; the message will be redelivered and skipped");
                    }
                    self.stats.delete_failed(failures.permanent.len());
                    pending = failures.retryable;
                }
                Err(err) => warn!(error = %err, "delete failed; retrying"),
            }
            if pending.is_empty() {
                break;
            }
            let Some(delay) = delays.next() else {
                self.stats.delete_failed(pending.len());
                warn!(
                    messages = pending.len(),
                    "giving up deleting; the messages will be redelivered and skipped"
                );
                break;
            };
            tokio::time::sleep(delay).await;
        }
        debug!(messages = messages.len(), "batch done");
    }
}

/// Exponential backoff with jitter: 100 ms doubling to 10 s, eight tries.
fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(8)
}
