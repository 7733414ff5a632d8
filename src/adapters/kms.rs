//! AWS KMS: generating and unwrapping the data keys.

use std::collections::HashMap;

use aws_sdk_kms::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_kms::primitives::Blob;
use aws_sdk_kms::types::DataKeySpec;

use crate::adapters::aws::unreached_cause;
use crate::crypto::{DataKey, KeyPurpose};

/// The application name bound into every encryption context.
pub const CONTEXT_APPLICATION: &str = "etl";

#[derive(Debug, thiserror::Error)]
pub enum KmsError {
    #[error(
        "KMS denied {operation}: this AWS identity needs kms:{operation} on the key, allowed for \
         the encryption context application=etl ({detail})"
    )]
    Denied {
        operation: &'static str,
        detail: String,
    },
    #[error(
        "KMS could not unwrap the data key: the wrapped key, the KMS key or the encryption context \
         (purpose, key_version) does not match what it was wrapped with ({detail})"
    )]
    InvalidCiphertext { detail: String },
    // The service's own message names the key again, and the call is named in the debug log:
    // the line stays short whatever the alias.
    #[error(
        "KMS key or alias {key} not found in this account and region (`aws kms list-aliases` \
         lists the aliases)"
    )]
    NotFound { key: String },
    #[error(
        "cannot reach KMS ({operation}): {cause}; check AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_KMS \
         and AWS_REGION, and that the endpoint is up"
    )]
    Unreachable {
        operation: &'static str,
        cause: String,
    },
    #[error("KMS refused {operation}: the key cannot be used now ({detail})")]
    KeyUnusable {
        operation: &'static str,
        detail: String,
    },
    #[error("KMS {operation} failed: {detail}")]
    Call {
        operation: &'static str,
        detail: String,
    },
    #[error(
        "refusing a keyring row wrapped under KMS key {found}: ETL_KMS_KEY_ID pins {pinned} (a \
         row planted in the keyring, or keys re-wrapped without changing ETL_KMS_KEY_ID)"
    )]
    NotPinned { found: String, pinned: String },
    #[error("KMS {operation} returned no {what}")]
    Incomplete {
        operation: &'static str,
        what: &'static str,
    },
    #[error("KMS returned a {purpose} data key of the wrong length")]
    KeyLength { purpose: &'static str },
}

/// A stored data key that did not unwrap: which one, and why. The one error of the one unwrap
/// path that ingest, `recover` and `quarantine show` share.
#[derive(Debug, thiserror::Error)]
#[error("cannot unwrap the {purpose} data key (version {version}) with KMS: {source}")]
pub struct UnwrapError {
    pub purpose: &'static str,
    pub version: i32,
    #[source]
    pub source: KmsError,
}

impl UnwrapError {
    /// Whether trying again may succeed: a call that failed for a reason other than a denial or
    /// a mismatched key.
    pub fn is_transient(&self) -> bool {
        self.source.is_transient()
    }
}

impl KmsError {
    /// Whether trying again may succeed: a call that failed for a reason other than a denial, a
    /// missing key or a mismatched key.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Call { .. } | Self::Unreachable { .. })
    }
}

/// A data key as KMS wrapped it, ready to store.
pub struct WrappedKey {
    /// The ARN of the KMS key that wrapped it (KMS resolves aliases and ids to it).
    pub kms_key_arn: String,
    pub blob: Vec<u8>,
}

impl WrappedKey {
    /// The key id and ciphertext of a KMS reply, both required.
    fn from_reply(
        operation: &'static str,
        key_id: Option<String>,
        blob: Option<Blob>,
    ) -> Result<Self, KmsError> {
        Ok(Self {
            kms_key_arn: key_id.ok_or(KmsError::Incomplete {
                operation,
                what: "key id",
            })?,
            blob: blob
                .ok_or(KmsError::Incomplete {
                    operation,
                    what: "ciphertext",
                })?
                .into_inner(),
        })
    }
}

