//! Identity of a line read by `etl ingest --from-file`.
//!
//! An input is known by its fingerprint, a keyed digest of its first non-empty line
//! (`crypto::LineKey`). A line's stable id is `file:<fingerprint hex>:<line number>`; a range of
//! lines is committed with the keyed digest of its content, so a replay can tell the same lines
//! from others.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_id_prefix_names_the_source() {
        let prefix = message_id_prefix([0xab; 16]);
        assert_eq!(prefix, format!("file:{}:", "ab".repeat(16)));
    }
}
