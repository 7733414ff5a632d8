//! Sealing quarantined bodies to a public key, so that the process that seals them cannot open
//! them again.
//!
//! HPKE boxes (`hpke_box`), one encapsulation per batch (at a few percent of malformed messages, one
//! per body was a fifth of a backfill's CPU). The key pair is derived (RFC 9180 `DeriveKeyPair`)
//! from a 32-byte seed that KMS generated and wrapped (purpose `quarantine`); the public key is
//! stored beside the wrapped seed. Ingest holds only the public key. The associated data binds the
//! message id and the key version, so a ciphertext copied to another row does not open.

use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

use super::hpke_box::{self, BoxSealer, Domain, Kem, PrivateKey, PublicKey};
use super::{DataKey, SealError};

const DOMAIN: Domain = Domain {
    info: b"etl/quarantine/hpke/v1",
    // The exporter context of the secret that keys a batch's bodies.
    label: b"etl/quarantine/batch-key/v1",
};

/// Seals quarantined bodies to one version of the quarantine public key.
#[derive(Clone)]
pub struct QuarantineSealer {
    version: i32,
    public_key: PublicKey,
}

impl std::fmt::Debug for QuarantineSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarantineSealer")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl QuarantineSealer {
    /// The sealer for a stored public key; `None` if the bytes are not an X25519 public key.
    pub fn from_public_key(version: i32, public_key: &[u8]) -> Option<Self> {
        PublicKey::from_bytes(public_key)
            .ok()
            .map(|public_key| Self {
                version,
                public_key,
            })
    }

    /// The quarantine key version, stored beside every sealed body.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// A fresh encapsulation to seal one batch's bodies with.
    pub fn batch(&self) -> Result<BatchSealer, SealError> {
        Ok(BatchSealer {
            version: self.version,
            sealer: BoxSealer::new(DOMAIN, &self.public_key)?,
        })
    }
}

/// Seals the bodies of one batch under one encapsulation.
pub struct BatchSealer {
    version: i32,
    sealer: BoxSealer,
}

impl BatchSealer {
    /// Randomised ciphertext of a body, bound to its message id.
    pub fn seal(&self, message_id: &str, body: &[u8]) -> Result<Vec<u8>, SealError> {
        self.sealer.seal(&aad(message_id, self.version), body)
    }
}

/// The private half, for `etl quarantine show`. Wiped on drop (x25519-dalek's `zeroize`).
pub struct QuarantineOpener {
    version: i32,
    private_key: PrivateKey,
}

impl std::fmt::Debug for QuarantineOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuarantineOpener")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

/// The key pair of a seed: the opener and the public key bytes to store.
pub fn quarantine_key_pair(seed: &DataKey) -> (QuarantineOpener, Vec<u8>) {
    let (private_key, public_key) = Kem::derive_keypair(seed.material());
    (
        QuarantineOpener {
            version: seed.version(),
            private_key,
        },
        public_key.to_bytes().to_vec(),
    )
}

impl QuarantineOpener {
    pub fn new(seed: &DataKey) -> Self {
        quarantine_key_pair(seed).0
    }

    /// Opens a body sealed by [`BatchSealer::seal`] for this message id and key version.
    pub fn open(&self, message_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let encapped = hpke_box::encapped_of(sealed)?;
        let cipher = hpke_box::receiver(DOMAIN, &self.private_key, encapped)?;
        hpke_box::open_with(&cipher, &aad(message_id, self.version), sealed)
    }
}

/// `version(big-endian) 0 message id`.
fn aad(message_id: &str, version: i32) -> Vec<u8> {
    [&version.to_be_bytes()[..], &[0], message_id.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::hpke_box::ENCAPPED_LEN;

    fn pair(version: i32, byte: u8) -> (QuarantineOpener, QuarantineSealer) {
        let seed = DataKey::from_plaintext(version, vec![byte; 32]).unwrap();
        let (opener, public) = quarantine_key_pair(&seed);
        (
            opener,
            QuarantineSealer::from_public_key(version, &public).unwrap(),
        )
    }

    #[test]
    fn sealed_bodies_open_only_with_the_private_key_for_their_message() {
        let (opener, sealer) = pair(1, 7);
        let batch = sealer.batch().unwrap();
        let a = batch.seal("id-1", b"{oops").unwrap();
        let b = batch.seal("id-2", b"[1, 2]").unwrap();
        assert_ne!(a, batch.seal("id-1", b"{oops").unwrap(), "randomised");
        assert_eq!(a[..ENCAPPED_LEN], b[..ENCAPPED_LEN], "one encapsulation");
        assert_ne!(
            a[..ENCAPPED_LEN],
            sealer.batch().unwrap().seal("id-1", b"{oops").unwrap()[..ENCAPPED_LEN],
            "a new one per batch"
        );
        assert_eq!(opener.open("id-1", &a).unwrap().as_slice(), b"{oops");
        assert_eq!(opener.open("id-2", &b).unwrap().as_slice(), b"[1, 2]");
        assert_eq!(opener.open("id-2", &a), Err(SealError::Unauthentic));
        let (other, _) = pair(1, 8);
        assert_eq!(other.open("id-1", &a), Err(SealError::Unauthentic));
        let (next_version, _) = pair(2, 7);
        assert_eq!(next_version.open("id-1", &a), Err(SealError::Unauthentic));
        assert_eq!(opener.open("id-1", &a[..40]), Err(SealError::Truncated));
    }

    #[test]
    fn the_key_pair_is_a_function_of_the_seed() {
        let seed = DataKey::from_plaintext(1, vec![9; 32]).unwrap();
        assert_eq!(quarantine_key_pair(&seed).1, quarantine_key_pair(&seed).1);
        assert!(QuarantineSealer::from_public_key(1, &[1; 5]).is_none());
    }
}
