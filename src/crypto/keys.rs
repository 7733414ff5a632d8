//! Plaintext data keys, held only in memory, never printable, zeroized on drop.

use secrecy::{ExposeSecret, SecretBox};

/// AES-256 / HMAC-SHA256 key length in bytes.
pub const KEY_LEN: usize = 32;

/// What a data key is for. Stored in `keyring.data_keys.purpose` and bound into the KMS
/// encryption context, so a wrapped mask key cannot be unwrapped as a vault key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyPurpose {
    Mask,
    Vault,
    /// The seed of the quarantine key pair; ingest never unwraps it.
    Quarantine,
}

impl KeyPurpose {
    pub const ALL: [KeyPurpose; 3] = [KeyPurpose::Mask, KeyPurpose::Vault, KeyPurpose::Quarantine];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mask => "mask",
            Self::Vault => "vault",
            Self::Quarantine => "quarantine",
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
    material: SecretBox<[u8; KEY_LEN]>,
}

impl DataKey {
    /// Takes the key from a buffer and wipes the buffer, whatever its length.
    pub fn from_plaintext(version: i32, mut plaintext: Vec<u8>) -> Option<Self> {
        let key = <[u8; KEY_LEN]>::try_from(plaintext.as_slice()).ok();
        zeroize::Zeroize::zeroize(&mut plaintext);
        key.map(|bytes| Self {
            version,
            material: SecretBox::new(Box::new(bytes)),
        })
    }

    pub fn version(&self) -> i32 {
        self.version
    }

    pub(super) fn material(&self) -> &[u8; KEY_LEN] {
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
    }
}
