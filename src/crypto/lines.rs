//! Keyed digests of the lines `etl ingest --from-file` reads: the input's fingerprint and the
//! digest of each committed range.
//!
//! Keyed (HMAC-SHA256 under the line half of the user key), not plain SHA-256, because a line is a
//! message body with personal data in it: the fingerprint is part of every line's message id in
//! `user_logins`, where the body's other fields are in clear beside it, so an unkeyed hash would
//! let a reader test guesses of the ip or device_id, as a plain-hash mask would.

use hmac::Mac;

use super::HmacSha256;
use crate::domain::file_line::Fingerprint;

/// Digests lines with one version of the user key.
#[derive(Clone)]
pub struct LineKey(HmacSha256);

impl LineKey {
    pub(super) fn new(state: HmacSha256) -> Self {
        Self(state)
    }

    /// The fingerprint of an input whose first non-empty line is `first_line`.
    pub fn fingerprint(&self, first_line: &[u8]) -> Fingerprint {
        let mut mac = self.0.clone();
        mac.update(b"fingerprint\0");
        mac.update(first_line);
        let mut source = [0u8; 16];
        source.copy_from_slice(&mac.finalize().into_bytes()[..16]);
        source
    }

    /// The key check value `UserKey::key_check` stores, of the user-hash key's part.
    pub(super) fn key_check(&self, users: &[u8; 32]) -> [u8; 32] {
        let mut mac = self.0.clone();
        mac.update(b"key-check\0");
        mac.update(users);
        mac.finalize().into_bytes().into()
    }

    /// An empty digest of a range of lines.
    pub fn range(&self) -> LinesDigest {
        let mut mac = self.0.clone();
        mac.update(b"range\0");
        LinesDigest(mac)
    }
}

/// A range's lines in order, each as number and length (8 bytes big-endian each) followed by its
/// bytes: unambiguous however the lines are cut.
pub struct LinesDigest(HmacSha256);

impl LinesDigest {
    pub fn add(&mut self, number: u64, line: &[u8]) {
        self.0.update(&number.to_be_bytes());
        self.0.update(&(line.len() as u64).to_be_bytes());
        self.0.update(line);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::{DataKey, UserKey, USER_KEY_LEN};

    fn key(byte: u8) -> LineKey {
        UserKey::new(&DataKey::from_plaintext(1, vec![byte; USER_KEY_LEN]).unwrap())
            .unwrap()
            .line_key()
            .clone()
    }

    #[test]
    fn digest_binds_numbers_and_boundaries() {
        let digest = |lines: &[(u64, &[u8])]| {
            let mut d = key(1).range();
            for (n, l) in lines {
                d.add(*n, l);
            }
            d.finish()
        };
        let base = digest(&[(1, b"ab"), (2, b"c")]);
        assert_eq!(base, digest(&[(1, b"ab"), (2, b"c")]));
        assert_ne!(base, digest(&[(1, b"a"), (2, b"bc")]));
        assert_ne!(base, digest(&[(1, b"ab"), (3, b"c")]));
    }

    #[test]
    fn fingerprints_are_keyed() {
        use sha2::Digest;
        let line = br#"{"ip": "10.0.0.1"}"#;
        assert_eq!(key(1).fingerprint(line), key(1).fingerprint(line));
        assert_ne!(key(1).fingerprint(line), key(2).fingerprint(line));
        assert_ne!(
            key(1).fingerprint(line).as_slice(),
            &sha2::Sha256::digest(line)[..16]
        );
    }
}
