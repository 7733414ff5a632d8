//! Sealing personal values into the vault, and quarantined bodies, with AES-256-GCM-SIV.
//!
//! Vault entries are deterministic: the nonce is a keyed PRF of (field, value), so the same value
//! always gives the same ciphertext and `ON CONFLICT DO NOTHING` keeps one row per value. This
//! leaks equality only, which the mask already reveals by design. GCM-SIV stays safe when a nonce
//! repeats with the same plaintext, which is exactly the deterministic case. The associated data
//! binds field, mask and key version, so a ciphertext copied into another row does not open.
//!
//! Stored layout of a ciphertext: `nonce (12 bytes) || AES-GCM-SIV ciphertext and tag`.

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM_SIV};
use hmac::Mac;
use zeroize::Zeroizing;

use super::{derive_subkey, hmac_state, DataKey, HmacSha256};
use crate::domain::PiiField;

const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const VAULT_AAD_LABEL: &[u8] = b"etl/vault/v1";
const QUARANTINE_AAD_LABEL: &[u8] = b"etl/quarantine/v1";

/// Why a ciphertext did not open. Deliberately carries no detail: AEAD failures must not say more.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("ciphertext is too short to hold a nonce and a tag")]
    Truncated,
    #[error("ciphertext does not open under this key, field, mask and key version")]
    Unauthentic,
    #[error("encryption failed")]
    Encrypt,
    #[error("decrypted vault value is not UTF-8 text")]
    NotText,
}

