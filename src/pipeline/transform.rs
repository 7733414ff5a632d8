//! Message → validated event → masked row, sealed vault entries; or → sealed quarantine entry.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use foldhash::fast::RandomState;

use super::known_masks::KnownMasks;
use crate::adapters::postgres::writer::{
    Claim, LineRange, LoginRow, QuarantineRow, VaultEntry, WriteBatch,
};
use crate::crypto::{BatchSealer, Masker, QuarantineSealer, SealError, Sealer};
use crate::domain::Message;
use crate::domain::{create_date, sent_at, LoginEvent, PiiField};

/// Holds the unwrapped keys' derived states for the life of the process.
#[derive(Debug)]
pub struct Transformer {
    masker: Masker,
    sealer: Sealer,
    /// Only the public half: ingest seals quarantined bodies and cannot open them.
    quarantine: QuarantineSealer,
}

impl Transformer {
    pub fn new(masker: Masker, sealer: Sealer, quarantine: QuarantineSealer) -> Self {
        Self {
            masker,
            sealer,
            quarantine,
        }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Builds the write batch of a set of messages. A message id listed twice is kept once.
    /// Values in `known` (committed to the vault already) are masked but not sealed again.
    pub fn prepare(
        &self,
        messages: &[Message],
        now: DateTime<Utc>,
        known: &KnownMasks,
    ) -> Result<WriteBatch, SealError> {
        let mut batch = self.empty_batch(messages);
        batch.logins.reserve(messages.len());
        // Made at the batch's first rejected message: one encapsulation for all of them.
        let mut quarantine = None;
        let mut seen_ids =
            HashSet::with_capacity_and_hasher(messages.len(), RandomState::default());
        // Values new to this batch, to seal unless the vault is known to hold them already.
        let mut candidates = Vec::new();
        let mut in_batch =
            HashSet::with_capacity_and_hasher(messages.len() * 2, RandomState::default());
        for message in messages {
            if !seen_ids.insert(message.id.as_str()) {
                continue;
            }
            match LoginEvent::parse(&message.body) {
                Ok(event) => {
                    // The value is copied only when it may need sealing: most repeat.
                    let mut mask = |field: PiiField, canonical: &str| {
                        let digest = self.masker.digest(field, canonical);
                        if in_batch.insert((field, digest)) {
                            candidates.push((field, digest, canonical.to_owned()));
                        }
                        digest.hex()
                    };
                    let masked_ip = mask(PiiField::Ip, &event.ip.canonical());
                    let masked_device_id = mask(PiiField::DeviceId, event.device_id.canonical());
                    batch.logins.push(LoginRow {
                        message_id: message.id.clone(),
                        user_id: event.user_id,
                        device_type: event.device_type,
                        masked_ip,
                        masked_device_id,
                        locale: event.locale,
                        app_version: event.app_version.code(),
                        app_version_text: event.app_version_text,
                        create_date: create_date(message.sent_timestamp.as_deref(), now),
                    });
                }
                Err(reason) => {
                    let sealer = match &mut quarantine {
                        Some(sealer) => sealer,
                        None => quarantine.insert(self.quarantine.batch()?),
                    };
                    quarantine_into(
                        &mut batch,
                        sealer,
                        message,
                        reason.code().as_str(),
                        reason.to_string(),
                    )?;
                }
            }
        }
        // One short lock for the lookups; the writers' hashing and sealing run in parallel.
        {
            let known = known.view();
            candidates.retain(|(field, digest, _)| !known.contains(*field, *digest));
        }
        batch.vault.reserve(candidates.len());
        for (field, digest, canonical) in candidates {
            let ciphertext = self
                .sealer
                .seal_value(field, digest.hex().as_str(), &canonical)?;
            batch.vault.push(VaultEntry {
                field,
                mask: digest,
                ciphertext,
            });
        }
        Ok(batch)
    }

    /// A batch that quarantines `message` whatever its content: for a message the database
    /// rejects, or one that failed too many times. `detail` must hold no personal data.
    pub fn prepare_quarantine(
        &self,
        message: &Message,
        reason: &'static str,
        detail: String,
    ) -> Result<WriteBatch, SealError> {
        let mut batch = self.empty_batch(std::slice::from_ref(message));
        quarantine_into(
            &mut batch,
            &self.quarantine.batch()?,
            message,
            reason,
            detail,
        )?;
        Ok(batch)
    }

    /// A batch of these messages with nothing in it yet: the key versions and the claim.
    fn empty_batch(&self, messages: &[Message]) -> WriteBatch {
        WriteBatch {
            received: messages.len(),
            mask_key_version: self.masker.version(),
            vault_key_version: self.sealer.version(),
            quarantine_key_version: self.quarantine.version(),
            claim: self.claim_of(messages),
            ..WriteBatch::default()
        }
    }

    /// Messages from a file claim their line range (they come in line order); SQS messages their
    /// ids.
    fn claim_of(&self, messages: &[Message]) -> Claim {
        let Some(first) = messages.first().and_then(|m| m.line) else {
            return Claim::MessageIds;
        };
        let mut digest = self.masker.line_key().range();
        let mut last = first.number;
        for message in messages {
            if let Some(line) = message.line {
                digest.add(line.number, message.body.as_bytes());
                last = line.number;
            }
        }
        let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Claim::FileLines(LineRange {
            source: first.source,
            first: number(first.number),
            last: number(last),
            digest: digest.finish(),
        })
    }
}

fn quarantine_into(
    batch: &mut WriteBatch,
    sealer: &BatchSealer,
    message: &Message,
    reason: &'static str,
    detail: String,
) -> Result<(), SealError> {
    let sealed = sealer.seal(&message.id, message.body.as_bytes())?;
    batch.quarantine.push(QuarantineRow {
        message_id: message.id.clone(),
        reason,
        detail,
        sent_at: sent_at(message.sent_timestamp.as_deref()),
        receive_count: message.receive_count,
        body_ciphertext: sealed,
    });
    Ok(())
}
