//! The SQS source: receivers → channel → batcher → writers → deletes.
//!
//! `receivers` tasks long-poll SQS concurrently. Each reserves room in a bounded channel before
//! it receives, so when the writers fall behind the channel fills and receiving stops: what is
//! received is bounded, never a growing backlog in memory. It is bounded in bytes too
//! ([`ByteBudget`], `--max-inflight-bytes`): bodies until written, receipts until deleted, so
//! large bodies and slow deletes stop receiving as slow writes do. A batcher coalesces the received
//! groups into write batches (by size and by how long the first message has waited) and hands
//! them to the shared writers. When a batch is committed, its messages are deleted in
//! `DeleteMessageBatch` calls of ten, concurrently; when it is not, they are hidden for a backoff
//! delay and come back. From receive to delete every message is leased: a keeper extends the
//! visibility of whatever is about to become visible again (see [`leases`]).

mod leases;
pub mod progress;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use backon::BackoffBuilder;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info_span, warn, Instrument};

use crate::adapters::sqs::{Receipt, SqsQueue, MAX_BATCH};
use crate::domain::Message;
use crate::pipeline::batch::ClaimKind;
use crate::pipeline::batcher::{self, BatchLimits, Group};
use crate::pipeline::budget::{ByteBudget, Taken};
use crate::pipeline::{backoff, CommitError, Stats, WriteJob};
use leases::Leases;

#[derive(Debug, Clone)]
pub struct SqsSourceOptions {
    /// Concurrent `ReceiveMessage` calls.
    pub receivers: usize,
    /// Long-poll wait of each receive.
    pub wait: Duration,
    /// Stop when the queue is empty instead of running until shut down.
    pub drain: bool,
    /// Visibility timeout asked for on each receive, and kept up by the lease keeper.
    pub visibility: Duration,
    pub batch: BatchLimits,
    /// What received messages may hold at once, in bytes (see [`ByteBudget`]).
    pub max_inflight_bytes: usize,
}

/// One receive's messages and their share of the byte budget: the bodies' bytes, given back when
/// their batch is written, and the ids' and receipt handles', given back when deleted or
/// released.
struct Received {
    messages: Vec<Message>,
    bodies: Taken,
    receipts: Taken,
}

impl Group for Received {
    fn messages(&self) -> usize {
        self.messages.len()
    }

    fn bytes(&self) -> usize {
        self.bodies.held() + self.receipts.held()
    }

    fn absorb(&mut self, other: Self) {
        self.messages.extend(other.messages);
        self.bodies.merge(other.bodies);
        self.receipts.merge(other.receipts);
    }
}

/// A receive's bytes while it is parsed, as a multiple of its bodies': the SDK buffers the whole
/// response, then parses it into strings. The room a receive takes counts both.
const RECEIVE_OVERHEAD: usize = 2;

/// Deletes in flight at once, over all committed batches.
const DELETES_IN_FLIGHT: usize = 64;

/// Runs until `shutdown` is cancelled or, with `drain`, until the queue is empty. What was
/// received when it stops is written (by the writers behind `jobs`) and deleted before it returns.
pub async fn run(
    queue: SqsQueue,
    jobs: mpsc::Sender<WriteJob>,
    stats: Arc<Stats>,
    options: SqsSourceOptions,
    shutdown: CancellationToken,
) {
    let leases = Arc::new(Leases::default());
    let budget = ByteBudget::new(options.max_inflight_bytes);
    // Cancelled by shutdown, or by the receiver that finds the queue drained.
    let stop_receiving = shutdown.child_token();
    // Room for one batch's worth of receives beside the batch being filled.
    // Each receiver reserves a slot before it receives, so there is one per receiver at least.
    let (groups, received) = mpsc::channel(
        (options.batch.max_messages / MAX_BATCH)
            .max(options.receivers)
            .max(1),
    );
    let mut receivers = tokio::task::JoinSet::new();
    for receiver in 0..options.receivers.max(1) {
        let worker = Receiver {
            queue: queue.clone(),
            groups: groups.clone(),
            leases: Arc::clone(&leases),
            stats: Arc::clone(&stats),
            budget: budget.clone(),
            options: options.clone(),
            stop: stop_receiving.clone(),
        };
        receivers.spawn(worker.run().instrument(info_span!("receiver", receiver)));
    }
    drop(groups);

    let keeper_stop = CancellationToken::new();
    let keeper = tokio::spawn({
        let (leases, queue, stop) = (Arc::clone(&leases), queue.clone(), keeper_stop.clone());
        async move { leases::keep(&leases, &queue, options.visibility, stop).await }
    });

    let settles = TaskTracker::new();
    let deletes = Arc::new(Semaphore::new(DELETES_IN_FLIGHT));
    batcher::run(received, options.batch, |group: Received| {
        let settle = Settle {
            queue: queue.clone(),
            leases: Arc::clone(&leases),
            stats: Arc::clone(&stats),
            deletes: Arc::clone(&deletes),
        };
        let (jobs, settles) = (jobs.clone(), settles.clone());
        async move {
            let Received {
                messages,
                bodies,
                receipts,
            } = group;
            let ids: Vec<(String, Option<i32>)> = messages
                .iter()
                .map(|m| (m.id.clone(), m.receive_count))
                .collect();
            let (outcome, written) = oneshot::channel();
            let job = WriteJob {
                messages,
                claim: ClaimKind::MessageIds,
                outcome: Some(outcome),
                bytes: bodies,
            };
            // A send fails only when every writer has ended; then the messages come back.
            let written = match jobs.send(job).await {
                Ok(()) => Some(written),
                Err(_) => None,
            };
            settles.spawn(settle.run(ids, written, receipts));
        }
    })
    .await;
    while let Some(joined) = receivers.join_next().await {
        if let Err(err) = joined {
            error!(error = %err, "receiver task ended abnormally");
        }
    }
    settles.close();
    settles.wait().await;
    stats.inflight_peak(budget.peak());
    keeper_stop.cancel();
    let _ = keeper.await;
}

