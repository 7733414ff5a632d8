//! Verifying the audit log's hash chain.
//!
//! Row `n` stores `prev_hash` (row `n-1`'s `row_hash`; 32 zero bytes for row 1) and
//! `row_hash = SHA-256(prev_hash || payload)`, where the payload encodes the row's fields
//! ([`encode_payload`], the same encoding as the migration's `recovery.audit_payload`, built
//! here from the raw columns so that a replaced database function cannot hide a change). Ids
//! are contiguous from 1. So a changed row no longer
//! matches its hash, a removed row leaves a gap, and a row inserted or re-hashed out of order
//! breaks the link to the next one. Only rewriting every later row escapes these checks, and
//! an anchored head (`etl audit head`, kept elsewhere) catches that.

use sha2::{Digest, Sha256};

/// The chain's starting link.
pub const GENESIS: [u8; 32] = [0; 32];

/// The payload of a row: each field as its length (4 bytes, big-endian) and its UTF-8 bytes,
/// `0xffffffff` for NULL.
pub fn encode_payload(fields: &[Option<&str>]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(fields.len() * 16);
    for field in fields {
        match field {
            Some(text) => {
                let len = u32::try_from(text.len()).unwrap_or(u32::MAX);
                payload.extend_from_slice(&len.to_be_bytes());
                payload.extend_from_slice(text.as_bytes());
            }
            None => payload.extend_from_slice(&[0xff; 4]),
        }
    }
    payload
}

/// One row as the verifier reads it.
pub struct ChainRow<'a> {
    pub id: i64,
    pub prev_hash: &'a [u8],
    pub row_hash: &'a [u8],
    pub payload: &'a [u8],
}

/// The first place the chain does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainBreak {
    #[error("row {id} is missing: rows were removed (the next row present is {next})")]
    Missing { id: i64, next: i64 },
    #[error(
        "row {id} does not link to the row before it: it was inserted or re-hashed out of order"
    )]
    Unlinked { id: i64 },
    #[error("row {id} does not match its hash: it was changed after it was written")]
    Changed { id: i64 },
}

impl ChainBreak {
    pub fn id(&self) -> i64 {
        match self {
            Self::Missing { id, .. } | Self::Unlinked { id } | Self::Changed { id } => *id,
        }
    }
}

/// A chain head as `etl audit head` prints it: `ID:HASH`, the hash in 64 hex characters.
pub fn parse_head(text: &str) -> Option<(i64, Vec<u8>)> {
    let (id, hash) = text.split_once(':')?;
    let id = id.parse().ok()?;
    let hash = hex::decode(hash)
        .ok()
        .filter(|hash| hash.len() == GENESIS.len())?;
    Some((id, hash))
}

/// Checks rows pushed in id order; remembers the first break and the head.
pub struct ChainVerifier {
    last_id: i64,
    last_hash: Vec<u8>,
    rows: u64,
    first_break: Option<ChainBreak>,
    /// Heads taken earlier, by row id (two of one id must both hold), each `true` once its row
    /// was seen with its hash.
    anchors: std::collections::BTreeMap<i64, Vec<(Vec<u8>, bool)>>,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self {
            last_id: 0,
            last_hash: GENESIS.to_vec(),
            rows: 0,
            first_break: None,
            anchors: std::collections::BTreeMap::new(),
        }
    }
}

impl ChainVerifier {
    /// Also require that each row `id` has hash `hash` (heads taken earlier). The head of an
    /// empty log (id 0, the genesis link) holds for any chain.
    pub fn with_anchors(anchors: impl IntoIterator<Item = (i64, Vec<u8>)>) -> Self {
        Self {
            anchors: anchors
                .into_iter()
                .filter(|(id, hash)| !(*id == 0 && hash.as_slice() == GENESIS))
                .fold(
                    std::collections::BTreeMap::new(),
                    |mut by_id, (id, hash)| {
                        by_id.entry(id).or_insert_with(Vec::new).push((hash, false));
                        by_id
                    },
                ),
            ..Self::default()
        }
    }

    pub fn push(&mut self, row: &ChainRow<'_>) {
        self.rows += 1;
        if self.first_break.is_none() {
            self.first_break = self.check(row);
        }
        for (hash, held) in self.anchors.get_mut(&row.id).into_iter().flatten() {
            *held = hash.as_slice() == row.row_hash;
        }
        self.last_id = row.id;
        self.last_hash = row.row_hash.to_vec();
    }

    fn check(&self, row: &ChainRow<'_>) -> Option<ChainBreak> {
        let expected_id = self.last_id + 1;
        if row.id != expected_id {
            return Some(ChainBreak::Missing {
                id: expected_id,
                next: row.id,
            });
        }
        if row.prev_hash != self.last_hash.as_slice() {
            return Some(ChainBreak::Unlinked { id: row.id });
        }
        let computed = Sha256::new()
            .chain_update(row.prev_hash)
            .chain_update(row.payload)
            .finalize();
        (computed.as_slice() != row.row_hash).then_some(ChainBreak::Changed { id: row.id })
    }

    /// The first break, if any.
    pub fn first_break(&self) -> Option<&ChainBreak> {
        self.first_break.as_ref()
    }

