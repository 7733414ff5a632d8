//! Message → validated event → masked row, sealed vault entries; or → sealed quarantine entry.

use std::collections::HashSet;

use chrono::{DateTime, Utc};

use crate::adapters::postgres::writer::WriteBatch;
use crate::adapters::sqs::ReceivedMessage;
use crate::crypto::{Masker, SealError, Sealer};
use crate::domain::{create_date, sent_at, LoginEvent, PiiField};

/// Holds the unwrapped keys' derived states for the life of the process.
#[derive(Debug)]
pub struct Transformer {
    masker: Masker,
    sealer: Sealer,
}

impl Transformer {
    pub fn new(masker: Masker, sealer: Sealer) -> Self {
        Self { masker, sealer }
    }

    pub fn masker(&self) -> &Masker {
        &self.masker
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// Builds the write batch of a set of messages. A message id listed twice is kept once.
    pub fn prepare(
        &self,
        messages: &[ReceivedMessage],
        now: DateTime<Utc>,
    ) -> Result<WriteBatch, SealError> {
        let mut batch = WriteBatch {
            mask_key_version: self.masker.version(),
            vault_key_version: self.sealer.version(),
            ..WriteBatch::default()
        };
        let mut seen_ids = HashSet::with_capacity(messages.len());
        let mut seen_masks = HashSet::with_capacity(messages.len() * 2);
        for message in messages {
            if !seen_ids.insert(message.message_id.as_str()) {
                continue;
            }
            match LoginEvent::parse(&message.body) {
                Ok(event) => {
                    let ip = event.ip.canonical();
                    let masked_ip =
                        self.seal_into(&mut batch, &mut seen_masks, PiiField::Ip, &ip)?;
                    let masked_device_id = self.seal_into(
                        &mut batch,
                        &mut seen_masks,
                        PiiField::DeviceId,
                        event.device_id.canonical(),
                    )?;
                    let rows = &mut batch.logins;
                    rows.message_id.push(message.message_id.clone());
                    rows.user_id.push(event.user_id);
                    rows.device_type.push(event.device_type);
                    rows.masked_ip.push(masked_ip);
                    rows.masked_device_id.push(masked_device_id);
                    rows.locale.push(event.locale);
                    rows.app_version.push(event.app_version.code());
                    rows.app_version_text.push(event.app_version_text);
                    rows.create_date
                        .push(create_date(message.sent_timestamp.as_deref(), now));
                }
                Err(reason) => {
                    self.quarantine_into(
                        &mut batch,
                        message,
                        reason.code().as_str(),
                        reason.to_string(),
                    )?;
                }
            }
        }
        Ok(batch)
    }

    /// A batch that quarantines `message` whatever its content: for a message the database
    /// rejects, or one that failed too many times. `detail` must hold no personal data.
    pub fn prepare_quarantine(
        &self,
        message: &ReceivedMessage,
        reason: &'static str,
        detail: String,
    ) -> Result<WriteBatch, SealError> {
        let mut batch = WriteBatch {
            mask_key_version: self.masker.version(),
            vault_key_version: self.sealer.version(),
            ..WriteBatch::default()
        };
        self.quarantine_into(&mut batch, message, reason, detail)?;
        Ok(batch)
    }

    fn quarantine_into(
        &self,
        batch: &mut WriteBatch,
        message: &ReceivedMessage,
        reason: &'static str,
        detail: String,
    ) -> Result<(), SealError> {
        let sealed = self
            .sealer
            .seal_body(&message.message_id, message.body.as_bytes())?;
        let rows = &mut batch.quarantine;
        rows.message_id.push(message.message_id.clone());
        rows.reason.push(reason);
        rows.detail.push(detail);
        rows.sent_at
            .push(sent_at(message.sent_timestamp.as_deref()));
        rows.receive_count.push(message.receive_count);
        rows.body_ciphertext.push(sealed);
        Ok(())
    }

    /// Masks a value, adds its vault entry once per batch, and returns the mask.
    fn seal_into(
        &self,
        batch: &mut WriteBatch,
        seen: &mut HashSet<(PiiField, String)>,
        field: PiiField,
        canonical: &str,
    ) -> Result<String, SealError> {
        let mask = self.masker.mask(field, canonical);
        if seen.insert((field, mask.clone())) {
            let ciphertext = self.sealer.seal_value(field, &mask, canonical)?;
            batch.vault.field.push(field.as_str());
            batch.vault.mask.push(mask.clone());
            batch.vault.ciphertext.push(ciphertext);
        }
        Ok(mask)
    }
}
