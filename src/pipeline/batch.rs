//! The batch contract between sources, the pipeline and the sink: what one transaction writes
//! ([`WriteBatch`]), how it proves it is written once ([`Claim`], of the kind the source says,
//! [`ClaimKind`]), and how the write ended ([`Written`], [`WriteOutcome`]). Sources build
//! messages, the transformer builds batches, the PostgreSQL sink (`adapters::postgres::writer`)
//! writes them.

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};

use crate::crypto::{MaskDigest, MaskHex, UserHash};
use crate::domain::file_line::Fingerprint;
use crate::domain::{Network, PiiField, ReasonCode};

/// How the messages a source hands over prove they are written once. The source says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClaimKind {
    /// Queue messages (SQS, or the records of a Lambda event): each id is claimed.
    MessageIds,
    /// Consecutive lines of a file, in line order: their range is claimed, with a digest under
    /// the line key of the user key version that claimed the input's first lines.
    FileLines { line_key_version: i32 },
    /// Quarantined messages given another chance (`etl quarantine replay`).
    Replay,
}

/// Everything one batch writes.
#[derive(Default)]
pub struct WriteBatch {
    /// Messages the batch was prepared from, including copies of one id dropped as duplicates.
    pub received: usize,
    pub mask_key_version: i32,
    pub vault_key_version: i32,
    pub quarantine_key_version: i32,
    /// The user key version of the quarantined rows' user hashes.
    pub user_key_version: i32,
    /// The vault epoch whose known masks and suppression list the batch was prepared with;
    /// `None` when they were not of one epoch.
    pub vault_epoch: Option<i64>,
    pub claim: Claim,
    /// Entries not known to be in the vault already.
    pub vault: Vec<VaultEntry>,
    pub logins: Vec<LoginRow>,
    pub quarantine: Vec<QuarantineRow>,
    /// Messages of forgotten users: claimed, never written.
    pub forgotten: Vec<String>,
    /// The pseudonymisation domains each login row is also written to, in name order.
    pub domains: Vec<DomainWrite>,
}

impl WriteBatch {
    /// The domains the batch writes, as `etl.domain_key_versions()` states them.
    pub fn domain_key_versions(&self) -> String {
        domain_key_versions(
            self.domains
                .iter()
                .map(|d| (d.name.as_str(), d.active, d.pending)),
        )
    }
}

/// A domain a batch writes to, and the key versions of its masks: its rows carry masks under the
/// active version and, while another is pending (`etl domains rotate`), under that one too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainWrite {
    pub name: String,
    pub active: i32,
    pub pending: Option<i32>,
}

/// Domains and their key versions (in name order) as `etl.domain_key_versions()` states them:
/// `name:active` or `name:active>pending`, joined by commas. The one form ingest compares its
/// keys and its batches with.
pub fn domain_key_versions<'a>(
    domains: impl Iterator<Item = (&'a str, i32, Option<i32>)>,
) -> String {
    domains
        .map(|(name, version, pending)| match pending {
            Some(pending) => format!("{name}:{version}>{pending}"),
            None => format!("{name}:{version}"),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// How a batch proves it is written once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Claim {
    /// Each message id is claimed in `etl.processed_messages`.
    #[default]
    MessageIds,
    /// The batch's lines are claimed as one range of a file source.
    FileLines(LineRange),
    /// Quarantined messages written (or dropped as forgotten) by `etl quarantine replay`: each
    /// is claimed by deleting its quarantine row, and its claim in `etl.processed_messages`
    /// takes the new outcome.
    Replay,
}

/// Lines `first..=last` of the source with this fingerprint, and the digest of their content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LineRange {
    pub source: Fingerprint,
    pub first: i64,
    pub last: i64,
    pub digest: [u8; 32],
}

pub struct VaultEntry {
    pub field: PiiField,
    pub mask: MaskDigest,
    pub ciphertext: Vec<u8>,
}

pub struct LoginRow {
    pub message_id: String,
    pub user_id: String,
    pub device_type: String,
    pub masked_ip: MaskHex,
    pub masked_device_id: MaskHex,
    pub locale: Option<String>,
    pub app_version: i32,
    pub app_version_text: String,
    pub create_date: NaiveDate,
    /// The ip's network, where ingest is configured to write it (`--ip-prefix`).
    pub ip_network: Option<Network>,
    /// The masks of ip, device_id and user_id in each of the batch's domains, in the order of
    /// [`WriteBatch::domains`]: under the active version, then under the pending one if any.
    pub domain_masks: Vec<[MaskHex; 3]>,
    /// The keyed hash of the user id under the newest user key, where the batch has domains:
    /// erasure finds a person's domain rows by it.
    pub user_hash: Option<UserHash>,
}

pub struct QuarantineRow {
    pub message_id: String,
    pub reason: ReasonCode,
    pub detail: String,
    pub sent_at: Option<DateTime<Utc>>,
    pub receive_count: Option<i32>,
    pub body_ciphertext: Vec<u8>,
    /// The keyed hash of the body's user id, when it has one: erasure finds the row by it.
    pub user_hash: Option<UserHash>,
}

/// What a committed batch changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct WriteOutcome {
    pub written: u64,
    /// Newly quarantined messages by reason code.
    pub quarantined: BTreeMap<String, u64>,
    /// Messages already processed by an earlier delivery or run.
    pub duplicates_skipped: u64,
    /// Messages of forgotten users, dropped.
    pub forgotten_skipped: u64,
}

impl WriteOutcome {
    /// Adds another write's figures to these.
    pub fn add(&mut self, other: &Self) {
        self.written += other.written;
        for (reason, n) in &other.quarantined {
            *self.quarantined.entry(reason.clone()).or_default() += n;
        }
        self.duplicates_skipped += other.duplicates_skipped;
        self.forgotten_skipped += other.forgotten_skipped;
    }

    /// Messages quarantined, whatever the reason.
    pub fn quarantined_total(&self) -> u64 {
        self.quarantined.values().sum()
    }
}

/// How a write ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Written {
    Committed(WriteOutcome),
    /// Nothing committed: the vault epoch moved on since the batch was prepared (an erasure or a
    /// retention pass deleted vault entries, or forgot users). Prepare it again under `epoch`.
    Stale {
        epoch: i64,
    },
    /// Nothing committed: the batch's key versions are no longer the ones to seal with (a
    /// re-mask switched the mask key, or a rotation raised the lowest vault key version).
    /// Reload the keys and prepare it again.
    KeysChanged,
}
