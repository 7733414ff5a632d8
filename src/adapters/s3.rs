//! Audit anchors in S3: the chain head (`ID:HASH`) written outside the database, where its owner
//! cannot rewrite it, and read back to check the chain against every one. An object per anchor,
//! named by the row id, so a listing returns them in chain order. Where the bucket has S3 Object
//! Lock with a default retention, every anchor is locked for that time by S3 itself.

use aws_config::SdkConfig;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata};
use aws_sdk_s3::primitives::ByteStream;

use crate::crypto::parse_head;

/// `s3://bucket/prefix`, parsed: where the anchors of one audit log live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorLocation {
    bucket: String,
    /// Without a trailing slash; may be empty.
    prefix: String,
}

#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    #[error("{0} is not an S3 location: give s3://BUCKET/PREFIX")]
    Location(String),
    #[error("S3 {operation} on s3://{bucket} failed: {detail}")]
    Call {
        operation: &'static str,
        bucket: String,
        detail: String,
    },
    #[error("the anchor {key} is not `ID:HASH` (it was changed, or is not an etl anchor)")]
    Malformed { key: String },
    #[error(
        "the anchor {key} was overwritten or deleted ({versions} versions): anchors are written \
         once, so someone with write access to the bucket changed it"
    )]
    Overwritten { key: String, versions: usize },
    #[error("an anchor of row {id} exists with another hash: the chain was rewritten since")]
    Conflict { id: i64 },
    #[error("no anchor in {0}: check the location")]
    Empty(String),
}

