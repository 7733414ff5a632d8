//! Masks this process has committed to the vault, so a value seen again skips the seal and the
//! vault insert (with realistic data most events repeat an ip or a device).
//!
//! A mask goes in only after the transaction that inserted (or found) its vault row committed,
//! so a hit always means the row exists: the vault is append-only. A miss only costs an
//! `ON CONFLICT DO NOTHING` insert that finds the row. Memory is bounded by two generations of
//! at most `capacity` masks each: when the current one fills up it becomes the previous one and
//! the older is dropped, so recently seen masks stay known.

use std::collections::HashSet;
use std::sync::{Mutex, MutexGuard, PoisonError};

use foldhash::fast::RandomState;

use crate::crypto::MaskDigest;
use crate::domain::PiiField;

/// Default bound: two generations of 114,688 masks. That is 7/8 of 2^17, the most a hash table of
/// 2^17 buckets holds before it doubles, so each generation stays at about 4.5 MiB.
const DEFAULT_CAPACITY: usize = (1 << 17) / 8 * 7;

type Set = HashSet<(PiiField, MaskDigest), RandomState>;

pub struct KnownMasks {
    capacity: usize,
    generations: Mutex<Generations>,
}

struct Generations {
    current: Set,
    previous: Set,
}

impl KnownMasks {
    pub fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.max(1),
            generations: Mutex::new(Generations {
                current: Set::default(),
                previous: Set::default(),
            }),
        }
    }

    /// A view for checking many masks under one lock.
    pub fn view(&self) -> KnownView<'_> {
        KnownView(self.lock())
    }

    /// Records masks whose vault rows are committed.
    pub fn insert_committed(&self, masks: impl IntoIterator<Item = (PiiField, MaskDigest)>) {
        let mut generations = self.lock();
        for mask in masks {
            if generations.previous.contains(&mask) {
                continue;
            }
            if generations.current.len() >= self.capacity {
                generations.previous = std::mem::take(&mut generations.current);
            }
            generations.current.insert(mask);
        }
    }

    fn lock(&self) -> MutexGuard<'_, Generations> {
        // The sets hold no invariant a panicking holder could break.
        self.generations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Default for KnownMasks {
    fn default() -> Self {
        Self::new(DEFAULT_CAPACITY)
    }
}

pub struct KnownView<'a>(MutexGuard<'a, Generations>);

impl KnownView<'_> {
    pub fn contains(&self, field: PiiField, mask: MaskDigest) -> bool {
        let key = (field, mask);
        self.0.current.contains(&key) || self.0.previous.contains(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, Masker, KEY_LEN};

    fn masks(n: usize) -> Vec<MaskDigest> {
        let key = DataKey::from_plaintext(1, vec![3; KEY_LEN]).unwrap();
        let masker = Masker::new(&key);
        (0..n)
            .map(|i| masker.digest(PiiField::Ip, &format!("10.0.{}.{}", i / 256, i % 256)))
            .collect()
    }

    #[test]
    fn knows_only_what_was_committed_and_per_field() {
        let known = KnownMasks::new(10);
        let all = masks(2);
        known.insert_committed([(PiiField::Ip, all[0])]);
        let view = known.view();
        assert!(view.contains(PiiField::Ip, all[0]));
        assert!(!view.contains(PiiField::DeviceId, all[0]));
        assert!(!view.contains(PiiField::Ip, all[1]));
    }

    #[test]
    fn stays_bounded_and_keeps_the_recent_generation() {
        let known = KnownMasks::new(100);
        let all = masks(1000);
        known.insert_committed(all.iter().map(|m| (PiiField::Ip, *m)));
        let view = known.view();
        let remembered = all
            .iter()
            .filter(|m| view.contains(PiiField::Ip, **m))
            .count();
        assert!(remembered <= 200, "{remembered}");
        assert!(view.contains(PiiField::Ip, all[999]));
        assert!(!view.contains(PiiField::Ip, all[0]));
    }
}