#[derive(Clone, Debug)]
pub struct Kms {
    client: aws_sdk_kms::Client,
    /// The ARN of the one KMS key data keys may be wrapped under (`ETL_KMS_KEY_ID`), when set: a
    /// keyring row wrapped under another key is refused before KMS is asked.
    pinned: Option<std::sync::Arc<str>>,
}

/// The encryption context that binds a quarantine public key to KMS: its SHA-256 is in it, so
/// only a blob made by someone allowed to call KMS for this key decrypts under the context that
/// ingest computes from the key it reads.
fn public_key_context(version: i32, public_key: &[u8]) -> HashMap<String, String> {
    use sha2::{Digest, Sha256};
    HashMap::from([
        ("application".to_owned(), CONTEXT_APPLICATION.to_owned()),
        ("purpose".to_owned(), PUBLIC_KEY_PURPOSE.to_owned()),
        ("key_version".to_owned(), version.to_string()),
        (
            "public_key_sha256".to_owned(),
            hex::encode(Sha256::digest(public_key)),
        ),
    ])
}

/// The purpose in a public key attestation's context (not a data key's purpose).
pub const PUBLIC_KEY_PURPOSE: &str = "quarantine_public_key";

/// The encryption context of a data key: the application, the purpose and the version, never
/// personal data. Unwrapping must present the same context, so a blob moved to another purpose or
/// version does not unwrap.
pub fn encryption_context(purpose: KeyPurpose, version: i32) -> HashMap<String, String> {
    HashMap::from([
        ("application".to_owned(), CONTEXT_APPLICATION.to_owned()),
        ("purpose".to_owned(), purpose.as_str().to_owned()),
        ("key_version".to_owned(), version.to_string()),
    ])
}

/// The purpose in a pseudonymisation domain's mask key context (domain keys are not in
/// `keyring.data_keys`, whose purposes are [`KeyPurpose`]s).
pub const DOMAIN_MASK_PURPOSE: &str = "domain_mask";

/// The encryption context of a domain's mask key: a data key's, with the domain's name, so a blob
/// moved to another domain does not unwrap.
fn domain_context(domain: &str, version: i32) -> HashMap<String, String> {
    HashMap::from([
        ("application".to_owned(), CONTEXT_APPLICATION.to_owned()),
        ("purpose".to_owned(), DOMAIN_MASK_PURPOSE.to_owned()),
        ("domain".to_owned(), domain.to_owned()),
        ("key_version".to_owned(), version.to_string()),
    ])
}

impl Kms {
    pub fn new(config: &aws_config::SdkConfig) -> Self {
        Self {
            client: aws_sdk_kms::Client::new(config),
            pinned: None,
        }
    }

    /// Pins the KMS key (its ARN, as `describe_usable_key` returns it): only data keys wrapped
    /// under it are unwrapped.
    pub fn pinned_to(mut self, kms_key_arn: &str) -> Self {
        self.pinned = Some(kms_key_arn.into());
        self
    }

    /// Generates a fresh AES-256 data key under `kms_key_id` and returns only its wrapped form.
    pub async fn generate_data_key(
        &self,
        kms_key_id: &str,
        purpose: KeyPurpose,
        version: i32,
    ) -> Result<WrappedKey, KmsError> {
        self.generate_without_plaintext(kms_key_id, encryption_context(purpose, version))
            .await
    }

    /// Generates a user key (64 bytes, from KMS's random source) and returns it both wrapped and
    /// in the clear, for its key check. Not `GenerateDataKey`, whose lengths LocalStack ignores.
    pub async fn generate_user_key(
        &self,
        kms_key_id: &str,
        version: i32,
    ) -> Result<(WrappedKey, DataKey), KmsError> {
        const OP: &str = "GenerateRandom";
        let purpose = KeyPurpose::User;
        let output = self
            .client
            .generate_random()
            // 64 bytes: the cast cannot truncate.
            .number_of_bytes(purpose.key_len() as i32)
            .send()
            .await
            .map_err(|err| call_error(OP, kms_key_id, err))?;
        let key = data_key(OP, purpose, version, output.plaintext)?;
        let wrapped = self.wrap_data_key(kms_key_id, purpose, &key).await?;
        Ok((wrapped, key))
    }

