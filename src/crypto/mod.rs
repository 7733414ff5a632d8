//! Key material, the keyed mask and the vault seal.
//!
//! Key hierarchy: a KMS key wraps the data keys stored in `keyring.data_keys`. The mask key
//! derives one HMAC key per field; the vault key derives the vault encryption key, the vault nonce
//! key and the key that opened quarantined bodies before they were sealed to the quarantine key
//! pair. The `quarantine` data key is the seed of an X25519 key pair: ingest holds only its
//! public half (see `quarantine`). The `user` data key (64 bytes) keys the hashes of user ids
//! and the digests of backfilled lines (see `users`). Derivation is HMAC-SHA256 with fixed
//! labels, so one data key never serves two purposes directly.

mod audit_chain;
mod hpke_box;
mod keys;
mod lines;
mod mask;
mod quarantine;
mod reply;
mod seal;
mod users;

pub use audit_chain::{encode_payload, parse_head, ChainBreak, ChainRow, ChainVerifier, GENESIS};
pub use keys::{DataKey, KeyPurpose, KEY_LEN, USER_KEY_LEN};
pub use lines::{LineKey, LinesDigest};
pub use mask::{DomainMasker, DomainMaskers, MaskDigest, MaskHex, Masker};
pub use quarantine::{quarantine_key_pair, BatchSealer, QuarantineOpener, QuarantineSealer};
pub use reply::{ReplyKeyPair, ReplySealer, REPLY_PUBLIC_KEY_LEN, REPLY_SEED_LEN};
pub use seal::{SealError, Sealer};
pub use users::{UserHash, UserKey, UserKeys};

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