struct Receiver {
    queue: SqsQueue,
    groups: mpsc::Sender<Received>,
    leases: Arc<Leases>,
    stats: Arc<Stats>,
    budget: ByteBudget,
    options: SqsSourceOptions,
    stop: CancellationToken,
}

impl Receiver {
    async fn run(self) {
        let mut receive_backoff = backoff().build();
        // The size of the last bodies received: the room a receive takes, and how many it asks
        // for, follow it.
        let mut body_size = self.budget.first_room() / MAX_BATCH;
        // Each receiver's share of the budget: so none holds it all through a long poll.
        let share = (self.budget.total() / self.options.receivers.max(1)).max(1);
        loop {
            // Room first: while the writers are behind, nothing more is received.
            let permit = tokio::select! {
                () = self.stop.cancelled() => break,
                permit = self.groups.reserve() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let reserved = tokio::select! {
                () = self.stop.cancelled() => break,
                taken = self.budget.take((body_size * MAX_BATCH * RECEIVE_OVERHEAD).min(share)) => taken,
            };
            let asked = messages_to_ask(reserved.held() / RECEIVE_OVERHEAD, body_size);
            let received = tokio::select! {
                // A receive that has answered is taken even when shutdown came meanwhile.
                biased;
                received = self.queue.receive(asked, self.options.wait, self.options.visibility) => received,
                // Dropping an in-flight receive loses nothing: whatever SQS handed out becomes
                // visible again after the visibility timeout.
                () = self.stop.cancelled() => break,
            };
            match received {
                Ok(received) if received.is_empty() => {
                    drop((permit, reserved));
                    receive_backoff = backoff().build();
                    if self.options.drain && self.queue_is_drained().await {
                        self.stop.cancel();
                        break;
                    }
                }
                Ok(received) => {
                    receive_backoff = backoff().build();
                    self.stats.received(received.len());
                    let (messages, receipts): (Vec<Message>, Vec<Receipt>) =
                        received.into_iter().map(|m| m.into_parts()).unzip();
                    for message in &messages {
                        debug!(message_id = %message.id, receive_count = ?message.receive_count, "received");
                    }
                    let body_bytes: usize = messages.iter().map(|m| m.body.len()).sum();
                    let receipt_bytes: usize = receipts
                        .iter()
                        .map(|r| r.message_id.len() + r.receipt_handle.len())
                        .sum();
                    let held = body_bytes + receipt_bytes;
                    body_size = (held / messages.len().max(1)).max(1);
                    // Leased first, so their visibility is kept up if this waits for room.
                    self.leases.hold(receipts, self.options.visibility);
                    let mut bodies = self.budget.refit(reserved, held).await;
                    let receipts = bodies.split(receipt_bytes);
                    permit.send(Received {
                        messages,
                        bodies,
                        receipts,
                    });
                }
                Err(err) => {
                    drop((permit, reserved));
                    self.stats.receive_failed();
                    let delay = receive_backoff.next().unwrap_or(Duration::from_secs(30));
                    warn!(error = %err, retry_in_ms = delay.as_millis() as u64, "receive failed");
                    tokio::select! {
                        () = self.stop.cancelled() => break,
                        () = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }

    /// After an empty receive: once nothing this process holds is unsettled, zero visible and
    /// zero in-flight messages.
    async fn queue_is_drained(&self) -> bool {
        tokio::select! {
            () = self.stop.cancelled() => return false,
            () = self.leases.wait_until_empty() => {}
        }
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
}

/// What happens to a batch's messages once the writers are done with it.
struct Settle {
    queue: SqsQueue,
    leases: Arc<Leases>,
    stats: Arc<Stats>,
    deletes: Arc<Semaphore>,
}

impl Settle {
    /// `_receipts`, the receipts' share of the byte budget, is given back at the end: deletes
    /// that fall behind hold it, and so stop receiving.
    async fn run(
        self,
        ids: Vec<(String, Option<i32>)>,
        written: Option<oneshot::Receiver<Result<(), CommitError>>>,
        _receipts: Taken,
    ) {
        let committed = match written {
            Some(written) => matches!(written.await, Ok(Ok(()))),
            None => false,
        };
        // Held (and extended) until deleted or released, unless another copy is still in flight.
        let receipts = self.leases.settle(ids.iter().map(|(id, _)| id.as_str()));
        if committed {
            let mut chunks = tokio::task::JoinSet::new();
            for chunk in receipts.chunks(MAX_BATCH) {
                let (queue, stats, deletes) = (
                    self.queue.clone(),
                    Arc::clone(&self.stats),
                    Arc::clone(&self.deletes),
                );
                let chunk = chunk.to_vec();
                chunks.spawn(async move {
                    // The semaphore is never closed, so this waits for a permit.
                    let _permit = deletes.acquire_owned().await;
                    delete(queue, stats, chunk).await;
                });
            }
            while chunks.join_next().await.is_some() {}
        } else {
            error!(
                messages = receipts.len(),
                "batch not committed; its messages stay on the queue and come back after a delay"
            );
            // Each message waits by its own receive count, so a batch's fresh messages come
            // back soon and the ones that keep failing later, not all together.
            let counts: HashMap<&str, Option<i32>> = ids
                .iter()
                .map(|(id, count)| (id.as_str(), *count))
                .collect();
            let mut by_count: BTreeMap<Option<i32>, Vec<Receipt>> = BTreeMap::new();
            for receipt in &receipts {
                let count = counts.get(receipt.message_id.as_str()).copied().flatten();
                by_count.entry(count).or_default().push(receipt.clone());
            }
            for (count, group) in by_count {
                let delay = redelivery_delay(count);
                for chunk in group.chunks(MAX_BATCH) {
                    if let Err(err) = self.queue.change_visibility_batch(chunk, delay).await {
                        warn!(error = %err, "could not set the redelivery delay; the visibility timeout applies");
                    }
                }
            }
        }
        self.leases
            .forget(receipts.iter().map(|receipt| receipt.message_id.as_str()));
    }
}

/// Deletes committed messages (at most ten), retrying the entries SQS failed for transient
/// reasons.
async fn delete(queue: SqsQueue, stats: Arc<Stats>, receipts: Vec<Receipt>) {
    let mut pending = receipts;
    let mut delays = backoff().build();
    while !pending.is_empty() {
        match queue.delete_batch(&pending).await {
            Ok(failures) => {
                let failed = failures.retryable.len() + failures.permanent.len();
                stats.deleted(pending.len().saturating_sub(failed));
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
}

/// How many messages a receive asks for: as many bodies of `body_size` as `room` holds, at least
/// one (a body larger than the room goes alone) and at most SQS's ten.
fn messages_to_ask(room: usize, body_size: usize) -> usize {
    (room / body_size.max(1)).clamp(1, MAX_BATCH)
}

/// How long a batch that could not be committed stays hidden: doubling with each receive from
/// 2 s, capped at 5 minutes, with up to 20 % jitter so retries of many batches spread out.
fn redelivery_delay(receives: Option<i32>) -> Duration {
    let receives = receives.unwrap_or(1).clamp(1, 16);
    let base = Duration::from_secs(2u64 << (receives - 1).min(8)).min(Duration::from_secs(300));
    base + base.mul_f64(rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receive_asks_for_what_its_room_holds() {
        assert_eq!(
            messages_to_ask(64 * 1024, 2 * 1024),
            10,
            "never more than ten"
        );
        assert_eq!(messages_to_ask(1024 * 1024, 200 * 1024), 5);
        assert_eq!(
            messages_to_ask(128 * 1024, 200 * 1024),
            1,
            "a large body goes alone"
        );
        assert_eq!(messages_to_ask(0, 0), 1);
    }

    #[test]
    fn redelivery_delays_double_and_stay_capped() {
        let at = |receives| redelivery_delay(Some(receives)).as_secs_f64();
        assert!((2.0..=2.4).contains(&at(1)));
        assert!((4.0..=4.8).contains(&at(2)));
        assert!((300.0..=360.0).contains(&at(12)));
        assert!((2.0..=2.4).contains(&redelivery_delay(None).as_secs_f64()));
    }
}
