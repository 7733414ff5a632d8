//! Signing the requests with SigV4, with the credentials and region of the AWS configuration.

use std::time::SystemTime;

use aws_credential_types::provider::ProvideCredentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::SqsError;

/// SigV4 headers for a POST of `body` to `url`.
pub(super) async fn headers(
    config: &aws_config::SdkConfig,
    url: &str,
    action: &'static str,
    content_type: &str,
    body: &str,
) -> Result<Vec<(String, String)>, SqsError> {
    let signing_error = |detail: String| SqsError::Call {
        operation: action,
        detail: format!("cannot sign the request: {detail}"),
    };
    let provider = config
        .credentials_provider()
        .ok_or_else(|| signing_error("no AWS credentials configured".to_owned()))?;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|err| signing_error(err.to_string()))?;
    let region = config
        .region()
        .ok_or_else(|| signing_error("no AWS region configured".to_owned()))?;
    let identity = Identity::from(credentials);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region.as_ref())
        .name("sqs")
        .time(SystemTime::now())
        .settings(SigningSettings::default())
        .build()
        .map_err(|err| signing_error(err.to_string()))?
        .into();
    let headers = [("content-type", content_type)];
    let signable = SignableRequest::new(
        "POST",
        url,
        headers.into_iter(),
        SignableBody::Bytes(body.as_bytes()),
    )
    .map_err(|err| signing_error(err.to_string()))?;
    let (instructions, _) = sign(signable, &params)
        .map_err(|err| signing_error(err.to_string()))?
        .into_parts();
    Ok(instructions
        .headers()
        .map(|(name, value)| (name.to_owned(), value.to_owned()))
        .collect())
}
