//! The keys that open quarantined bodies (quarantine key pairs, and vault keys for bodies sealed
//! before the quarantine key existed), one cache entry per version.

use std::time::Duration;

use anyhow::Context;

use super::cache::{KeyCache, Opener, StoredKeyRef};
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{keyring, lifecycle};
use crate::crypto::KeyPurpose;
use crate::domain::Message;

/// The keys that open quarantined bodies, each unwrapped once, when first needed.
pub struct QuarantineOpeners {
    stored: Vec<keyring::StoredKey>,
    cache: KeyCache,
}

/// A key job or a replay runs for as long as it takes: its keys stay for the run.
const FOR_THE_RUN: Duration = Duration::from_secs(24 * 3600);

impl QuarantineOpeners {
    pub async fn new(pool: &sqlx::PgPool, kms: &Kms) -> anyhow::Result<Self> {
        Ok(Self {
            stored: keyring::list(pool)
                .await
                .context("reading the keyring (the schema owner may)")?,
            cache: KeyCache::new(kms.clone(), FOR_THE_RUN),
        })
    }

    pub async fn open(&mut self, row: &lifecycle::Quarantined) -> anyhow::Result<Message> {
        let purpose = KeyPurpose::parse(&row.key_purpose)
            .filter(|p| matches!(p, KeyPurpose::Quarantine | KeyPurpose::Vault))
            .with_context(|| format!("quarantined message {} has no key", row.message_id))?;
        let version = row.key_version;
        let stored = self
            .stored
            .iter()
            .find(|k| k.purpose == purpose.as_str() && k.version == version)
            .with_context(|| {
                format!(
                    "quarantined message {}: {} key version {version} is not in the keyring",
                    row.message_id,
                    purpose.as_str()
                )
            })?;
        let opener = self
            .cache
            .opener(StoredKeyRef {
                purpose,
                version,
                kms_key_id: &stored.kms_key_id,
                wrapped_key: &stored.wrapped_key,
            })
            .await?;
        let body = match opener {
            Opener::Quarantine(opener) => opener.open(&row.message_id, &row.body_ciphertext),
            Opener::Vault(sealer) => sealer.open_body(&row.message_id, &row.body_ciphertext),
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
