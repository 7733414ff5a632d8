//! Unwrapped keys that open values, one entry per purpose and version, each unwrapped with KMS
//! once and kept for a bounded time: a long-running opener does not call KMS per request, and a
//! key it no longer uses leaves memory (wiped on drop) after the TTL.

use std::collections::hash_map::{Entry, HashMap};
use std::time::{Duration, Instant};

use crate::adapters::kms::{Kms, UnwrapError};
use crate::crypto::{KeyPurpose, QuarantineOpener, Sealer};

/// What one cached key opens with.
pub enum Opener {
    /// A vault key version: vault entries, and quarantined bodies sealed before the quarantine
    /// key pair existed.
    Vault(Box<Sealer>),
    /// A quarantine key pair's private half.
    Quarantine(QuarantineOpener),
}

/// Where a stored key is, as the keyring row says.
pub struct StoredKeyRef<'a> {
    pub purpose: KeyPurpose,
    pub version: i32,
    pub kms_key_id: &'a str,
    pub wrapped_key: &'a [u8],
}

pub struct KeyCache {
    kms: Kms,
    ttl: Duration,
    entries: HashMap<(KeyPurpose, i32), (Instant, Opener)>,
}

impl KeyCache {
    pub fn new(kms: Kms, ttl: Duration) -> Self {
        Self {
            kms,
            ttl,
            entries: HashMap::new(),
        }
    }

    /// The opener of a stored key, unwrapped now unless a fresh one is cached.
    pub async fn opener(&mut self, key: StoredKeyRef<'_>) -> Result<&Opener, UnwrapError> {
        self.evict_expired();
        let cached = match self.entries.entry((key.purpose, key.version)) {
            Entry::Occupied(entry) => entry.into_mut(),
            Entry::Vacant(slot) => {
                let data_key = self
                    .kms
                    .unwrap_data_key(key.kms_key_id, key.purpose, key.version, key.wrapped_key)
                    .await?;
                let opener = match key.purpose {
                    KeyPurpose::Quarantine => Opener::Quarantine(QuarantineOpener::new(&data_key)),
                    // The database hands out vault and quarantine keys for openings only
                    // (`recovery.opening_material`); mask and user keys open nothing.
                    KeyPurpose::Vault | KeyPurpose::Mask | KeyPurpose::User => {
                        Opener::Vault(Box::new(Sealer::new(&data_key)))
                    }
                };
                slot.insert((Instant::now(), opener))
            }
        };
        Ok(&cached.1)
    }

    /// A cached key, without unwrapping (and whatever its age).
    pub fn get(&self, purpose: KeyPurpose, version: i32) -> Option<&Opener> {
        self.entries
            .get(&(purpose, version))
            .map(|(_, opener)| opener)
    }

    /// Keys unwrapped longer ago than the TTL are dropped (and wiped).
    pub fn evict_expired(&mut self) {
        let ttl = self.ttl;
        self.entries
            .retain(|_, (unwrapped, _)| unwrapped.elapsed() < ttl);
    }

    /// How many key versions are held now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
