//! Message → validated event → masked row, sealed vault entries; or → sealed quarantine entry.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use foldhash::fast::RandomState;

use super::batch::{
    Claim, ClaimKind, DomainWrite, LineRange, LoginRow, QuarantineRow, VaultEntry, WriteBatch,
};
use super::vault_state::{Forgotten, VaultState};
use crate::crypto::{
    BatchSealer, DomainMaskers, Masker, QuarantineSealer, SealError, Sealer, UserHash, UserKeys,
};
use crate::domain::Message;
use crate::domain::{create_date, sent_at, user_id_of, IpPrefix, LoginEvent, PiiField, ReasonCode};

/// Why a batch could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    #[error(transparent)]
    Seal(#[from] SealError),
    #[error("user key version {0}, whose line key claims this input's lines, is not loaded")]
    NoLineKey(i32),
}

/// Holds the unwrapped keys' derived states for the life of the process.
#[derive(Debug)]
pub struct Transformer {
    masker: Masker,
    /// In name order (bytes), as `etl.domain_key_versions()` lists them.
    domains: Vec<DomainMaskers>,
    /// Every stored user key version: the suppression list holds hashes under the version that
    /// was newest when each user was forgotten, and backfill claims are keyed by it.
    users: UserKeys,
    sealer: Sealer,
    /// Only the public half: ingest seals quarantined bodies and cannot open them.
    quarantine: QuarantineSealer,
}

impl Transformer {
    pub fn new(
        masker: Masker,
        users: UserKeys,
        sealer: Sealer,
        quarantine: QuarantineSealer,
    ) -> Self {
        Self {
            masker,
            domains: Vec::new(),
            users,
            sealer,
            quarantine,
        }
    }

    /// Also masks every row under each domain's key (given in name order).
    pub fn with_domains(mut self, domains: Vec<DomainMaskers>) -> Self {
        self.domains = domains;
        self
    }

    /// The domains and their key versions as `etl.domain_key_versions()` states them.
    pub fn domain_key_versions(&self) -> String {
        super::batch::domain_key_versions(self.domains.iter().map(|d| {
            (
                d.name(),
                d.active.version(),
                d.pending.as_ref().map(|p| p.version()),
            )
        }))
    }