    /// The first anchor not found in the chain with its hash: rows up to it were removed or
    /// rewritten. `None` when every anchor holds.
    pub fn first_broken_anchor(&self) -> Option<i64> {
        self.anchors
            .iter()
            .find(|(_, heads)| heads.iter().any(|(_, held)| !held))
            .map(|(id, _)| *id)
    }

    pub fn anchors(&self) -> usize {
        self.anchors.values().map(Vec::len).sum()
    }

    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// The newest row's id and hash (0 and the genesis link for an empty log).
    pub fn head(&self) -> (i64, &[u8]) {
        (self.last_id, &self.last_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// id, prev_hash, row_hash, payload
    type Row = (i64, Vec<u8>, Vec<u8>, Vec<u8>);

    fn chain(payloads: &[&str]) -> Vec<Row> {
        let mut prev = GENESIS.to_vec();
        let mut rows = Vec::new();
        for (i, payload) in payloads.iter().enumerate() {
            let hash = Sha256::new()
                .chain_update(&prev)
                .chain_update(payload.as_bytes())
                .finalize()
                .to_vec();
            rows.push((
                i as i64 + 1,
                prev.clone(),
                hash.clone(),
                payload.as_bytes().to_vec(),
            ));
            prev = hash;
        }
        rows
    }

    fn verify(rows: &[Row]) -> ChainVerifier {
        let mut verifier = ChainVerifier::default();
        for (id, prev, hash, payload) in rows {
            verifier.push(&ChainRow {
                id: *id,
                prev_hash: prev,
                row_hash: hash,
                payload,
            });
        }
        verifier
    }

    #[test]
    fn an_intact_chain_holds() {
        let rows = chain(&["a", "b", "c"]);
        let verifier = verify(&rows);
        assert_eq!(verifier.first_break(), None);
        assert_eq!(verifier.head(), (3, rows[2].2.as_slice()));
        assert_eq!(verify(&[]).head(), (0, &GENESIS[..]));
    }

    #[test]
    fn changes_removals_and_reordering_are_named() {
        let rows = chain(&["a", "b", "c", "d"]);
        let mut changed = rows.clone();
        changed[1].3 = b"B".to_vec();
        assert_eq!(
            verify(&changed).first_break(),
            Some(&ChainBreak::Changed { id: 2 })
        );

        let removed: Vec<_> = rows.iter().filter(|r| r.0 != 3).cloned().collect();
        assert_eq!(
            verify(&removed).first_break(),
            Some(&ChainBreak::Missing { id: 3, next: 4 })
        );
        assert_eq!(
            verify(&rows[1..]).first_break(),
            Some(&ChainBreak::Missing { id: 1, next: 2 })
        );

        // Row 3 rewritten and re-hashed: row 4 no longer links to it.
        let mut rehashed = rows.clone();
        rehashed[2].3 = b"C".to_vec();
        rehashed[2].2 = Sha256::new()
            .chain_update(&rehashed[2].1)
            .chain_update(b"C")
            .finalize()
            .to_vec();
        assert_eq!(
            verify(&rehashed).first_break(),
            Some(&ChainBreak::Unlinked { id: 4 })
        );
    }

    #[test]
    fn anchors_catch_a_rewritten_tail() {
        let rows = chain(&["a", "b", "c"]);
        let anchors = [(2, rows[1].2.clone()), (3, rows[2].2.clone())];
        let broken = |rows: &[Row]| {
            let mut verifier = ChainVerifier::with_anchors(anchors.clone());
            for (id, prev, hash, payload) in rows {
                verifier.push(&ChainRow {
                    id: *id,
                    prev_hash: prev,
                    row_hash: hash,
                    payload,
                });
            }
            verifier.first_broken_anchor()
        };
        assert_eq!(broken(&rows), None);
        assert_eq!(broken(&chain(&["a", "b", "x"])), Some(3), "rewritten tail");
        assert_eq!(
            broken(&chain(&["a", "y", "c"])),
            Some(2),
            "rewritten middle"
        );
        assert_eq!(broken(&rows[..2]), Some(3), "truncated tail");
        // Two anchors of one row that disagree: one of them does not hold.
        let mut conflicting = anchors.to_vec();
        conflicting.push((3, rows[0].2.clone()));
        let mut verifier = ChainVerifier::with_anchors(conflicting);
        for (id, prev, hash, payload) in &rows {
            verifier.push(&ChainRow {
                id: *id,
                prev_hash: prev,
                row_hash: hash,
                payload,
            });
        }
        assert_eq!(verifier.first_broken_anchor(), Some(3));
        let genesis = ChainVerifier::with_anchors([(0, GENESIS.to_vec())]);
        assert_eq!(genesis.first_broken_anchor(), None);
        assert_eq!(genesis.anchors(), 0);
    }

    #[test]
    fn heads_parse_as_audit_head_prints_them() {
        let hash = "ab".repeat(32);
        assert_eq!(
            parse_head(&format!("12:{hash}")),
            Some((12, vec![0xab; 32]))
        );
        assert_eq!(parse_head("12:abcd"), None);
        assert_eq!(parse_head(&format!("x:{hash}")), None);
    }

    #[test]
    fn payloads_are_length_prefixed_and_mark_null() {
        assert_eq!(
            encode_payload(&[Some("ab"), None, Some("")]),
            [&[0, 0, 0, 2][..], b"ab", &[0xff; 4], &[0, 0, 0, 0]].concat()
        );
    }
}