impl AnchorLocation {
    pub fn parse(text: &str) -> Result<Self, AnchorError> {
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| AnchorError::Location(text.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(AnchorError::Location(text.to_owned()));
        }
        Ok(Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_end_matches('/').to_owned(),
        })
    }

    /// The object of the anchor at row `id`: zero-padded, so keys sort as ids do.
    fn key(&self, id: i64) -> String {
        let name = format!("{id:020}.anchor");
        if self.prefix.is_empty() {
            name
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    fn list_prefix(&self) -> Option<String> {
        (!self.prefix.is_empty()).then(|| format!("{}/", self.prefix))
    }
}

impl std::fmt::Display for AnchorLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// The anchors of one location.
pub struct AnchorStore {
    client: aws_sdk_s3::Client,
    location: AnchorLocation,
}

/// What writing an anchor did.
pub struct Written {
    pub uri: String,
    /// Whether the bucket locks it (S3 Object Lock with a default retention).
    pub locked: bool,
}

impl AnchorStore {
    pub fn new(sdk: &SdkConfig, location: AnchorLocation) -> Self {
        // An endpoint of its own (LocalStack, MinIO) serves buckets by path, not by host name.
        let config = aws_sdk_s3::config::Builder::from(sdk)
            .force_path_style(sdk.endpoint_url().is_some())
            .build();
        Self {
            client: aws_sdk_s3::Client::from_conf(config),
            location,
        }
    }

    pub fn location(&self) -> &AnchorLocation {
        &self.location
    }

    /// Writes the head `id:hash` (hex), as `etl audit head` prints it, once: an anchor of that
    /// row already there is left as it is (`If-None-Match: *`), and must say the same.
    pub async fn put(&self, id: i64, hash: &[u8]) -> Result<Written, AnchorError> {
        let key = self.location.key(id);
        let body = format!("{id}:{}\n", hex::encode(hash));
        let put = self
            .client
            .put_object()
            .bucket(&self.location.bucket)
            .key(&key)
            .content_type("text/plain")
            .if_none_match("*")
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await;
        match put {
            Ok(_) => {}
            Err(err) if err.code() == Some("PreconditionFailed") => {
                let existing = self.get(&key).await?;
                if existing != (id, hash.to_vec()) {
                    return Err(AnchorError::Conflict { id });
                }
            }
            Err(err) => return Err(self.call_error("PutObject", err)),
        }
        Ok(Written {
            uri: format!("s3://{}/{key}", self.location.bucket),
            locked: self.locked().await,
        })
    }

    /// Whether the bucket applies a default Object Lock retention to new objects.
    async fn locked(&self) -> bool {
        self.client
            .get_object_lock_configuration()
            .bucket(&self.location.bucket)
            .send()
            .await
            .ok()
            .and_then(|output| output.object_lock_configuration)
            .and_then(|config| config.rule)
            .and_then(|rule| rule.default_retention)
            .is_some()
    }

    /// Every anchor of the location (not of locations below it), in id order. An anchor with
    /// more than one version, or a delete marker, was overwritten or deleted: an error, since the
    /// newest version is not to be trusted then.
    pub async fn list(&self) -> Result<Vec<(i64, Vec<u8>)>, AnchorError> {
        let mut versions: std::collections::BTreeMap<String, usize> = Default::default();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.location.bucket)
                .set_prefix(self.location.list_prefix())
                .delimiter("/")
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|err| self.call_error("ListObjectVersions", err))?;
            let keys = page
                .versions()
                .iter()
                .filter_map(|version| version.key())
                .chain(
                    page.delete_markers()
                        .iter()
                        .filter_map(|marker| marker.key()),
                );
            for key in keys.filter(|key| key.ends_with(".anchor")) {
                *versions.entry(key.to_owned()).or_default() += 1;
            }
            if page.is_truncated() != Some(true) {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_owned);
            version_marker = page.next_version_id_marker().map(str::to_owned);
        }
        if versions.is_empty() {
            return Err(AnchorError::Empty(self.location.to_string()));
        }
        let mut anchors = Vec::with_capacity(versions.len());
        for (key, count) in versions {
            if count > 1 {
                return Err(AnchorError::Overwritten {
                    key,
                    versions: count,
                });
            }
            anchors.push(self.get(&key).await?);
        }
        Ok(anchors)
    }

    /// One anchor object, parsed.
    async fn get(&self, key: &str) -> Result<(i64, Vec<u8>), AnchorError> {
        let object = self
            .client
            .get_object()
            .bucket(&self.location.bucket)
            .key(key)
            .send()
            .await
            .map_err(|err| self.call_error("GetObject", err))?;
        let body = object
            .body
            .collect()
            .await
            .map_err(|err| AnchorError::Call {
                operation: "GetObject",
                bucket: self.location.bucket.clone(),
                detail: err.to_string(),
            })?
            .into_bytes();
        std::str::from_utf8(&body)
            .ok()
            .and_then(|text| parse_head(text.trim()))
            .ok_or_else(|| AnchorError::Malformed {
                key: key.to_owned(),
            })
    }

    fn call_error<E, R>(
        &self,
        operation: &'static str,
        err: aws_sdk_s3::error::SdkError<E, R>,
    ) -> AnchorError
    where
        E: std::error::Error + ProvideErrorMetadata + 'static,
        R: std::fmt::Debug + 'static,
    {
        tracing::debug!(operation, error = %DisplayErrorContext(&err), "S3 call failed");
        let detail = match err.as_service_error() {
            Some(service) => format!(
                "{}: {}",
                service.code().unwrap_or("error"),
                service.message().unwrap_or("no message")
            ),
            None => crate::adapters::aws::unreached_cause(&err, false),
        };
        AnchorError::Call {
            operation,
            bucket: self.location.bucket.clone(),
            detail,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_and_keys() {
        let location = AnchorLocation::parse("s3://audit-bucket/etl/prod/").unwrap();
        assert_eq!(location.key(42), "etl/prod/00000000000000000042.anchor");
        assert_eq!(location.to_string(), "s3://audit-bucket/etl/prod");
        let bare = AnchorLocation::parse("s3://audit-bucket").unwrap();
        assert_eq!(bare.key(7), "00000000000000000007.anchor");
        assert!(AnchorLocation::parse("https://audit-bucket/x").is_err());
        assert!(AnchorLocation::parse("s3:///x").is_err());
    }
}
