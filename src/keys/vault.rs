//! The vault keys a key job opens and seals with, one cache entry per version.

use std::collections::HashMap;

use anyhow::Context;

use crate::adapters::kms::Kms;
use crate::adapters::postgres::rekey::SealedEntry;
use crate::adapters::postgres::{keyring, DatabaseError};
use crate::crypto::{KeyPurpose, Sealer};
use crate::domain::PiiField;

/// The vault keys a job opens and seals with, each unwrapped once, when first needed.
pub struct VaultKeys<'a> {
    kms: &'a Kms,
    stored: Vec<keyring::StoredKey>,
    sealers: HashMap<i32, Sealer>,
}

impl<'a> VaultKeys<'a> {
    pub async fn new(pool: &sqlx::PgPool, kms: &'a Kms) -> anyhow::Result<Self> {
        Ok(Self {
            kms,
            stored: keyring::versions(pool, KeyPurpose::Vault)
                .await
                .map_err(DatabaseError::on(pool))
                .context("reading the vault keys")?,
            sealers: HashMap::new(),
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
            if self.sealers.contains_key(&version) {
                continue;
            }
            let stored = self
                .stored
                .iter()
                .find(|k| k.version == version)
                .with_context(|| format!("vault key version {version} is not in the keyring"))?;
            let key = self
                .kms
                .unwrap_data_key(
                    &stored.kms_key_id,
                    KeyPurpose::Vault,
                    version,
                    &stored.wrapped_key,
                )
                .await?;
            self.sealers.insert(version, Sealer::new(&key));
        }
        Ok(())
    }

    /// A loaded version's sealer.
    pub fn get(&self, version: i32) -> anyhow::Result<&Sealer> {
        self.sealers
            .get(&version)
            .with_context(|| format!("vault key version {version} is not loaded"))
    }

    /// An entry's canonical value, opened with the version it names.
    pub fn open(
        &self,
        entry: &SealedEntry,
    ) -> anyhow::Result<(PiiField, zeroize::Zeroizing<String>)> {
        let field = field_of(&entry.field)?;
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

fn field_of(name: &str) -> anyhow::Result<PiiField> {
    [PiiField::Ip, PiiField::DeviceId]
        .into_iter()
        .find(|f| f.as_str() == name)
        .with_context(|| format!("unknown vault field {name:?}"))
}
