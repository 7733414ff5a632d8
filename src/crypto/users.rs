//! The user key: the keyed hash of a user id (what the suppression list, quarantined rows and
//! erasure receipts hold instead of the id) and the key of the digests of backfilled lines.
//!
//! Apart from the mask key because neither can be recomputed when a key changes: the suppression
//! list keeps no ids, and a backfill's claims are keyed by its lines' digests. Derived from the
//! mask key, they kept every mask key version in use for ever; with a key of their own, a mask
//! key version is retired once the re-mask has moved every mask off it.
//!
//! A user key is 64 bytes: the user-hash key, then the line key. A deployment whose hashes were
//! made before the user key existed carries them over: `etl keys init` makes user key version N
//! of the two subkeys mask key version N derived (`carried_from_mask`), so stored hashes and
//! claims stay valid while the mask key itself can go.

use hmac::Mac;

use super::{derive_subkey, hmac_state, DataKey, HmacSha256, LineKey, KEY_LEN, USER_KEY_LEN};

/// The labels under which a mask key derived these keys before the user key existed.
const CARRIED_USER_LABEL: &str = "etl/user/v1";
const CARRIED_LINES_LABEL: &str = "etl/file/v1";

/// Hashes user ids and digests lines with one version of the user key.
pub struct UserKey {
    version: i32,
    users: HmacSha256,
    lines: LineKey,
}

impl std::fmt::Debug for UserKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserKey")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl UserKey {
    /// `None` unless `key` is a user key's 64 bytes.
    pub fn new(key: &DataKey) -> Option<Self> {
        let material = key.material();
        if material.len() != USER_KEY_LEN {
            return None;
        }
        let (users, lines) = material.split_at(KEY_LEN);
        Some(Self {
            version: key.version(),
            users: hmac_state(users),
            lines: LineKey::new(hmac_state(lines)),
        })
    }

    /// The user key version that keeps the hashes and line digests mask key version `mask`
    /// made: the same version number, and the two subkeys (one-way: they do not give the mask
    /// key back).
    pub fn carried_from_mask(mask: &DataKey) -> DataKey {
        let mut material = [0u8; USER_KEY_LEN];
        let (users, lines) = material.split_at_mut(KEY_LEN);
        users.copy_from_slice(derive_subkey(mask.material(), CARRIED_USER_LABEL).as_slice());
        lines.copy_from_slice(derive_subkey(mask.material(), CARRIED_LINES_LABEL).as_slice());
        let key = DataKey::from_array(mask.version(), &material);
        zeroize::Zeroize::zeroize(&mut material);
        key
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    /// The keyed hash of a user id, so an erased user can be recognised without keeping the id.
    /// Keyed for the reason masks are: user ids are guessable.
    pub fn user_hash(&self, user_id: &str) -> UserHash {
        let mut mac = self.users.clone();
        mac.update(user_id.as_bytes());
        UserHash(mac.finalize().into_bytes().into())
    }

    /// The key of the fingerprints and range digests of backfilled lines.
    pub fn line_key(&self) -> &LineKey {
        &self.lines
    }

    /// What the keyring stores beside the wrapped key, so that `etl.forget` can refuse hashes
    /// made with any other key: the user-hash key's digest of a fixed label, digested again
    /// under the line key with a prefix no fingerprint or range digest has, so it proves both
    /// halves and is none of the stored digests.
    pub fn key_check(&self) -> [u8; 32] {
        let mut mac = self.users.clone();
        mac.update(b"\0etl/user/key-check");
        let users: [u8; 32] = mac.finalize().into_bytes().into();
        self.lines.key_check(&users)
    }
}

/// Every stored user key version: the newest makes new hashes and claims; all of them recognise
/// the ones already stored, which keep the version they were made with.
#[derive(Debug)]
pub struct UserKeys {
    newest: UserKey,
    others: Vec<UserKey>,
}

impl UserKeys {
    pub fn new(newest: UserKey, others: Vec<UserKey>) -> Self {
        Self { newest, others }
    }

    pub fn newest(&self) -> &UserKey {
        &self.newest
    }

    /// The older versions.
    pub fn others(&self) -> &[UserKey] {
        &self.others
    }

    /// The newest, then the older versions.
    pub fn all(&self) -> impl Iterator<Item = &UserKey> {
        std::iter::once(&self.newest).chain(&self.others)
    }
}

/// HMAC-SHA256 of a user id under a user key version.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct UserHash([u8; 32]);

impl UserHash {
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }

    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for UserHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_key(byte: u8) -> UserKey {
        UserKey::new(&DataKey::from_plaintext(1, vec![byte; USER_KEY_LEN]).unwrap()).unwrap()
    }

    #[test]
    fn user_hashes_are_keyed() {
        let a = user_key(1).user_hash("alice");
        assert_eq!(a, user_key(1).user_hash("alice"));
        assert_ne!(a, user_key(2).user_hash("alice"));
        assert_ne!(a, user_key(1).user_hash("alicf"));
        assert_ne!(user_key(1).key_check(), user_key(2).key_check());
    }

    #[test]
    fn only_a_user_keys_length_is_a_user_key() {
        assert!(UserKey::new(&DataKey::from_plaintext(1, vec![1; KEY_LEN]).unwrap()).is_none());
    }

    /// What a mask key version hashed before the user key existed, as it did it.
    #[test]
    fn a_carried_key_keeps_the_hashes_and_digests_of_its_mask_key() {
        let mask = DataKey::from_plaintext(3, vec![7; KEY_LEN]).unwrap();
        let carried = UserKey::new(&UserKey::carried_from_mask(&mask)).unwrap();
        assert_eq!(carried.version(), 3);
        let old_users = hmac_state(derive_subkey(&[7; KEY_LEN], "etl/user/v1").as_slice());
        let mut mac = old_users.clone();
        mac.update(b"alice");
        let old_hash: [u8; 32] = mac.finalize().into_bytes().into();
        assert_eq!(carried.user_hash("alice").as_bytes(), &old_hash);
        let old_lines = LineKey::new(hmac_state(
            derive_subkey(&[7; KEY_LEN], "etl/file/v1").as_slice(),
        ));
        assert_eq!(
            carried.line_key().fingerprint(b"{}"),
            old_lines.fingerprint(b"{}")
        );
    }
}