/// Seals and opens vault entries and quarantined bodies with one version of the vault key.
pub struct Sealer {
    version: i32,
    vault: LessSafeKey,
    nonce_prf: HmacSha256,
    quarantine: LessSafeKey,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Sealer {
    pub fn new(key: &DataKey) -> Self {
        let material = key.material();
        let cipher = |label: &str| {
            let subkey = derive_subkey(material, label);
            // A 32-byte key is exactly what AES-256-GCM-SIV takes, so this cannot fail.
            UnboundKey::new(&AES_256_GCM_SIV, subkey.as_slice())
                .map(LessSafeKey::new)
                .unwrap_or_else(|_| unreachable!("AES-256-GCM-SIV takes a 32-byte key"))
        };
        Self {
            version: key.version(),
            vault: cipher("etl/vault/enc/v1"),
            nonce_prf: hmac_state(derive_subkey(material, "etl/vault/nonce/v1").as_slice()),
            quarantine: cipher("etl/quarantine/enc/v1"),
        }
    }

    /// The vault key version, stored beside every ciphertext.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// Deterministic ciphertext of a canonical value for the vault row `(field, mask)`.
    pub fn seal_value(
        &self,
        field: PiiField,
        mask: &str,
        canonical: &str,
    ) -> Result<Vec<u8>, SealError> {
        let mut prf = self.nonce_prf.clone();
        prf.update(field.as_str().as_bytes());
        prf.update(&[0]);
        prf.update(canonical.as_bytes());
        let digest = prf.finalize().into_bytes();
        let mut nonce = [0u8; NONCE_LEN];
        nonce.copy_from_slice(&digest[..NONCE_LEN]);
        seal(
            &self.vault,
            nonce,
            &vault_aad(field, mask, self.version),
            canonical.as_bytes(),
        )
    }

    /// Opens a vault ciphertext; fails unless field, mask and key version are the ones it was sealed for.
    pub fn open_value(
        &self,
        field: PiiField,
        mask: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<String>, SealError> {
        let aad = vault_aad(field, mask, self.version);
        let plain = open(&self.vault, &aad, ciphertext)?;
        String::from_utf8(plain.to_vec())
            .map(Zeroizing::new)
            .map_err(|err| {
                let mut bytes = err.into_bytes();
                zeroize::Zeroize::zeroize(&mut bytes);
                SealError::NotText
            })
    }

    /// Randomised ciphertext of a quarantined body, bound to its message id: how bodies were
    /// sealed before the quarantine key pair, and how `etl keys reseal` moves such rows to a newer
    /// vault key.
    pub fn seal_body(&self, message_id: &str, body: &[u8]) -> Result<Vec<u8>, SealError> {
        use rand::RngCore;
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        seal(
            &self.quarantine,
            nonce,
            &quarantine_aad(message_id, self.version),
            body,
        )
    }

    /// Opens a quarantined body sealed under the vault key (rows written before the quarantine key
    /// pair existed).
    pub fn open_body(
        &self,
        message_id: &str,
        ciphertext: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, SealError> {
        open(
            &self.quarantine,
            &quarantine_aad(message_id, self.version),
            ciphertext,
        )
    }
}

/// `nonce || ciphertext || tag`, in one allocation.
fn seal(
    key: &LessSafeKey,
    nonce: [u8; NONCE_LEN],
    aad: &[u8],
    plaintext: &[u8],
) -> Result<Vec<u8>, SealError> {
    let mut sealed = Vec::with_capacity(NONCE_LEN + plaintext.len() + TAG_LEN);
    sealed.extend_from_slice(&nonce);
    sealed.extend_from_slice(plaintext);
    let tag = key
        .seal_in_place_separate_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut sealed[NONCE_LEN..],
        )
        .map_err(|_| SealError::Encrypt)?;
    sealed.extend_from_slice(tag.as_ref());
    Ok(sealed)
}

fn open(key: &LessSafeKey, aad: &[u8], ciphertext: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
    if ciphertext.len() < NONCE_LEN + TAG_LEN {
        return Err(SealError::Truncated);
    }
    let (nonce, sealed) = ciphertext.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Truncated)?;
    let mut buffer = Zeroizing::new(sealed.to_vec());
    let plain_len = key
        .open_in_place(nonce, Aad::from(aad), buffer.as_mut_slice())
        .map_err(|_| SealError::Unauthentic)?
        .len();
    buffer.truncate(plain_len);
    Ok(buffer)
}

/// `label 0 field 0 mask 0 version(big-endian)`: unambiguous because field and mask hold no NUL.
fn vault_aad(field: PiiField, mask: &str, version: i32) -> Vec<u8> {
    [
        VAULT_AAD_LABEL,
        &[0],
        field.as_str().as_bytes(),
        &[0],
        mask.as_bytes(),
        &[0],
        &version.to_be_bytes(),
    ]
    .concat()
}

fn quarantine_aad(message_id: &str, version: i32) -> Vec<u8> {
    [
        QUARANTINE_AAD_LABEL,
        &[0],
        &version.to_be_bytes(),
        &[0],
        message_id.as_bytes(),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::KEY_LEN;

    fn sealer(version: i32) -> Sealer {
        Sealer::new(&DataKey::from_plaintext(version, vec![9; KEY_LEN]).unwrap())
    }

    #[test]
    fn vault_seal_is_deterministic_and_opens() {
        let s = sealer(1);
        let a = s.seal_value(PiiField::Ip, "m1", "10.0.0.1").unwrap();
        assert_eq!(a, s.seal_value(PiiField::Ip, "m1", "10.0.0.1").unwrap());
        assert_ne!(a, s.seal_value(PiiField::Ip, "m2", "10.0.0.2").unwrap());
        assert_eq!(
            s.open_value(PiiField::Ip, "m1", &a).unwrap().as_str(),
            "10.0.0.1"
        );
    }

    #[test]
    fn vault_ciphertext_is_bound_to_its_row() {
        let s = sealer(1);
        let a = s.seal_value(PiiField::Ip, "m1", "10.0.0.1").unwrap();
        assert_eq!(
            s.open_value(PiiField::DeviceId, "m1", &a),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            s.open_value(PiiField::Ip, "m2", &a),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            sealer(2).open_value(PiiField::Ip, "m1", &a),
            Err(SealError::Unauthentic)
        );
        assert_eq!(
            s.open_value(PiiField::Ip, "m1", &a[..20]),
            Err(SealError::Truncated)
        );
    }

    #[test]
    fn output_is_byte_identical_to_the_reference_implementation() {
        use aes_gcm_siv::aead::{Aead, KeyInit, Payload};
        let sealed = sealer(1)
            .seal_value(PiiField::Ip, "m1", "10.0.0.1")
            .unwrap();
        let material = DataKey::from_plaintext(1, vec![9; KEY_LEN]).unwrap();
        let subkey = derive_subkey(material.material(), "etl/vault/enc/v1");
        let reference = aes_gcm_siv::Aes256GcmSiv::new(subkey.as_slice().into());
        let aad = vault_aad(PiiField::Ip, "m1", 1);
        let expected = reference
            .encrypt(
                sealed[..NONCE_LEN].into(),
                Payload {
                    msg: b"10.0.0.1",
                    aad: &aad,
                },
            )
            .unwrap();
        assert_eq!(&sealed[NONCE_LEN..], expected.as_slice());
    }

    #[test]
    fn quarantine_seal_is_randomised_and_bound_to_message() {
        let s = sealer(1);
        let a = s.seal_body("id-1", b"{oops").unwrap();
        assert_ne!(a, s.seal_body("id-1", b"{oops").unwrap());
        assert_eq!(s.open_body("id-1", &a).unwrap().as_slice(), b"{oops");
        assert_eq!(s.open_body("id-2", &a), Err(SealError::Unauthentic));
    }
}
