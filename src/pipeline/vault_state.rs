//! What this process knows of the vault between commits, valid for one vault epoch: the masks it
//! has committed (so a value seen again skips the seal and the vault insert; with realistic data
//! most events repeat an ip or a device) and the suppression list of forgotten users.
//!
//! Erasure and retention delete vault entries that no row refers to, and raise the epoch in the
//! same transaction (`etl.vault_epoch`, migration `data_lifecycle`). Every batch commits holding
//! the epoch shared and compares it with the epoch its batch was prepared under; on a change the
//! writer calls [`VaultState::advance`], which forgets every mask (any may have been deleted) and
//! adds the newly forgotten users, and the batch is prepared again. So a hit here always means the
//! vault row exists, and a miss only costs an `ON CONFLICT DO NOTHING` insert that finds the row.
//!
//! Memory is bounded by two generations of at most `capacity` masks each: when the current one
//! fills up it becomes the previous one and the older is dropped, so recently seen masks stay
//! known. The suppression list is not bounded: 32 bytes per forgotten user.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use foldhash::fast::RandomState;

use crate::crypto::{MaskDigest, UserHash};
use crate::domain::PiiField;

/// Default bound: two generations of 114,688 masks. That is 7/8 of 2^17, the most a hash table of
/// 2^17 buckets holds before it doubles, so each generation stays at about 4.5 MiB.
const DEFAULT_CAPACITY: usize = (1 << 17) / 8 * 7;

type Set = HashSet<(PiiField, MaskDigest), RandomState>;

/// Keyed hashes of forgotten user ids.
pub type Forgotten = HashSet<UserHash, RandomState>;

pub struct VaultState {
    capacity: usize,
    inner: Mutex<Inner>,
}

struct Inner {
    /// `None` until the first [`VaultState::advance`]: nothing is known yet.
    epoch: Option<i64>,
    current: Set,
    previous: Set,
    forgotten: Arc<Forgotten>,
    /// The highest `etl.forgotten_users.id` read.
    forgotten_upto: i64,
}

