//! The vault keys a key job opens and seals with, in the one per-version cache (`cache`).

use std::time::Duration;

use anyhow::Context;

use super::cache::{KeyCache, Opener, StoredKeyRef};
use crate::adapters::kms::Kms;
use crate::adapters::postgres::rekey::SealedEntry;
use crate::adapters::postgres::{keyring, DatabaseError};
use crate::crypto::{KeyPurpose, Sealer};
use crate::domain::PiiField;

/// The vault keys a job opens and seals with, each unwrapped once, when first needed.
pub struct VaultKeys {
    stored: Vec<keyring::StoredKey>,
    cache: KeyCache,
}

/// A key job runs for as long as it takes: its keys stay for the run.
const FOR_THE_RUN: Duration = Duration::from_secs(24 * 3600);

impl VaultKeys {
    pub async fn new(pool: &sqlx::PgPool, kms: &Kms) -> anyhow::Result<Self> {
        Ok(Self {
            stored: keyring::versions(pool, KeyPurpose::Vault)
                .await
                .map_err(DatabaseError::on(pool))
                .context("reading the vault keys")?,
            cache: KeyCache::new(kms.clone(), FOR_THE_RUN),
        })
    }

    /// The newest stored version.
    pub fn newest(&self) -> Option<i32> {
        self.stored.iter().map(|k| k.version).max()
    }

    /// Every stored version.
    pub fn versions(&self) -> Vec<i32> {
        self.stored.iter().map(|k| k.version).collect()
    }

    /// Unwraps every version in `versions` not unwrapped yet.
    pub async fn load(&mut self, versions: impl IntoIterator<Item = i32>) -> anyhow::Result<()> {
        for version in versions {
            let stored = self
                .stored
                .iter()
                .find(|k| k.version == version)
                .with_context(|| format!("vault key version {version} is not in the keyring"))?;
            self.cache
                .opener(StoredKeyRef {
                    purpose: KeyPurpose::Vault,
                    version,
                    kms_key_id: &stored.kms_key_id,
                    wrapped_key: &stored.wrapped_key,
                })
                .await?;
        }
        Ok(())
    }

    /// A loaded version's sealer.
    pub fn get(&self, version: i32) -> anyhow::Result<&Sealer> {
        match self.cache.get(KeyPurpose::Vault, version) {
            Some(Opener::Vault(sealer)) => Ok(sealer),
            _ => anyhow::bail!("vault key version {version} is not loaded"),
        }
    }

    /// An entry's canonical value, opened with the version it names.
    pub fn open(
        &self,
        entry: &SealedEntry,
    ) -> anyhow::Result<(PiiField, zeroize::Zeroizing<String>)> {
        let field = PiiField::parse(&entry.field)
            .with_context(|| format!("unknown vault field {:?}", entry.field))?;
        let mask = hex::encode(&entry.mask);
        let value = self
            .get(entry.vault_key_version)?
            .open_value(field, &mask, &entry.ciphertext)
            .map_err(|source| {
                anyhow::anyhow!("vault entry for mask {mask} does not open: {source}")
            })?;
        Ok((field, value))
    }
}
