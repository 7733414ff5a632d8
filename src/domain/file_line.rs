//! Identity of a line read by `etl ingest --from-file`.
//!
//! An input is known by its fingerprint: the first 16 bytes of SHA-256 of its first non-empty
//! line. A line's stable id is `file:<fingerprint hex>:<line number>`; a range of lines is
//! committed with the digest of its content, so a replay can tell the same lines from others.

use sha2::{Digest, Sha256};

pub type Fingerprint = [u8; 16];

/// Where a message read from a file came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileLine {
    pub source: Fingerprint,
    /// 1-based, counting empty lines too, as editors do.
    pub number: u64,
}

/// `file:<fingerprint hex>:`, the part of the message id all lines of an input share; the line
/// number follows it.
pub fn message_id_prefix(source: Fingerprint) -> String {
    format!("file:{}:", hex::encode(source))
}

/// The fingerprint of an input whose first non-empty line is `first_line`.
pub fn fingerprint(first_line: &[u8]) -> Fingerprint {
    let mut source = [0u8; 16];
    source.copy_from_slice(&Sha256::digest(first_line)[..16]);
    source
}

/// SHA-256 over a range's lines in order, each as number and length (8 bytes big-endian each)
/// followed by its bytes: unambiguous however the lines are cut.
#[derive(Default)]
pub struct LinesDigest(Sha256);

impl LinesDigest {
    pub fn add(&mut self, number: u64, line: &[u8]) {
        self.0.update(number.to_be_bytes());
        self.0.update((line.len() as u64).to_be_bytes());
        self.0.update(line);
    }

    pub fn finish(self) -> [u8; 32] {
        self.0.finalize().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_binds_numbers_and_boundaries() {
        let digest = |lines: &[(u64, &[u8])]| {
            let mut d = LinesDigest::default();
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
    fn message_id_prefix_names_the_source() {
        let prefix = message_id_prefix(fingerprint(b"{}"));
        assert!(
            prefix.starts_with("file:") && prefix.ends_with(':'),
            "{prefix}"
        );
        assert_eq!(prefix.len(), "file:".len() + 32 + 1);
        assert_ne!(prefix, message_id_prefix(fingerprint(b"[]")));
    }
}