    /// Wraps key material made here (a user key carried over from a mask key version) under
    /// `kms_key_id` with the purpose's encryption context.
    pub async fn wrap_data_key(
        &self,
        kms_key_id: &str,
        purpose: KeyPurpose,
        key: &DataKey,
    ) -> Result<WrappedKey, KmsError> {
        const OP: &str = "Encrypt";
        let output = self
            .client
            .encrypt()
            .key_id(kms_key_id)
            .plaintext(Blob::new(key.expose_material()))
            .set_encryption_context(Some(encryption_context(purpose, key.version())))
            .send()
            .await
            .map_err(|err| call_error(OP, kms_key_id, err))?;
        WrappedKey::from_reply(OP, output.key_id, output.ciphertext_blob)
    }

    /// Generates a fresh 256-bit data key and returns it both wrapped and in the clear: for the
    /// seed of the quarantine key pair, whose public half must be computed once, here.
    pub async fn generate_data_key_with_plaintext(
        &self,
        kms_key_id: &str,
        purpose: KeyPurpose,
        version: i32,
    ) -> Result<(WrappedKey, DataKey), KmsError> {
        const OP: &str = "GenerateDataKey";
        let output = self
            .client
            .generate_data_key()
            .key_id(kms_key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(encryption_context(purpose, version)))
            .send()
            .await
            .map_err(|err| call_error(OP, kms_key_id, err))?;
        let key = data_key(OP, purpose, version, output.plaintext)?;
        let wrapped = WrappedKey::from_reply(OP, output.key_id, output.ciphertext_blob)?;
        Ok((wrapped, key))
    }

    /// A KMS ciphertext that vouches for a quarantine public key (see [`public_key_context`]).
    pub async fn attest_public_key(
        &self,
        kms_key_id: &str,
        version: i32,
        public_key: &[u8],
    ) -> Result<Vec<u8>, KmsError> {
        self.generate_without_plaintext(kms_key_id, public_key_context(version, public_key))
            .await
            .map(|wrapped| wrapped.blob)
    }

    /// Checks a quarantine public key's attestation: KMS decrypts it only under the context made
    /// from this very key. The decrypted bytes are random and wiped at once.
    pub async fn verify_public_key(
        &self,
        kms_key_id: &str,
        version: i32,
        public_key: &[u8],
        attestation: &[u8],
    ) -> Result<(), KmsError> {
        let plaintext = self
            .decrypt(
                kms_key_id,
                public_key_context(version, public_key),
                attestation,
            )
            .await?;
        if let Some(plaintext) = plaintext {
            zeroize::Zeroize::zeroize(&mut plaintext.into_inner());
        }
        Ok(())
    }

    /// Generates a pseudonymisation domain's mask key and returns only its wrapped form.
    pub async fn generate_domain_key(
        &self,
        kms_key_id: &str,
        domain: &str,
        version: i32,
    ) -> Result<WrappedKey, KmsError> {
        self.generate_without_plaintext(kms_key_id, domain_context(domain, version))
            .await
    }

    /// Unwraps a domain's mask key (a mask key's length), presenting its context.
    pub async fn unwrap_domain_key(
        &self,
        kms_key_id: &str,
        domain: &str,
        version: i32,
        wrapped: &[u8],
    ) -> Result<DataKey, UnwrapError> {
        let context = domain_context(domain, version);
        self.unwrap_under(
            kms_key_id,
            context,
            DOMAIN_MASK_PURPOSE,
            KeyPurpose::Mask,
            version,
            wrapped,
        )
        .await
    }

