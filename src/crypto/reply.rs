//! Replies of the recovery service: each opened value is sealed to the one-time X25519 key of the
//! client that asked (an HPKE box, `hpke_box`, one encapsulation per request), so the sealed
//! replies can wait in the database and only that client, which never left its private key
//! anywhere, opens them. The associated data binds the request id, what the value is (`ip`,
//! `device_id` or `body`) and its subject (the mask, or the quarantined message id): a reply
//! copied to another request or subject does not open.

use std::collections::HashMap;

use aws_lc_rs::aead::LessSafeKey;
use hpke::{Deserializable, Kem as _, Serializable};
use zeroize::Zeroizing;

use super::hpke_box::{self, BoxSealer, Domain, Kem, PrivateKey, PublicKey, ENCAPPED_LEN};
use super::SealError;

const DOMAIN: Domain = Domain {
    info: b"etl/recovery/reply/hpke/v1",
    label: b"etl/recovery/reply/request-key/v1",
};

/// The length of a reply public key.
pub const REPLY_PUBLIC_KEY_LEN: usize = 32;
/// The length of the seed a reply key pair derives from.
pub const REPLY_SEED_LEN: usize = 32;

/// A client's one-time key pair, made in memory for one request and dropped (wiped, through
/// x25519-dalek's `zeroize`) when the values are opened. `Debug` shows the public half only.
pub struct ReplyKeyPair {
    /// What the pair is derived from: kept (wiped on drop) so a request that waits for approvals
    /// can be collected later by the same client.
    seed: Zeroizing<[u8; REPLY_SEED_LEN]>,
    private_key: PrivateKey,
    public_key: [u8; REPLY_PUBLIC_KEY_LEN],
    /// One cipher per encapsulation met, so a request's replies cost one agreement.
    ciphers: HashMap<[u8; ENCAPPED_LEN], LessSafeKey>,
}

impl std::fmt::Debug for ReplyKeyPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplyKeyPair")
            .field("public_key", &hex::encode(self.public_key))
            .finish_non_exhaustive()
    }
}

impl ReplyKeyPair {
    pub fn generate() -> Self {
        use rand::RngCore;
        let mut seed = Zeroizing::new([0u8; REPLY_SEED_LEN]);
        rand::rng().fill_bytes(seed.as_mut_slice());
        Self::from_seed(seed)
    }

    /// The pair of a seed kept by [`Self::seed`].
    pub fn from_seed(seed: Zeroizing<[u8; REPLY_SEED_LEN]>) -> Self {
        let (private_key, public_key) = Kem::derive_keypair(seed.as_slice());
        Self {
            seed,
            private_key,
            public_key: public_key.to_bytes().into(),
            ciphers: HashMap::new(),
        }
    }

    /// The secret the pair derives from, for a client that collects later.
    pub fn seed(&self) -> &[u8; REPLY_SEED_LEN] {
        &self.seed
    }

    /// What the request carries: replies are sealed to it.
    pub fn public_key(&self) -> &[u8; REPLY_PUBLIC_KEY_LEN] {
        &self.public_key
    }

    /// Opens a reply sealed by [`ReplySealer::seal`] for this request, kind of value and subject.
    pub fn open(
        &mut self,
        request_id: i64,
        what: &str,
        subject: &str,
        sealed: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let encapped: [u8; ENCAPPED_LEN] = hpke_box::encapped_of(sealed)?
            .try_into()
            .map_err(|_| SealError::Truncated)?;
        let cipher = match self.ciphers.entry(encapped) {
            std::collections::hash_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(hpke_box::receiver(DOMAIN, &self.private_key, &encapped)?)
            }
        };
        hpke_box::open_with(cipher, &aad(request_id, what, subject), sealed)
    }
}

/// Seals the values of one request to its client's public key.
pub struct ReplySealer {
    request_id: i64,
    sealer: BoxSealer,
}

impl ReplySealer {
    /// `Err(SealError::Encrypt)` when `public_key` is not an X25519 public key.
    pub fn new(request_id: i64, public_key: &[u8]) -> Result<Self, SealError> {
        let public_key = PublicKey::from_bytes(public_key).map_err(|_| SealError::Encrypt)?;
        Ok(Self {
            request_id,
            sealer: BoxSealer::new(DOMAIN, &public_key)?,
        })
    }

    pub fn seal(&self, what: &str, subject: &str, value: &[u8]) -> Result<Vec<u8>, SealError> {
        self.sealer
            .seal(&aad(self.request_id, what, subject), value)
    }
}

/// `request id (big-endian) || what || 0 || subject`.
fn aad(request_id: i64, what: &str, subject: &str) -> Vec<u8> {
    [
        &request_id.to_be_bytes()[..],
        what.as_bytes(),
        &[0],
        subject.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_opens_only_for_its_request_value_kind_and_subject_with_its_key() {
        let mut client = ReplyKeyPair::generate();
        let sealer = ReplySealer::new(7, client.public_key()).unwrap();
        let sealed = sealer.seal("ip", "ab12", b"10.0.0.1").unwrap();
        let other = sealer.seal("ip", "cd34", b"10.0.0.2").unwrap();
        assert_eq!(
            sealed[..ENCAPPED_LEN],
            other[..ENCAPPED_LEN],
            "one encapsulation"
        );
        assert_eq!(
            client.open(7, "ip", "ab12", &sealed).unwrap().as_slice(),
            b"10.0.0.1"
        );
        assert_eq!(
            client.open(8, "ip", "ab12", &sealed),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            client.open(7, "device_id", "ab12", &sealed),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            client.open(7, "ip", "cd34", &sealed),
            Err(SealError::Unauthentic)
        );
        let mut stranger = ReplyKeyPair::generate();
        assert_eq!(
            stranger.open(7, "ip", "ab12", &sealed),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            client.open(7, "ip", "ab12", &sealed[..20]),
            Err(SealError::Truncated)
        );
    }

    #[test]
    fn a_pair_made_again_from_its_seed_opens_what_was_sealed_to_it() {
        let first = ReplyKeyPair::generate();
        let sealed = ReplySealer::new(3, first.public_key())
            .unwrap()
            .seal("ip", "m", b"v")
            .unwrap();
        let mut again = ReplyKeyPair::from_seed(Zeroizing::new(*first.seed()));
        assert_eq!(again.public_key(), first.public_key());
        assert_eq!(again.open(3, "ip", "m", &sealed).unwrap().as_slice(), b"v");
    }

    #[test]
    fn debug_shows_the_public_half_only_and_bad_public_keys_are_refused() {
        let client = ReplyKeyPair::generate();
        let shown = format!("{client:?}");
        assert!(shown.contains(&hex::encode(client.public_key())), "{shown}");
        assert!(ReplySealer::new(1, &[0; 5]).is_err());
    }
}
