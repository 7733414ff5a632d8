//! The analysts' mask: HMAC-SHA256 under a per-field key, over the canonical value, in lowercase
//! hex. Equal values give equal masks for everyone who shares the mask key; without the key a mask
//! cannot be brute-forced even though ips and SSN-shaped device ids are small spaces.

use hmac::Mac;

use super::{derive_subkey, hmac_state, DataKey, HmacSha256};
use crate::domain::PiiField;

/// Computes masks with one version of the mask key.
pub struct Masker {
    version: i32,
    ip: HmacSha256,
    device_id: HmacSha256,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Masker")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Masker {
    pub fn new(key: &DataKey) -> Self {
        let field_state = |field: PiiField| {
            let subkey = derive_subkey(key.material(), &format!("etl/mask/v1/{}", field.as_str()));
            hmac_state(subkey.as_slice())
        };
        Self {
            version: key.version(),
            ip: field_state(PiiField::Ip),
            device_id: field_state(PiiField::DeviceId),
        }
    }

    /// The mask key version, stored beside every mask.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The mask of a canonical value: 64 lowercase hex characters.
    pub fn mask(&self, field: PiiField, canonical: &str) -> String {
        self.digest(field, canonical).hex().as_str().to_owned()
    }

    /// The mask as its 32-byte digest: what the pipeline keeps, compares and hashes.
    pub fn digest(&self, field: PiiField, canonical: &str) -> MaskDigest {
        let mut mac = match field {
            PiiField::Ip => self.ip.clone(),
            PiiField::DeviceId => self.device_id.clone(),
        };
        mac.update(canonical.as_bytes());
        MaskDigest(mac.finalize().into_bytes().into())
    }
}

/// A pseudonymisation domain's masks, under the domain's own key: of ip and device_id as
/// [`Masker`] makes them, and of the user id, which a domain's rows carry instead of the id so
/// that two domains' rows cannot be joined on it.
pub struct DomainMasker {
    name: String,
    masker: Masker,
    user_id: HmacSha256,
}

impl std::fmt::Debug for DomainMasker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DomainMasker")
            .field("name", &self.name)
            .field("version", &self.masker.version)
            .finish_non_exhaustive()
    }
}

impl DomainMasker {
    pub fn new(name: String, key: &DataKey) -> Self {
        let subkey = derive_subkey(key.material(), "etl/domain/v1/user_id");
        Self {
            name,
            masker: Masker::new(key),
            user_id: hmac_state(subkey.as_slice()),
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The domain key's version, stored beside its masks.
    pub fn version(&self) -> i32 {
        self.masker.version
    }

    /// The domain's mask of a canonical value.
    pub fn digest(&self, field: PiiField, canonical: &str) -> MaskDigest {
        self.masker.digest(field, canonical)
    }

    /// The domain's mask of a user id.
    pub fn user_mask(&self, user_id: &str) -> MaskHex {
        let mut mac = self.user_id.clone();
        mac.update(user_id.as_bytes());
        MaskDigest(mac.finalize().into_bytes().into()).hex()
    }
}

/// A domain's maskers: the active key version's, and the pending one's from `etl domains rotate`
/// until `etl domains remask` makes it active.
#[derive(Debug)]
pub struct DomainMaskers {
    pub active: DomainMasker,
    pub pending: Option<DomainMasker>,
}

impl DomainMaskers {
    pub fn name(&self) -> &str {
        self.active.name()
    }

    /// Every key version a row of the domain is masked under: the active one first.
    pub fn each(&self) -> impl Iterator<Item = &DomainMasker> {
        std::iter::once(&self.active).chain(&self.pending)
    }
}

/// The HMAC-SHA256 digest behind a mask. It is uniformly distributed, so its first eight bytes
/// are all a hash table needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaskDigest([u8; 32]);

impl MaskDigest {
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The stored form: lowercase hex, in a stack buffer.
    pub fn hex(&self) -> MaskHex {
        let mut text = [0u8; 64];
        // 64 bytes hold the 32-byte digest exactly, so the length check cannot fail.
        let _ = hex::encode_to_slice(self.0, &mut text);
        MaskHex(text)
    }
}

impl std::hash::Hash for MaskDigest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        let mut first = [0u8; 8];
        first.copy_from_slice(&self.0[..8]);
        state.write_u64(u64::from_le_bytes(first));
    }
}

impl std::fmt::Debug for MaskDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.hex().as_str())
    }
}

/// A mask as 64 lowercase hex characters, without a heap allocation.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct MaskHex([u8; 64]);

impl MaskHex {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl std::fmt::Debug for MaskHex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KEY_LEN;

    fn masker(byte: u8) -> Masker {
        Masker::new(&DataKey::from_plaintext(1, vec![byte; KEY_LEN]).unwrap())
    }

    #[test]
    fn same_value_same_mask_across_instances() {
        let a = masker(7).mask(PiiField::Ip, "10.0.0.1");
        let b = masker(7).mask(PiiField::Ip, "10.0.0.1");
        assert_eq!(a, b);
        assert_eq!(a.len(), 64);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
    }

    #[test]
    fn fields_and_keys_are_separated() {
        let m = masker(7);
        assert_ne!(m.mask(PiiField::Ip, "1"), m.mask(PiiField::DeviceId, "1"));
        assert_ne!(
            m.mask(PiiField::Ip, "10.0.0.1"),
            m.mask(PiiField::Ip, "10.0.0.2")
        );
        assert_ne!(
            m.mask(PiiField::Ip, "10.0.0.1"),
            masker(8).mask(PiiField::Ip, "10.0.0.1")
        );
    }

    #[test]
    fn hex_is_the_lowercase_digest() {
        let m = masker(7);
        let digest = m.digest(PiiField::DeviceId, "123-45-6789");
        assert_eq!(digest.hex().as_str(), hex::encode(digest.0));
        assert_eq!(
            m.mask(PiiField::DeviceId, "123-45-6789"),
            digest.hex().as_str()
        );
    }
}
