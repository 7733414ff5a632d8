//! Sealing quarantined bodies to a public key, so that the process that seals them cannot open
//! them again.
//!
//! HPKE (RFC 9180) in base mode: DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM. The key
//! pair is derived (RFC 9180 `DeriveKeyPair`) from a 32-byte seed that KMS generated and wrapped
//! (purpose `quarantine`); the public key is stored beside the wrapped seed. Ingest holds only the
//! public key.
//!
//! One encapsulation per batch, not per body: an X25519 agreement costs about 0.1 ms, which at a
//! few percent of malformed messages was a fifth of a backfill's CPU. The batch's HPKE context
//! exports a secret (RFC 9180 §5.3) that keys AES-256-GCM-SIV, and each body is sealed under it
//! with a random nonce; the associated data binds the message id and the key version, so a
//! ciphertext copied to another row does not open. Opening needs the private key to decapsulate.
//!
//! Stored layout: `encapsulated key (32 bytes) || nonce (12 bytes) || ciphertext and tag`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};
use hpke::aead::AesGcm256;
use hpke::kdf::HkdfSha256;
use hpke::kem::X25519HkdfSha256;
use hpke::{Deserializable, Kem as _, OpModeR, OpModeS, Serializable};
use zeroize::Zeroizing;

use super::{DataKey, SealError, KEY_LEN};

type Kem = X25519HkdfSha256;

const INFO: &[u8] = b"etl/quarantine/hpke/v1";
/// The exporter context of the secret that keys a batch's bodies.
const BATCH_KEY_LABEL: &[u8] = b"etl/quarantine/batch-key/v1";
const ENCAPPED_LEN: usize = 32;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

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

    /// A fresh encapsulation to seal one batch's bodies with.
    pub fn batch(&self) -> Result<BatchSealer, SealError> {
        let (encapped, context) = hpke::setup_sender::<AesGcm256, HkdfSha256, Kem, _>(
            &OpModeS::Base,
            &self.public_key,
            INFO,
            &mut rand::rng(),
        )
        .map_err(|_| SealError::Encrypt)?;
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        context
            .export(BATCH_KEY_LABEL, secret.as_mut_slice())
            .map_err(|_| SealError::Encrypt)?;
        Ok(BatchSealer {
            version: self.version,
            encapped: encapped.to_bytes().into(),
            cipher: batch_cipher(&secret)?,
        })
    }
}

/// Seals the bodies of one batch under one encapsulation.
pub struct BatchSealer {
    version: i32,
    encapped: [u8; ENCAPPED_LEN],
    cipher: LessSafeKey,
}

impl BatchSealer {
    /// Randomised ciphertext of a body, bound to its message id.
    pub fn seal(&self, message_id: &str, body: &[u8]) -> Result<Vec<u8>, SealError> {
        use rand::RngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let mut sealed = Vec::with_capacity(ENCAPPED_LEN + NONCE_LEN + body.len() + TAG_LEN);
        sealed.extend_from_slice(&self.encapped);
        sealed.extend_from_slice(&nonce);
        sealed.extend_from_slice(body);
        let tag = self
            .cipher
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad(message_id, self.version)),
                &mut sealed[ENCAPPED_LEN + NONCE_LEN..],
            )
            .map_err(|_| SealError::Encrypt)?;
        sealed.extend_from_slice(tag.as_ref());
        Ok(sealed)
    }
}

/// The private half, for `etl quarantine show`. Wiped on drop (x25519-dalek's `zeroize`).
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

    /// Opens a body sealed by [`BatchSealer::seal`] for this message id and key version.
    pub fn open(&self, message_id: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        if sealed.len() < ENCAPPED_LEN + NONCE_LEN + TAG_LEN {
            return Err(SealError::Truncated);
        }
        let (encapped, rest) = sealed.split_at(ENCAPPED_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let encapped = <Kem as hpke::Kem>::EncappedKey::from_bytes(encapped)
            .map_err(|_| SealError::Unauthentic)?;
        let context = hpke::setup_receiver::<AesGcm256, HkdfSha256, Kem>(
            &OpModeR::Base,
            &self.private_key,
            &encapped,
            INFO,
        )
        .map_err(|_| SealError::Unauthentic)?;
        let mut secret = Zeroizing::new([0u8; KEY_LEN]);
        context
            .export(BATCH_KEY_LABEL, secret.as_mut_slice())
            .map_err(|_| SealError::Unauthentic)?;
        let cipher = batch_cipher(&secret)?;
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Truncated)?;
        let mut buffer = Zeroizing::new(ciphertext.to_vec());
        let plain_len = cipher
            .open_in_place(
                nonce,
                Aad::from(aad(message_id, self.version)),
                buffer.as_mut_slice(),
            )
            .map_err(|_| SealError::Unauthentic)?
            .len();
        buffer.truncate(plain_len);
        Ok(buffer)
    }
}

fn batch_cipher(secret: &[u8; KEY_LEN]) -> Result<LessSafeKey, SealError> {
    UnboundKey::new(&AES_256_GCM_SIV, secret)
        .map(LessSafeKey::new)
        .map_err(|_| SealError::Encrypt)
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
