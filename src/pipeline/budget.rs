//! The bound in bytes of what a source holds (the SQS source's). A received message takes its body's bytes
//! until its batch has been written (committed or not), and its id's and receipt handle's until
//! it is deleted or released; both come out of one budget (`--max-inflight-bytes`). So large
//! bodies cannot take the memory that small ones are sized for, and deletes that fall behind
//! stop receiving as writes that fall behind do.
//!
//! A receiver cannot know a receive's size before it is made. It takes room for a receive of
//! bodies the size of its last ones, twice over while the response is buffered and parsed (at
//! most its share of the budget), asks SQS for as many as that room holds (at least one), and
//! keeps what the messages hold, giving back the rest. A
//! receive larger than what was taken (bodies that grew) gives it all back and waits for the
//! whole size with nothing held, so no two receivers can wait on each other. So what is held is
//! the budget, plus at most one receive per receiver whose bodies outgrew the last ones; and a
//! receive of one body larger than the budget goes alone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::stats::IN_FLIGHT_BYTES_GAUGE;

/// The room a receiver waits for before its first receive: ten bodies of 6.4 KiB.
const FIRST_ROOM: usize = 64 * 1024;

/// The budget, in bytes.
#[derive(Debug, Clone)]
pub struct ByteBudget {
    permits: Arc<Semaphore>,
    total: usize,
    peak: Arc<AtomicUsize>,
}

/// Bytes taken from the budget, given back when dropped. Takings from one budget merge.
#[derive(Debug, Default)]
pub struct Taken(Option<OwnedSemaphorePermit>);

impl ByteBudget {
    pub fn new(total: usize) -> Self {
        // The semaphore's permits are bounded; so is any real memory.
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            permits: Arc::new(Semaphore::new(total)),
            total,
            peak: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// The room a receiver takes before it first receives.
    pub fn first_room(&self) -> usize {
        FIRST_ROOM.min(self.total)
    }

    /// The whole budget.
    pub fn total(&self) -> usize {
        self.total
    }

    /// `taken` made to hold `bytes` (at most the whole budget): the rest given back, or, when
    /// it holds less, all of it given back before the whole size is waited for.
    pub async fn refit(&self, mut taken: Taken, bytes: usize) -> Taken {
        let bytes = self.clamp(bytes) as usize;
        let held = taken.held();
        if held >= bytes {
            drop(taken.split(held - bytes));
            taken
        } else {
            drop(taken);
            self.take(bytes).await
        }
    }

    /// Takes `bytes` (at most the whole budget, so one message larger than it still passes).
    pub async fn take(&self, bytes: usize) -> Taken {
        // The semaphore is never closed, so the acquire cannot fail.
        let permit = Arc::clone(&self.permits)
            .acquire_many_owned(self.clamp(bytes))
            .await
            .ok();
        if let Some(permit) = &permit {
            metrics::gauge!(IN_FLIGHT_BYTES_GAUGE).increment(permit.num_permits() as f64);
        }
        self.peak.fetch_max(self.in_use(), Ordering::Relaxed);
        Taken(permit)
    }

    /// The bytes taken now: room taken for receives, and what received messages hold.
    pub fn in_use(&self) -> usize {
        self.total - self.permits.available_permits()
    }

    /// The most bytes taken at once so far.
    pub fn peak(&self) -> usize {
        self.peak.load(Ordering::Relaxed)
    }

    /// At most the whole budget, and at most 4 GiB, what one acquire can ask for (above that a
    /// message larger than the budget waits for 4 GiB only, not for the whole budget).
    fn clamp(&self, bytes: usize) -> u32 {
        u32::try_from(bytes.min(self.total)).unwrap_or(u32::MAX)
    }
}

impl Taken {
    /// Holds both takings as one; both come from the one budget of the source.
    pub fn merge(&mut self, mut other: Taken) {
        match (&mut self.0, other.0.take()) {
            (Some(mine), Some(theirs)) => mine.merge(theirs),
            (mine @ None, theirs) => *mine = theirs,
            (Some(_), None) => {}
        }
    }

    /// The bytes held.
    pub fn held(&self) -> usize {
        self.0.as_ref().map_or(0, OwnedSemaphorePermit::num_permits)
    }

    /// Splits `bytes` off (fewer if fewer are held), to be given back on their own.
    pub fn split(&mut self, bytes: usize) -> Taken {
        let Some(held) = &mut self.0 else {
            return Taken::default();
        };
        let bytes = bytes.min(held.num_permits());
        Taken(held.split(bytes))
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        if let Some(permit) = &self.0 {
            metrics::gauge!(IN_FLIGHT_BYTES_GAUGE).decrement(permit.num_permits() as f64);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn takings_come_back_when_dropped_merge_and_split() {
        let budget = ByteBudget::new(1000);
        let mut first = budget.take(300).await;
        first.merge(budget.take(200).await);
        assert_eq!(budget.in_use(), 500);
        let part = first.split(120);
        drop(first);
        assert_eq!(budget.in_use(), 120);
        drop(part);
        assert_eq!(budget.in_use(), 0);
        assert_eq!(budget.peak(), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn more_than_the_budget_takes_the_whole_budget_and_waits_for_it() {
        let budget = ByteBudget::new(1000);
        let held = budget.take(10).await;
        let waited = tokio::time::timeout(Duration::from_secs(1), budget.take(5000)).await;
        assert!(waited.is_err(), "it waits for the whole budget to be free");
        drop(held);
        let large = budget.take(5000).await;
        assert_eq!(budget.in_use(), 1000);
        drop(large);
        assert_eq!(budget.in_use(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refit_that_grows_waits_holding_nothing() {
        let budget = ByteBudget::new(1000);
        let other = budget.take(600).await;
        let mine = budget.take(100).await;
        let grown = tokio::time::timeout(Duration::from_secs(1), budget.refit(mine, 500)).await;
        assert!(grown.is_err(), "500 more than the 400 free: it waits");
        assert_eq!(budget.in_use(), 600, "and holds nothing while it waits");
        drop(other);
        assert_eq!(budget.refit(budget.take(100).await, 500).await.held(), 500);
    }

    #[tokio::test]
    async fn a_refit_gives_back_the_rest_or_takes_the_whole_size() {
        let budget = ByteBudget::new(1000);
        let kept = budget.refit(budget.take(300).await, 120).await;
        assert_eq!((kept.held(), budget.in_use()), (120, 120));
        let grown = budget.refit(kept, 700).await;
        assert_eq!((grown.held(), budget.in_use()), (700, 700));
        let capped = budget.refit(grown, 5000).await;
        assert_eq!(capped.held(), 1000, "never more than the whole budget");
    }
}
