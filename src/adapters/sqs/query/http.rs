//! Building and sending the requests: the form body, the POST, and the reqwest client with its
//! rustls configuration.

use std::time::Duration;

use super::{sigv4, xml::error_reply, QueryQueue, SqsError};
use crate::adapters::aws::unreached_cause;

const API_VERSION: &str = "2012-11-05";
/// Beyond the long-poll wait, how long one HTTP exchange may take.
pub(super) const HTTP_HEADROOM: Duration = Duration::from_secs(10);

impl QueryQueue {
    /// One signed POST of `Action=action` and `params` to the queue URL; returns the XML reply.
    pub(super) async fn call(
        &self,
        action: &'static str,
        params: Vec<(String, String)>,
        timeout: Duration,
    ) -> Result<String, SqsError> {
        let body = form_body(action, &params);
        let content_type = "application/x-www-form-urlencoded; charset=utf-8";
        let mut request = self
            .http
            .post(&self.queue_url)
            .timeout(timeout)
            .header("content-type", content_type);
        for (name, value) in
            sigv4::headers(&self.config, &self.queue_url, action, content_type, &body).await?
        {
            request = request.header(name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|err| self.transport_error(action, &err))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|err| self.transport_error(action, &err))?;
        if status.is_success() {
            return Ok(text);
        }
        Err(match error_reply(&text) {
            (Some(code), message) => {
                SqsError::answered(&self.queue_url, action, &code, message.as_deref())
            }
            (None, _) => SqsError::Call {
                operation: action,
                detail: format!("HTTP {status}"),
            },
        })
    }

    /// A request that got no answer, or no whole answer.
    fn transport_error(&self, action: &'static str, err: &reqwest::Error) -> SqsError {
        if err.is_timeout() || err.is_connect() {
            SqsError::unreachable(&self.queue_url, unreached_cause(err, err.is_timeout()))
        } else {
            SqsError::Call {
                operation: action,
                detail: without_url(err),
            }
        }
    }
}

/// `Action=..&Version=..&name=value...`, form-encoded.
fn form_body(action: &str, params: &[(String, String)]) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("Action", action)
        .append_pair("Version", API_VERSION);
    for (name, value) in params {
        form.append_pair(name, value);
    }
    form.finish()
}

/// An HTTPS client on rustls with the aws-lc-rs provider, the crypto the AWS SDK and sqlx use:
/// reqwest's own choice would be ring. The Mozilla roots are what reqwest's `rustls-tls` trusted.
pub(super) fn client() -> Result<reqwest::Client, SqsError> {
    let setup_error = |detail: String| SqsError::Call {
        operation: "client setup",
        detail,
    };
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|err| setup_error(err.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(tls)
        .build()
        .map_err(|err| setup_error(without_url(&err)))
}

/// reqwest errors can carry the URL; keep the kind only.
fn without_url(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        "cannot connect".to_owned()
    } else {
        err.without_url_ref().to_string()
    }
}

trait WithoutUrl {
    fn without_url_ref(&self) -> String;
}

impl WithoutUrl for reqwest::Error {
    fn without_url_ref(&self) -> String {
        let text = self.to_string();
        match self.url() {
            Some(url) => text.replace(url.as_str(), "<queue>"),
            None => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_encoding_keeps_bodies_intact() {
        let body = form_body(
            "SendMessageBatch",
            &[("B".to_owned(), "a&b=c+d é \"x\"".to_owned())],
        );
        assert_eq!(
            body,
            "Action=SendMessageBatch&Version=2012-11-05&B=a%26b%3Dc%2Bd+%C3%A9+%22x%22"
        );
        let decoded: Vec<(String, String)> = form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect();
        assert_eq!(decoded[2].1, "a&b=c+d é \"x\"");
    }
}
