//! The keys a running process uses, swapped when the active versions change: a re-mask switch
//! (new active mask key version), a vault or quarantine key rotation (a newer key, and a minimum
//! that refuses the older one) or a user key rotation. The committer compares them with `etl.key_state()` each time it
//! refreshes its vault state, which it does whenever the vault epoch moved or the database
//! refused an insert under stale versions; so a long-running ingest follows a rotation without a
//! restart.
//!
//! A `std::sync::RwLock<Arc<Transformer>>` rather than a lock-free cell (`arc-swap`): every batch
//! takes the read lock once, uncontended, to clone the `Arc`, which costs nanoseconds against a
//! batch's milliseconds, and a swap happens once per rotation. No dependency is worth that.

use std::sync::{Arc, PoisonError, RwLock};

use sqlx::PgPool;
use tracing::info;

use super::load::{load_transformer, KeyLoadError};
use crate::adapters::kms::Kms;
use crate::adapters::postgres::keyring::KeyState;
use crate::pipeline::Transformer;

pub struct LiveKeys {
    current: RwLock<Arc<Transformer>>,
    /// `None`: this process cannot reload (it says so when the keys change).
    kms: Option<Kms>,
}

impl LiveKeys {
    /// Keys that are reloaded with `kms` when the active versions change.
    pub fn new(transformer: Transformer, kms: Kms) -> Self {
        Self {
            current: RwLock::new(Arc::new(transformer)),
            kms: Some(kms),
        }
    }

    /// Keys that are never reloaded.
    pub fn fixed(transformer: Transformer) -> Self {
        Self {
            current: RwLock::new(Arc::new(transformer)),
            kms: None,
        }
    }

    /// The transformer to prepare the next batch with.
    pub fn current(&self) -> Arc<Transformer> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Whether the keys held are the ones `state` says ingest must use.
    pub fn matches(&self, state: &KeyState) -> bool {
        let current = self.current();
        let vault = current.sealer().version();
        let quarantine = current.quarantine_sealer().version();
        state.mask_key_version == Some(current.masker().version())
            && state.vault_key_version == Some(vault)
            && state
                .min_vault_key_version
                .is_none_or(|minimum| vault >= minimum)
            && state.quarantine_key_version == Some(quarantine)
            && state
                .min_quarantine_key_version
                .is_none_or(|minimum| quarantine >= minimum)
            && state.user_key_version == Some(current.user_keys().newest().version())
            && state.domains == current.domain_key_versions()
    }

    /// Loads the keys now active.
    pub async fn reload(&self, pool: &PgPool) -> Result<(), KeyLoadError> {
        let kms = self.kms.as_ref().ok_or(KeyLoadError::CannotReload)?;
        let transformer = load_transformer(pool, kms).await?;
        info!(
            mask_key_version = transformer.masker().version(),
            vault_key_version = transformer.sealer().version(),
            user_key_version = transformer.user_keys().newest().version(),
            "data keys reloaded"
        );
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(transformer);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{
        quarantine_key_pair, DataKey, Masker, QuarantineSealer, Sealer, UserKey, UserKeys, KEY_LEN,
        USER_KEY_LEN,
    };

    fn keys(mask: i32, vault: i32) -> LiveKeys {
        let key = |version, byte| DataKey::from_plaintext(version, vec![byte; KEY_LEN]).unwrap();
        let quarantine =
            QuarantineSealer::from_public_key(1, &quarantine_key_pair(&key(1, 3)).1).unwrap();
        let users = DataKey::from_plaintext(1, vec![4; USER_KEY_LEN]).unwrap();
        LiveKeys::fixed(Transformer::new(
            Masker::new(&key(mask, 1)),
            UserKeys::new(UserKey::new(&users).unwrap(), Vec::new()),
            Sealer::new(&key(vault, 2)),
            quarantine,
        ))
    }

    fn state(mask: i32, vault: i32, min_vault: Option<i32>) -> KeyState {
        KeyState {
            epoch: 1,
            mask_key_version: Some(mask),
            vault_key_version: Some(vault),
            min_vault_key_version: min_vault,
            quarantine_key_version: Some(1),
            min_quarantine_key_version: None,
            user_key_version: Some(1),
            domains: String::new(),
        }
    }

    #[test]
    fn keys_match_only_the_active_versions() {
        let held = keys(1, 2);
        assert!(held.matches(&state(1, 2, None)));
        assert!(held.matches(&state(1, 2, Some(2))));
        assert!(!held.matches(&state(2, 2, None)), "a re-mask switched");
        assert!(!held.matches(&state(1, 3, Some(3))), "a vault rotation");
        assert!(
            !held.matches(&state(1, 2, Some(3))),
            "the newest row is below the minimum: reloading must fail, not loop"
        );
        let rotated = KeyState {
            quarantine_key_version: Some(2),
            min_quarantine_key_version: Some(2),
            ..state(1, 2, None)
        };
        assert!(!held.matches(&rotated), "a quarantine key rotation");
        let users_rotated = KeyState {
            user_key_version: Some(2),
            ..state(1, 2, None)
        };
        assert!(!held.matches(&users_rotated), "a user key rotation");
        let domain_added = KeyState {
            domains: "marketing:1".to_owned(),
            ..state(1, 2, None)
        };
        assert!(
            !held.matches(&domain_added),
            "a pseudonymisation domain added"
        );
    }

    #[tokio::test]
    async fn fixed_keys_say_they_cannot_reload() {
        let pool = sqlx::PgPool::connect_lazy("postgres://localhost/none").unwrap();
        let err = keys(1, 1).reload(&pool).await.unwrap_err();
        assert!(matches!(err, KeyLoadError::CannotReload), "{err}");
    }
}
