//! The messages this process holds, from receive to delete, with the receipt that deletes each
//! and when its visibility runs out. One keeper extends whatever is about to become visible
//! again, so no message held anywhere in the pipeline (waiting in the channel, in a batch being
//! filled, being written or deleted) is handed to another consumer.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::adapters::sqs::{Receipt, SqsQueue, MAX_BATCH};

struct Lease {
    receipt: Receipt,
    visible_at: Instant,
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

    /// Records received messages. A message received again while held (its visibility ran out)
    /// keeps only its newest receipt, the one SQS deletes it with.
    pub fn hold(&self, receipts: Vec<Receipt>, visibility: Duration) {
        let visible_at = Instant::now() + visibility;
        let mut held = self.held();
        for receipt in receipts {
            held.insert(
                receipt.message_id.clone(),
                Lease {
                    receipt,
                    visible_at,
                },
            );
        }
    }

    /// Stops holding these messages and returns the receipts to delete or release them with.
    pub fn release<'a>(&self, message_ids: impl IntoIterator<Item = &'a str>) -> Vec<Receipt> {
        let mut held = self.held();
        let receipts: Vec<Receipt> = message_ids
            .into_iter()
            .filter_map(|id| held.remove(id))
            .map(|lease| lease.receipt)
            .collect();
        if held.is_empty() {
            self.emptied.notify_waiters();
        }
        receipts
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

    /// The receipts whose visibility runs out within `margin`, marked as extended by `visibility`.
    fn due(&self, margin: Duration, visibility: Duration) -> Vec<Receipt> {
        let now = Instant::now();
        let mut held = self.held();
        held.values_mut()
            .filter(|lease| lease.visible_at <= now + margin)
            .map(|lease| {
                lease.visible_at = now + visibility;
                lease.receipt.clone()
            })
            .collect()
    }
}

/// Every quarter of the visibility timeout, extends the messages whose visibility would run out
/// within half of it, ten per call. Normally none are due: batches are written well within the
/// timeout. Runs until `stop` is cancelled.
pub async fn keep(
    leases: &Leases,
    queue: &SqsQueue,
    visibility: Duration,
    stop: CancellationToken,
) {
    let period = (visibility / 4).max(Duration::from_millis(250));
    let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let due = leases.due(visibility / 2, visibility);
        if due.is_empty() {
            continue;
        }
        debug!(messages = due.len(), "extending visibility");
        for chunk in due.chunks(MAX_BATCH) {
            match queue.change_visibility_batch(chunk, visibility).await {
                Ok(failures) if failures.is_empty() => {}
                Ok(failures) => {
                    warn!(
                        failed = failures.len(),
                        "visibility not extended for some messages"
                    )
                }
                Err(err) => warn!(error = %err, "visibility heartbeat failed"),
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
    async fn the_newest_receipt_is_kept_and_due_leases_are_extended() {
        let leases = Leases::default();
        let visibility = Duration::from_secs(30);
        leases.hold(vec![receipt("a", "h1"), receipt("b", "h2")], visibility);
        assert!(leases.due(visibility / 2, visibility).is_empty());
        tokio::time::advance(Duration::from_secs(16)).await;
        leases.hold(vec![receipt("a", "h3")], visibility);
        let due: Vec<String> = leases
            .due(visibility / 2, visibility)
            .into_iter()
            .map(|r| r.receipt_handle)
            .collect();
        assert_eq!(due, ["h2"], "only b was about to become visible");
        assert!(
            leases.due(visibility / 2, visibility).is_empty(),
            "b was extended"
        );
        let released = leases.release(["a", "missing"]);
        assert_eq!(released.len(), 1);
        assert_eq!(released[0].receipt_handle, "h3");
        assert_eq!(leases.len(), 1);
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
        leases.release(["a"]);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
