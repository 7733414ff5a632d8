//! AWS Secrets Manager: the database URL of `etl lambda`, read once at cold start, so that no
//! password sits in the function's environment. The value is never logged or echoed.

use aws_config::SdkConfig;
use aws_sdk_secretsmanager::error::{DisplayErrorContext, ProvideErrorMetadata};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the secret {secret} from Secrets Manager: {detail}")]
    Call { secret: String, detail: String },
    #[error(
        "the secret {secret} holds neither a PostgreSQL URL nor the JSON of an RDS secret \
         (username, password, host, port, dbname)"
    )]
    Shape { secret: String },
}

/// The RDS-managed secret's JSON, as AWS writes it.
#[derive(serde::Deserialize)]
struct RdsSecret {
    username: String,
    password: String,
    host: String,
    port: Option<u16>,
    dbname: Option<String>,
}

/// The PostgreSQL URL in the secret `secret_id`: its value as it is, or built from an RDS secret
/// (with sslmode=verify-full: an RDS host is never this machine).
pub async fn database_url(
    sdk: &SdkConfig,
    secret_id: &str,
) -> Result<Zeroizing<String>, SecretError> {
    let output = aws_sdk_secretsmanager::Client::new(sdk)
        .get_secret_value()
        .secret_id(secret_id)
        .send()
        .await
        .map_err(|err| {
            tracing::debug!(error = %DisplayErrorContext(&err), "GetSecretValue failed");
            let detail = match err.as_service_error() {
                Some(service) => format!(
                    "{}: {}",
                    service.code().unwrap_or("error"),
                    service.message().unwrap_or("no message")
                ),
                None => crate::adapters::aws::unreached_cause(&err, false),
            };
            SecretError::Call {
                secret: secret_id.to_owned(),
                detail,
            }
        })?;
    let shape = || SecretError::Shape {
        secret: secret_id.to_owned(),
    };
    let value = Zeroizing::new(output.secret_string.ok_or_else(shape)?);
    url_of(&value).ok_or_else(shape)
}

fn url_of(value: &str) -> Option<Zeroizing<String>> {
    let value = value.trim();
    if !value.starts_with('{') {
        return Some(Zeroizing::new(value.to_owned()));
    }
    let secret: RdsSecret = serde_json::from_str(value).ok()?;
    let password = Zeroizing::new(secret.password);
    let mut url = url::Url::parse("postgres://localhost/").ok()?;
    url.set_host(Some(&secret.host)).ok()?;
    url.set_port(secret.port).ok()?;
    url.set_username(&secret.username).ok()?;
    url.set_password(Some(&password)).ok()?;
    url.set_path(secret.dbname.as_deref().unwrap_or("postgres"));
    url.set_query(Some("sslmode=verify-full"));
    Some(Zeroizing::new(url.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_or_an_rds_secret() {
        assert_eq!(
            url_of(" postgres://u:p@h/db ")
                .as_deref()
                .map(String::as_str),
            Some("postgres://u:p@h/db")
        );
        let rds = r#"{"username":"etl","password":"p@ss:/word","host":"db.example.com","port":5432,"dbname":"etl","engine":"postgres"}"#;
        assert_eq!(
            url_of(rds).as_deref().map(String::as_str),
            Some("postgres://etl:p%40ss%3A%2Fword@db.example.com:5432/etl?sslmode=verify-full")
        );
        assert!(url_of(r#"{"user":"x"}"#).is_none());
    }
}
