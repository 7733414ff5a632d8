//! Key material, the keyed mask and the vault seal.
//!
//! Key hierarchy: a KMS key wraps two 256-bit data keys stored in `keyring.data_keys`; the mask
//! key derives one HMAC key per field and one for the digests of backfilled lines, and the vault key derives the vault encryption key, the
//! vault nonce key and the key that opened quarantined bodies before they were sealed to the
//! quarantine key pair. A third data key, purpose `quarantine`, is the seed of an X25519 key pair:
//! ingest holds only its public half (see `quarantine`). Derivation is HMAC-SHA256 with fixed labels, so one data
//! key never serves two purposes directly.

mod audit_chain;
mod hpke_box;
mod keys;
mod lines;
mod mask;
mod quarantine;
mod reply;
mod seal;

pub use audit_chain::{encode_payload, parse_head, ChainBreak, ChainRow, ChainVerifier, GENESIS};
pub use keys::{DataKey, KeyPurpose, KEY_LEN};
pub use lines::{LineKey, LinesDigest};
pub use mask::{MaskDigest, MaskHex, Masker, UserHash};
pub use quarantine::{quarantine_key_pair, BatchSealer, QuarantineOpener, QuarantineSealer};
pub use reply::{ReplyKeyPair, ReplySealer, REPLY_PUBLIC_KEY_LEN, REPLY_SEED_LEN};
pub use seal::{SealError, Sealer};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::Zeroizing;

type HmacSha256 = Hmac<Sha256>;

/// A keyed HMAC state, ready to be cloned per message.
fn hmac_state(key: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    <HmacSha256 as Mac>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC takes any key length"))
}

/// Derives a 256-bit subkey for one purpose from a data key.
fn derive_subkey(key: &[u8], label: &str) -> Zeroizing<[u8; KEY_LEN]> {
    let mut mac = hmac_state(key);
    mac.update(label.as_bytes());
    Zeroizing::new(mac.finalize().into_bytes().into())
}
