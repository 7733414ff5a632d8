//! The keys that open quarantined bodies (quarantine key pairs, and vault keys for bodies sealed
//! before the quarantine key existed), one cache entry per version.

use std::collections::HashMap;

use anyhow::Context;

use crate::adapters::kms::Kms;
use crate::adapters::postgres::{keyring, lifecycle};
use crate::crypto::{KeyPurpose, QuarantineOpener, Sealer};
use crate::domain::Message;

/// The keys that open quarantined bodies, each unwrapped once, when first needed.
pub struct QuarantineOpeners<'a> {
    kms: &'a Kms,
    stored: Vec<keyring::StoredKey>,
    quarantine: HashMap<i32, QuarantineOpener>,
    vault: HashMap<i32, Sealer>,
}

impl<'a> QuarantineOpeners<'a> {
    pub async fn new(pool: &sqlx::PgPool, kms: &'a Kms) -> anyhow::Result<Self> {
        Ok(Self {
            kms,
            stored: keyring::list(pool)
                .await
                .context("reading the keyring (the schema owner may)")?,
            quarantine: HashMap::new(),
            vault: HashMap::new(),
        })
    }

    pub async fn open(&mut self, row: &lifecycle::Quarantined) -> anyhow::Result<Message> {
        let purpose = KeyPurpose::parse(&row.key_purpose)
            .filter(|p| matches!(p, KeyPurpose::Quarantine | KeyPurpose::Vault))
            .with_context(|| format!("quarantined message {} has no key", row.message_id))?;
        let version = row.key_version;
        let missing = || {
            anyhow::anyhow!(
                "quarantined message {}: {} key version {version} is not in the keyring",
                row.message_id,
                purpose.as_str()
            )
        };
        let known = match purpose {
            KeyPurpose::Quarantine => self.quarantine.contains_key(&version),
            _ => self.vault.contains_key(&version),
        };
        if !known {
            let stored = self
                .stored
                .iter()
                .find(|k| k.purpose == purpose.as_str() && k.version == version)
                .ok_or_else(missing)?;
            let key = self
                .kms
                .unwrap_data_key(&stored.kms_key_id, purpose, version, &stored.wrapped_key)
                .await?;
            match purpose {
                KeyPurpose::Quarantine => {
                    self.quarantine.insert(version, QuarantineOpener::new(&key));
                }
                _ => {
                    self.vault.insert(version, Sealer::new(&key));
                }
            }
        }
        let body = match purpose {
            KeyPurpose::Quarantine => self
                .quarantine
                .get(&version)
                .ok_or_else(missing)?
                .open(&row.message_id, &row.body_ciphertext),
            _ => self
                .vault
                .get(&version)
                .ok_or_else(missing)?
                .open_body(&row.message_id, &row.body_ciphertext),
        }
        .map_err(|source| {
            anyhow::anyhow!(
                "quarantined body {} does not open: {source}",
                row.message_id
            )
        })?;
        Ok(Message {
            id: row.message_id.clone(),
            body: String::from_utf8_lossy(&body).into_owned(),
            sent_timestamp: row.sent_at.map(|t| t.timestamp_millis().to_string()),
            receive_count: row.receive_count,
            line: None,
        })
    }
}