    /// Unwraps a stored data key, presenting the key id and the encryption context.
    pub async fn unwrap_data_key(
        &self,
        kms_key_id: &str,
        purpose: KeyPurpose,
        version: i32,
        wrapped: &[u8],
    ) -> Result<DataKey, UnwrapError> {
        let context = encryption_context(purpose, version);
        self.unwrap_under(
            kms_key_id,
            context,
            purpose.as_str(),
            purpose,
            version,
            wrapped,
        )
        .await
    }

    /// Decrypts a wrapped key under `context`; it must have the length of a `shaped_as` key.
    /// Errors name `purpose`.
    async fn unwrap_under(
        &self,
        kms_key_id: &str,
        context: HashMap<String, String>,
        purpose: &'static str,
        shaped_as: KeyPurpose,
        version: i32,
        wrapped: &[u8],
    ) -> Result<DataKey, UnwrapError> {
        let unwrapped = match self.decrypt(kms_key_id, context, wrapped).await {
            Ok(plaintext) => data_key("Decrypt", shaped_as, version, plaintext),
            Err(err) => Err(err),
        };
        unwrapped.map_err(|source| UnwrapError {
            purpose,
            version,
            source,
        })
    }

    async fn generate_without_plaintext(
        &self,
        kms_key_id: &str,
        context: HashMap<String, String>,
    ) -> Result<WrappedKey, KmsError> {
        const OP: &str = "GenerateDataKeyWithoutPlaintext";
        let output = self
            .client
            .generate_data_key_without_plaintext()
            .key_id(kms_key_id)
            .key_spec(DataKeySpec::Aes256)
            .set_encryption_context(Some(context))
            .send()
            .await
            .map_err(|err| call_error(OP, kms_key_id, err))?;
        WrappedKey::from_reply(OP, output.key_id, output.ciphertext_blob)
    }

    async fn decrypt(
        &self,
        kms_key_id: &str,
        context: HashMap<String, String>,
        ciphertext: &[u8],
    ) -> Result<Option<Blob>, KmsError> {
        if let Some(pinned) = self
            .pinned
            .as_deref()
            .filter(|pinned| *pinned != kms_key_id)
        {
            return Err(KmsError::NotPinned {
                found: kms_key_id.to_owned(),
                pinned: pinned.to_owned(),
            });
        }
        let output = self
            .client
            .decrypt()
            .key_id(kms_key_id)
            .ciphertext_blob(Blob::new(ciphertext))
            .set_encryption_context(Some(context))
            .send()
            .await
            .map_err(|err| call_error("Decrypt", kms_key_id, err))?;
        Ok(output.plaintext)
    }

    /// The key's ARN, if it is enabled for encryption and decryption.
    pub async fn describe_usable_key(
        &self,
        kms_key_id: &str,
    ) -> Result<Result<String, String>, KmsError> {
        const OP: &str = "DescribeKey";
        let output = self
            .client
            .describe_key()
            .key_id(kms_key_id)
            .send()
            .await
            .map_err(|err| call_error(OP, kms_key_id, err))?;
        let metadata = output.key_metadata.ok_or(KmsError::Incomplete {
            operation: OP,
            what: "key metadata",
        })?;
        let usage = metadata.key_usage.as_ref().map(|u| u.as_str().to_owned());
        Ok(if !metadata.enabled {
            Err(format!(
                "key {} is disabled",
                metadata.arn.unwrap_or(metadata.key_id)
            ))
        } else if usage.as_deref().is_some_and(|u| u != "ENCRYPT_DECRYPT") {
            Err(format!(
                "key usage is {}, not ENCRYPT_DECRYPT",
                usage.unwrap_or_default()
            ))
        } else {
            Ok(metadata.arn.unwrap_or(metadata.key_id))
        })
    }

    /// Re-wraps a data key under another KMS key inside KMS: this process never sees the key.
    pub async fn re_encrypt(
        &self,
        source_kms_key_id: &str,
        destination_kms_key_id: &str,
        purpose: KeyPurpose,
        version: i32,
        wrapped: &[u8],
    ) -> Result<WrappedKey, KmsError> {
        self.re_encrypt_with(
            source_kms_key_id,
            destination_kms_key_id,
            encryption_context(purpose, version),
            wrapped,
        )
        .await
    }

