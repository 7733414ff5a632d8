//! Plaintext data keys, held only in memory, never printable, zeroized on drop.

use secrecy::{ExposeSecret, SecretSlice};

/// AES-256 / HMAC-SHA256 key length in bytes.
pub const KEY_LEN: usize = 32;

/// A user key's length: the user-hash key, then the line key.
pub const USER_KEY_LEN: usize = 2 * KEY_LEN;

/// What a data key is for. Stored in `keyring.data_keys.purpose` and bound into the KMS
/// encryption context, so a wrapped mask key cannot be unwrapped as a vault key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    Mask,
    Vault,
    /// The seed of the quarantine key pair; ingest never unwraps it.
    Quarantine,
    /// The keys of user-id hashes and of backfilled lines' digests, apart from the mask key so
    /// that a mask key version can be retired (see `crypto::users`).
    User,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 4] = [
        KeyPurpose::Mask,
        KeyPurpose::Vault,
        KeyPurpose::Quarantine,
        KeyPurpose::User,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Vault => "vault",
            Self::Quarantine => "quarantine",
            Self::User => "user",
        }
    }

    /// The length of its data keys in bytes: a user key is two 256-bit keys, one per use.
    pub fn key_len(self) -> usize {
        match self {
            Self::User => USER_KEY_LEN,
            Self::Mask | Self::Vault | Self::Quarantine => KEY_LEN,
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|purpose| purpose.as_str() == text)
    }
}

/// One unwrapped data key and its version. `Debug` prints `[REDACTED]` for the material.
#[derive(Debug)]
pub struct DataKey {
    version: i32,
    material: SecretSlice<u8>,
}

impl DataKey {
    /// Takes a key of `KEY_LEN` bytes (or `USER_KEY_LEN`, a user key's) from a buffer, and
    /// wipes the buffer whatever its length.
    pub fn from_plaintext(version: i32, mut plaintext: Vec<u8>) -> Option<Self> {
        let key = (plaintext.len() == KEY_LEN || plaintext.len() == USER_KEY_LEN)
            .then(|| Self::from_array(version, &plaintext));
        zeroize::Zeroize::zeroize(&mut plaintext);
        key
    }

    /// A key copied from `material` into a secret of exactly its length (a `Vec` with spare
    /// capacity would be reallocated, leaving an unwiped copy); the caller wipes `material`.
    pub(super) fn from_array(version: i32, material: &[u8]) -> Self {
        Self {
            version,
            material: SecretSlice::from(Box::<[u8]>::from(material)),
        }
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    pub(super) fn material(&self) -> &[u8] {
        self.material.expose_secret()
    }

    /// The material, for KMS to wrap: the one use outside this module.
    pub(crate) fn expose_material(&self) -> &[u8] {
        self.material.expose_secret()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_key_material() {
        let key = DataKey::from_plaintext(3, vec![0xAB; KEY_LEN]).unwrap();
        let shown = format!("{key:?}");
        assert!(
            shown.contains("REDACTED") && !shown.contains("171"),
            "{shown}"
        );
        assert_eq!(key.version(), 3);
    }

    #[test]
    fn rejects_wrong_length() {
        assert!(DataKey::from_plaintext(1, vec![1; 16]).is_none());
        assert!(DataKey::from_plaintext(1, vec![1; KEY_LEN + 1]).is_none());
        assert_eq!(
            DataKey::from_plaintext(1, vec![1; USER_KEY_LEN])
                .unwrap()
                .material()
                .len(),
            USER_KEY_LEN
        );
    }
}