    /// The maskers of the active mask key version.
    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    /// The user key versions: of user hashes and backfilled lines' digests.
    pub fn user_keys(&self) -> &UserKeys {
        &self.users
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// What quarantined bodies are sealed to.
    pub fn quarantine_sealer(&self) -> &QuarantineSealer {
        &self.quarantine
    }

    /// Builds the write batch of a set of messages, claimed as `kind` says. A message id listed
    /// twice is kept once. Values the vault is known to hold are masked but not sealed again;
    /// messages of forgotten users are only claimed. Replayed messages still invalid stay in
    /// quarantine, unclaimed. With `ip_prefix`, each row also carries its ip's network.
    pub fn prepare(
        &self,
        messages: &[Message],
        kind: ClaimKind,
        now: DateTime<Utc>,
        vault: &VaultState,
        ip_prefix: Option<IpPrefix>,
    ) -> Result<WriteBatch, PrepareError> {
        let (epoch, forgotten) = vault.forgotten();
        let mut batch = self.empty_batch(messages, kind)?;
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
                Ok(event) if self.is_forgotten(&forgotten, &event.user_id) => {
                    batch.forgotten.push(message.id.clone());
                }
                Ok(event) => {
                    // The value is copied only when it may need sealing: most repeat.
                    let mut mask = |field: PiiField, canonical: &str| {
                        let digest = self.masker.digest(field, canonical);
                        if in_batch.insert((field, digest)) {
                            candidates.push((field, digest, canonical.to_owned()));
                        }
                        digest.hex()
                    };
                    let ip = event.ip.canonical();
                    let masked_ip = mask(PiiField::Ip, &ip);
                    let masked_device_id = mask(PiiField::DeviceId, event.device_id.canonical());
                    let domain_masks = self
                        .domains
                        .iter()
                        .flat_map(DomainMaskers::each)
                        .map(|d| {
                            [
                                d.digest(PiiField::Ip, &ip).hex(),
                                d.digest(PiiField::DeviceId, event.device_id.canonical())
                                    .hex(),
                                d.user_mask(&event.user_id),
                            ]
                        })
                        .collect();
                    // Domains find a person's rows for erasure by this hash, never by the id.
                    let user_hash = (!self.domains.is_empty())
                        .then(|| self.users.newest().user_hash(&event.user_id));
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
                        ip_network: ip_prefix.map(|prefix| prefix.network(&event.ip)),
                        domain_masks,
                        user_hash,
                    });
                }
                Err(reason) => {
                    let BodyUser::Kept(user_hash) = self.body_user(&message.body, &forgotten)
                    else {
                        batch.forgotten.push(message.id.clone());
                        continue;
                    };
                    let sealer = match &mut quarantine {
                        Some(sealer) => sealer,
                        None => quarantine.insert(self.quarantine.batch()?),
                    };
                    quarantine_into(
                        &mut batch,
                        sealer,
                        message,
                        reason.code(),
                        reason.to_string(),
                        user_hash,
                    )?;
                }
            }
        }
        // One short lock for the lookups; the writers' hashing and sealing run in parallel.
        {
            let known = vault.view();
            candidates.retain(|(field, digest, _)| !known.contains(*field, *digest));
            // Both must be of one epoch, or the write finds the batch stale.
            batch.vault_epoch = epoch.filter(|e| known.epoch() == Some(*e));
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

    /// A batch that quarantines `message` whatever its content (unless its user is forgotten):
    /// for a message the database rejects, or one that failed too many times. `detail` must
    /// hold no personal data.
    pub fn prepare_quarantine(
        &self,
        message: &Message,
        kind: ClaimKind,
        reason: ReasonCode,
        detail: String,
        vault: &VaultState,
    ) -> Result<WriteBatch, PrepareError> {
        let (epoch, forgotten) = vault.forgotten();
        let mut batch = self.empty_batch(std::slice::from_ref(message), kind)?;
        batch.vault_epoch = epoch;
        let BodyUser::Kept(user_hash) = self.body_user(&message.body, &forgotten) else {
            batch.forgotten.push(message.id.clone());
            return Ok(batch);
        };
        quarantine_into(
            &mut batch,
            &self.quarantine.batch()?,
            message,
            reason,
            detail,
            user_hash,
        )?;
        Ok(batch)
    }

    /// Whose a body going to quarantine is: a forgotten user's (dropped instead), or kept with
    /// the keyed hash of its user id under the newest user key, when it has one.
    fn body_user(&self, body: &str, forgotten: &Forgotten) -> BodyUser {
        match user_id_of(body) {
            Some(id) if self.is_forgotten(forgotten, &id) => BodyUser::Forgotten,
            user_id => BodyUser::Kept(user_id.map(|id| self.users.newest().user_hash(&id))),
        }
    }

    /// Hashed only when someone is forgotten: most runs never pay for it. Under every stored
    /// user key version: the list keeps each hash under the version it was made with.
    fn is_forgotten(&self, forgotten: &Forgotten, user_id: &str) -> bool {
        !forgotten.is_empty()
            && self
                .users
                .all()
                .any(|key| forgotten.contains(&key.user_hash(user_id)))
    }

    /// A batch of these messages with nothing in it yet: the key versions and the claim.
    fn empty_batch(
        &self,
        messages: &[Message],
        kind: ClaimKind,
    ) -> Result<WriteBatch, PrepareError> {
        Ok(WriteBatch {
            received: messages.len(),
            mask_key_version: self.masker.version(),
            vault_key_version: self.sealer.version(),
            quarantine_key_version: self.quarantine.version(),
            user_key_version: self.users.newest().version(),
            domains: self
                .domains
                .iter()
                .map(|d| DomainWrite {
                    name: d.name().to_owned(),
                    active: d.active.version(),
                    pending: d.pending.as_ref().map(|p| p.version()),
                })
                .collect(),
            claim: match kind {
                ClaimKind::MessageIds => Claim::MessageIds,
                ClaimKind::Replay => Claim::Replay,
                ClaimKind::FileLines { line_key_version } => {
                    self.line_range(messages, line_key_version)?
                }
            },
            ..WriteBatch::default()
        })
    }

    /// The claim of lines of a file: their range (they come in line order) and the keyed digest
    /// of their content under the line key the input was fingerprinted with. The file source
    /// sets every message's line.
    fn line_range(
        &self,
        messages: &[Message],
        line_key_version: i32,
    ) -> Result<Claim, PrepareError> {
        debug_assert!(
            messages.iter().all(|m| m.line.is_some()),
            "a file batch whose messages have no line"
        );
        let Some(first) = messages.first().and_then(|m| m.line) else {
            return Ok(Claim::MessageIds);
        };
        let key = self
            .users
            .all()
            .find(|key| key.version() == line_key_version)
            .ok_or(PrepareError::NoLineKey(line_key_version))?;
        let mut digest = key.line_key().range();
        let mut last = first.number;
        for message in messages {
            if let Some(line) = message.line {
                digest.add(line.number, message.body.as_bytes());
                last = line.number;
            }
        }
        let number = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Ok(Claim::FileLines(LineRange {
            source: first.source,
            first: number(first.number),
            last: number(last),
            digest: digest.finish(),
        }))
    }
}

enum BodyUser {
    Forgotten,
    Kept(Option<UserHash>),
}

fn quarantine_into(
    batch: &mut WriteBatch,
    sealer: &BatchSealer,
    message: &Message,
    reason: ReasonCode,
    detail: String,
    user_hash: Option<UserHash>,
) -> Result<(), SealError> {
    let sealed = sealer.seal(&message.id, message.body.as_bytes())?;
    batch.quarantine.push(QuarantineRow {
        message_id: message.id.clone(),
        reason,
        detail,
        sent_at: sent_at(message.sent_timestamp.as_deref()),
        receive_count: message.receive_count,
        body_ciphertext: sealed,
        user_hash,
    });
    Ok(())
}