    /// Re-wraps a quarantine public key's attestation under another KMS key.
    pub async fn re_encrypt_attestation(
        &self,
        source_kms_key_id: &str,
        destination_kms_key_id: &str,
        version: i32,
        public_key: &[u8],
        attestation: &[u8],
    ) -> Result<WrappedKey, KmsError> {
        self.re_encrypt_with(
            source_kms_key_id,
            destination_kms_key_id,
            public_key_context(version, public_key),
            attestation,
        )
        .await
    }

    async fn re_encrypt_with(
        &self,
        source_kms_key_id: &str,
        destination_kms_key_id: &str,
        context: HashMap<String, String>,
        wrapped: &[u8],
    ) -> Result<WrappedKey, KmsError> {
        const OP: &str = "ReEncrypt";
        let output = self
            .client
            .re_encrypt()
            .source_key_id(source_kms_key_id)
            .destination_key_id(destination_kms_key_id)
            .ciphertext_blob(Blob::new(wrapped))
            .set_source_encryption_context(Some(context.clone()))
            .set_destination_encryption_context(Some(context))
            .send()
            .await
            .map_err(|err| {
                let keys = format!("{source_kms_key_id} or {destination_kms_key_id}");
                call_error(OP, &keys, err)
            })?;
        WrappedKey::from_reply(OP, output.key_id, output.ciphertext_blob)
    }
}

/// A data key from a KMS reply's plaintext, which must be there and as long as the purpose's
/// keys are.
fn data_key(
    operation: &'static str,
    purpose: KeyPurpose,
    version: i32,
    plaintext: Option<Blob>,
) -> Result<DataKey, KmsError> {
    let mut plaintext = plaintext
        .ok_or(KmsError::Incomplete {
            operation,
            what: "plaintext",
        })?
        .into_inner();
    let length = KmsError::KeyLength {
        purpose: purpose.as_str(),
    };
    if plaintext.len() != purpose.key_len() {
        zeroize::Zeroize::zeroize(&mut plaintext);
        return Err(length);
    }
    DataKey::from_plaintext(version, plaintext).ok_or(length)
}

/// One line for the user: KMS's error code and message when it answered (for example
/// `NotFoundException: Alias ... is not found.`), else why it did not (refused, timed out). The
/// SDK's full error, raw response included, goes to the debug log; KMS replies hold no personal
/// data.
fn call_error<E, R>(operation: &'static str, key: &str, err: SdkError<E, R>) -> KmsError
where
    E: std::error::Error + ProvideErrorMetadata + 'static,
    R: std::fmt::Debug + 'static,
{
    tracing::debug!(operation, error = %DisplayErrorContext(&err), "KMS call failed");
    let Some(code) = err.code().map(str::to_owned) else {
        let timed_out = match &err {
            SdkError::TimeoutError(_) => true,
            SdkError::DispatchFailure(failure) => failure.is_timeout(),
            _ => false,
        };
        let cause = unreached_cause(&err, timed_out);
        return match err {
            SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) => {
                KmsError::Unreachable { operation, cause }
            }
            _ => KmsError::Call {
                operation,
                detail: cause,
            },
        };
    };
    let detail = match err.message() {
        Some(message) => format!("{code}: {message}"),
        None => code.clone(),
    };
    match code.as_str() {
        "AccessDeniedException" => KmsError::Denied { operation, detail },
        "NotFoundException" => KmsError::NotFound {
            key: key.to_owned(),
        },
        "InvalidCiphertextException" | "IncorrectKeyException" => {
            KmsError::InvalidCiphertext { detail }
        }
        // The key's state, not the call, is the problem: trying again changes nothing.
        "DisabledException"
        | "KMSInvalidStateException"
        | "KeyUnavailableException"
        | "ValidationException" => KmsError::KeyUnusable { operation, detail },
        _ => KmsError::Call { operation, detail },
    }
}
