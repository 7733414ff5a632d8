//! Sealing quarantined bodies to a public key, so that the process that seals them cannot open
//! them again.
//!
//! HPKE (RFC 9180) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The key
//! pair is derived (RFC 9180 `DeriveKeyPair`) from a 32-byte seed that KMS generated and wrapped
//! (purpose `quarantine`); the public key is stored beside the wrapped seed. Ingest holds only the
//! public key. Each body gets a fresh encapsulation, and the associated data binds the message id
//! and the key version, so a ciphertext copied to another row does not open.
//!
//! Stored layout: `encapsulated key (32 bytes) || AES-256-GCM ciphertext and tag`.

use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::{DataKey, SealError};

type Kem = X25519HkdfSha256;

const INFO: &[u8] = b"etl/quarantine/hpke/v1";
const ENCAPPED_LEN: usize = 32;

/// Seals quarantined bodies to one version of the quarantine public key.
#[derive(Clone)]
pub struct QuarantineSealer {
    version: i32,
    public_key: <Kem as hpke::Kem>::PublicKey,
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
        <Kem as hpke::Kem>::PublicKey::from_bytes(public_key)
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

    /// Randomised ciphertext of a body, bound to its message id.
    pub fn seal(&self, message_id: &str, body: &[u8]) -> Result<Vec<u8>, SealError> {
        let (encapped, ciphertext) = hpke::single_shot_seal::<AesGcm256, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &self.public_key,
            INFO,
            body,
            &aad(message_id, self.version),
            &mut rand::rng(),
        )
        .map_err(|_| SealError::Encrypt)?;
        let mut sealed = Vec::with_capacity(ENCAPPED_LEN + ciphertext.len());
        sealed.extend_from_slice(&encapped.to_bytes());
        sealed.extend_from_slice(&ciphertext);
        Ok(sealed)
    }
}

/// The private half, for `etl quarantine show`. Zeroized on drop (by the HPKE crate's key type).
pub struct QuarantineOpener {
    version: i32,
    private_key: <Kem as hpke::Kem>::PrivateKey,
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

    /// Opens a body sealed by [`QuarantineSealer::seal`] for this message id and key version.
    pub fn open(&self, message_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < ENCAPPED_LEN {
            return Err(SealError::Truncated);
        }
        let (encapped, ciphertext) = sealed.split_at(ENCAPPED_LEN);
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapped)
            .map_err(|_| SealError::Unauthentic)?;
        hpke::single_shot_open::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.private_key,
            &encapped,
            INFO,
            ciphertext,
            &aad(message_id, self.version),
        )
        .map(Zeroizing::new)
        .map_err(|_| SealError::Unauthentic)
    }
}

/// `version(big-endian) 0 message id`.
fn aad(message_id: &str, version: i32) -> Vec<u8> {
    [&version.to_be_bytes()[..], &[0], message_id.as_bytes()].concat()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let a = sealer.seal("id-1", b"{oops").unwrap();
        assert_ne!(a, sealer.seal("id-1", b"{oops").unwrap(), "randomised");
        assert_eq!(opener.open("id-1", &a).unwrap().as_slice(), b"{oops");
        assert_eq!(opener.open("id-2", &a), Err(SealError::Unauthentic));
        let (other, _) = pair(1, 8);
        assert_eq!(other.open("id-1", &a), Err(SealError::Unauthentic));
        let (next_version, _) = pair(2, 7);
        assert_eq!(next_version.open("id-1", &a), Err(SealError::Unauthentic));
        assert_eq!(opener.open("id-1", &a[..10]), Err(SealError::Truncated));
    }

    #[test]
    fn the_key_pair_is_a_function_of_the_seed() {
        let seed = DataKey::from_plaintext(1, vec![9; 32]).unwrap();
        assert_eq!(quarantine_key_pair(&seed).1, quarantine_key_pair(&seed).1);
        assert!(QuarantineSealer::from_public_key(1, &[1; 5]).is_none());
    }
}
