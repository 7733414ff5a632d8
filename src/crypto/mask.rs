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
        let mut mac = match field {
            PiiField::Ip => self.ip.clone(),
            PiiField::DeviceId => self.device_id.clone(),
        };
        mac.update(canonical.as_bytes());
        // Into a stack buffer first: `hex::encode` builds the String a char at a time, which was
        // a tenth of the transform's time.
        let mut text = [0u8; 64];
        let digest = mac.finalize().into_bytes();
        match hex::encode_to_slice(digest, &mut text) {
            Ok(()) => String::from_utf8_lossy(&text).into_owned(),
            Err(_) => hex::encode(digest),
        }
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
}