impl VaultState {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            inner: Mutex::new(Inner {
                epoch: None,
                current: Set::default(),
                previous: Set::default(),
                forgotten: Arc::default(),
                forgotten_upto: 0,
            }),
        }
    }

    /// A view for checking many masks under one lock.
    pub fn view(&self) -> KnownView<'_> {
        KnownView(self.lock())
    }

    /// The epoch and the suppression list as of now, to check users against without the lock.
    pub fn forgotten(&self) -> (Option<i64>, Arc<Forgotten>) {
        let inner = self.lock();
        (inner.epoch, Arc::clone(&inner.forgotten))
    }

    /// The epoch everything here is valid for; `None` before the first read.
    pub fn epoch(&self) -> Option<i64> {
        self.lock().epoch
    }

    /// The highest suppression-list row read so far.
    pub fn forgotten_upto(&self) -> i64 {
        self.lock().forgotten_upto
    }

    /// Moves to a newer `epoch` read from the database: the masks are forgotten, the users
    /// forgotten since (rows of `etl.forgotten_users` read after the epoch) are added. An older
    /// epoch than the one held changes only the suppression list (which only grows).
    pub fn advance(&self, epoch: i64, newly_forgotten: Vec<(i64, UserHash)>) {
        let mut inner = self.lock();
        if inner.epoch.is_none_or(|held| epoch > held) {
            inner.epoch = Some(epoch);
            inner.current.clear();
            inner.previous.clear();
        }
        let fresh: Vec<(i64, UserHash)> = newly_forgotten
            .into_iter()
            .filter(|(id, _)| *id > inner.forgotten_upto)
            .collect();
        if let Some(upto) = fresh.iter().map(|(id, _)| *id).max() {
            let mut forgotten = Forgotten::clone(&inner.forgotten);
            forgotten.extend(fresh.into_iter().map(|(_, hash)| hash));
            inner.forgotten = Arc::new(forgotten);
            inner.forgotten_upto = upto;
        }
    }

    /// Records masks whose vault rows were committed by a batch that committed under `epoch`.
    /// Masks of an older epoch are not kept: they may have been deleted since.
    pub fn insert_committed(
        &self,
        epoch: i64,
        masks: impl IntoIterator<Item = (PiiField, MaskDigest)>,
    ) {
        let mut inner = self.lock();
        if inner.epoch != Some(epoch) {
            return;
        }
        for mask in masks {
            if inner.previous.contains(&mask) {
                continue;
            }
            if inner.current.len() >= self.capacity {
                inner.previous = std::mem::take(&mut inner.current);
            }
            inner.current.insert(mask);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // The sets hold no invariant a panicking holder could break.
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for VaultState {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

pub struct KnownView<'a>(MutexGuard<'a, Inner>);

impl KnownView<'_> {
    pub fn contains(&self, field: PiiField, mask: MaskDigest) -> bool {
        let key = (field, mask);
        self.0.current.contains(&key) || self.0.previous.contains(&key)
    }

    /// The epoch the masks are valid for.
    pub fn epoch(&self) -> Option<i64> {
        self.0.epoch
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, Masker, KEY_LEN};

    fn masker() -> Masker {
        Masker::new(&DataKey::from_plaintext(1, vec![3; KEY_LEN]).unwrap())
    }

    fn masks(n: usize) -> Vec<MaskDigest> {
        let masker = masker();
        (0..n)
            .map(|i| masker.digest(PiiField::Ip, &format!("10.0.{}.{}", i / 256, i % 256)))
            .collect()
    }

    #[test]
    fn knows_only_what_was_committed_and_per_field() {
        let known = VaultState::new(10);
        known.advance(1, Vec::new());
        let all = masks(2);
        known.insert_committed(1, [(PiiField::Ip, all[0])]);
        let view = known.view();
        assert!(view.contains(PiiField::Ip, all[0]));
        assert!(!view.contains(PiiField::DeviceId, all[0]));
        assert!(!view.contains(PiiField::Ip, all[1]));
    }

    #[test]
    fn stays_bounded_and_keeps_the_recent_generation() {
        let known = VaultState::new(100);
        known.advance(1, Vec::new());
        let all = masks(1000);
        known.insert_committed(1, all.iter().map(|m| (PiiField::Ip, *m)));
        let view = known.view();
        let remembered = all
            .iter()
            .filter(|m| view.contains(PiiField::Ip, **m))
            .count();
        assert!(remembered <= 200, "{remembered}");
        assert!(view.contains(PiiField::Ip, all[999]));
        assert!(!view.contains(PiiField::Ip, all[0]));
    }

    #[test]
    fn a_new_epoch_forgets_every_mask_and_masks_of_an_old_one_are_not_kept() {
        let known = VaultState::new(10);
        let all = masks(2);
        known.insert_committed(1, [(PiiField::Ip, all[0])]);
        assert!(!known.view().contains(PiiField::Ip, all[0]), "no epoch yet");
        known.advance(1, Vec::new());
        known.insert_committed(1, [(PiiField::Ip, all[0])]);
        known.advance(2, Vec::new());
        assert!(!known.view().contains(PiiField::Ip, all[0]));
        known.insert_committed(1, [(PiiField::Ip, all[1])]);
        assert!(!known.view().contains(PiiField::Ip, all[1]));
        known.advance(1, Vec::new());
        assert_eq!(known.epoch(), Some(2), "epochs only move forward");
    }

    #[test]
    fn the_suppression_list_only_grows_and_reads_each_row_once() {
        let known = VaultState::new(10);
        let hash = |byte| crate::crypto::UserHash::from_bytes(&[byte; 32]).unwrap();
        let (alice, bob) = (hash(1), hash(2));
        known.advance(3, vec![(1, alice)]);
        known.advance(2, vec![(1, alice), (2, bob)]);
        let (epoch, forgotten) = known.forgotten();
        assert_eq!(epoch, Some(3));
        assert!(forgotten.contains(&alice) && forgotten.contains(&bob));
        assert_eq!(known.forgotten_upto(), 2);
    }
}
