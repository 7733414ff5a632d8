//! The messages this process holds, from receive to delete, with the receipt that deletes each
//! and when its visibility runs out. One keeper extends whatever is about to become visible
//! again, so no message held anywhere in the pipeline (waiting in the channel, in a batch being
//! filled, being written or deleted) is handed to another consumer.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::adapters::sqs::{Receipt, SqsQueue, MAX_BATCH};

struct Lease {
    /// The newest receipt: the one SQS deletes and extends the message with.
    receipt: Receipt,
    visible_at: Instant,
    /// Copies of the message in the pipeline (a message whose visibility ran out can be received
    /// again while the first copy is still being written); 0 while its delete runs.
    copies: u32,
}

#[derive(Default)]
pub struct Leases {
    held: Mutex<HashMap<String, Lease>>,
    emptied: Notify,
}

impl Leases {
    fn held(&self) -> MutexGuard<'_, HashMap<String, Lease>> {
        self.held
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Records received messages. A message received again while held keeps only its newest
    /// receipt, and counts one more copy.
    pub fn hold(&self, receipts: Vec<Receipt>, visibility: Duration) {
        let visible_at = Instant::now() + visibility;
        let mut held = self.held();
        for receipt in receipts {
            match held.entry(receipt.message_id.clone()) {
                Entry::Occupied(mut entry) => {
                    let lease = entry.get_mut();
                    lease.receipt = receipt;
                    lease.visible_at = visible_at;
                    lease.copies += 1;
                }
                Entry::Vacant(entry) => {
                    entry.insert(Lease {
                        receipt,
                        visible_at,
                        copies: 1,
                    });
                }
            }
        }
    }

    /// A batch is done with these messages: returns the receipts of those with no other copy
    /// in the pipeline, which the caller deletes or releases and then [`Leases::forget`]s. They
    /// stay held (and extended) until then.
    pub fn settle<'a>(&self, message_ids: impl IntoIterator<Item = &'a str>) -> Vec<Receipt> {
        let mut held = self.held();
        message_ids
            .into_iter()
            .filter_map(|id| {
                let lease = held.get_mut(id)?;
                lease.copies = lease.copies.saturating_sub(1);
                (lease.copies == 0).then(|| lease.receipt.clone())
            })
            .collect()
    }

    /// Stops holding settled messages, unless a new copy arrived meanwhile.
    pub fn forget<'a>(&self, message_ids: impl IntoIterator<Item = &'a str>) {
        let mut held = self.held();
        for id in message_ids {
            if held.get(id).is_some_and(|lease| lease.copies == 0) {
                held.remove(id);
            }
        }
        if held.is_empty() {
            self.emptied.notify_waiters();
        }
    }

    pub fn len(&self) -> usize {
        self.held().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Returns once nothing is held.
    pub async fn wait_until_empty(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    /// The receipts whose visibility runs out within `margin`.
    fn due(&self, margin: Duration) -> Vec<Receipt> {
        let deadline = Instant::now() + margin;
        self.held()
            .values()
            .filter(|lease| lease.visible_at <= deadline)
            .map(|lease| lease.receipt.clone())
            .collect()
    }

    /// Records an extension SQS confirmed, for the receipt it was made with.
    fn extended(&self, receipts: &[Receipt], visible_at: Instant) {
        let mut held = self.held();
        for receipt in receipts {
            if let Some(lease) = held.get_mut(&receipt.message_id) {
                if lease.receipt.receipt_handle == receipt.receipt_handle {
                    lease.visible_at = visible_at;
                }
            }
        }
    }
}

/// Extension calls in flight at once.
const EXTENSIONS_IN_FLIGHT: usize = 32;

/// Every quarter of the visibility timeout, extends the messages whose visibility would run out
/// within half of it, ten per call, calls concurrently. Only what SQS confirms counts as
/// extended, so a failed call is tried again at the next tick. Normally nothing is due: batches
/// are written well within the timeout. Runs until `stop` is cancelled.
pub async fn keep(
    leases: &Leases,
    queue: &SqsQueue,
    visibility: Duration,
    stop: CancellationToken,
) {
    let period = (visibility / 4).max(Duration::from_millis(250));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due = leases.due(visibility / 2);
        if due.is_empty() {
            continue;
        }
        debug!(messages = due.len(), "extending visibility");
        let visible_at = Instant::now() + visibility;
        let mut calls = JoinSet::new();
        for chunk in due.chunks(MAX_BATCH) {
            while calls.len() >= EXTENSIONS_IN_FLIGHT {
                calls.join_next().await;
            }
            let (queue, chunk) = (queue.clone(), chunk.to_vec());
            calls.spawn(async move {
                let failed = match queue.change_visibility_batch(&chunk, visibility).await {
                    Ok(failures) => failures,
                    Err(err) => {
                        warn!(error = %err, "visibility heartbeat failed");
                        return Vec::new();
                    }
                };
                if !failed.is_empty() {
                    warn!(
                        failed = failed.len(),
                        "visibility not extended for some messages"
                    );
                }
                let failed: HashSet<String> = failed
                    .retryable
                    .into_iter()
                    .chain(failed.permanent)
                    .map(|receipt| receipt.receipt_handle)
                    .collect();
                chunk
                    .into_iter()
                    .filter(|receipt| !failed.contains(&receipt.receipt_handle))
                    .collect::<Vec<_>>()
            });
        }
        while let Some(joined) = calls.join_next().await {
            if let Ok(extended) = joined {
                leases.extended(&extended, visible_at);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receipt(id: &str, handle: &str) -> Receipt {
        Receipt {
            message_id: id.into(),
            receipt_handle: handle.into(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn only_confirmed_extensions_count_and_the_newest_receipt_is_kept() {
        let leases = Leases::default();
        let visibility = Duration::from_secs(30);
        leases.hold(vec![receipt("a", "h1"), receipt("b", "h2")], visibility);
        assert!(leases.due(visibility / 2).is_empty());
        tokio::time::advance(Duration::from_secs(16)).await;
        leases.hold(vec![receipt("a", "h3")], visibility);
        let due: Vec<String> = leases
            .due(visibility / 2)
            .into_iter()
            .map(|r| r.receipt_handle)
            .collect();
        assert_eq!(due, ["h2"], "only b was about to become visible");
        assert_eq!(
            leases.due(visibility / 2).len(),
            1,
            "not extended until confirmed"
        );
        leases.extended(&[receipt("b", "h2")], Instant::now() + visibility);
        assert!(leases.due(visibility / 2).is_empty());
    }

    #[tokio::test]
    async fn a_message_held_twice_is_settled_by_its_last_copy() {
        let leases = Leases::default();
        let visibility = Duration::from_secs(30);
        leases.hold(vec![receipt("a", "h1")], visibility);
        leases.hold(vec![receipt("a", "h2")], visibility);
        assert!(
            leases.settle(["a"]).is_empty(),
            "the other copy is still in flight"
        );
        let settled = leases.settle(["a", "missing"]);
        assert_eq!(settled.len(), 1);
        assert_eq!(settled[0].receipt_handle, "h2");
        assert_eq!(leases.len(), 1, "held until forgotten");
        leases.forget(["a"]);
        assert!(leases.is_empty());
    }

    #[tokio::test]
    async fn waiting_for_empty_ends_when_the_last_lease_goes() {
        let leases = std::sync::Arc::new(Leases::default());
        leases.hold(vec![receipt("a", "h1")], Duration::from_secs(30));
        let waiter = tokio::spawn({
            let leases = std::sync::Arc::clone(&leases);
            async move { leases.wait_until_empty().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        leases.settle(["a"]);
        leases.forget(["a"]);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
