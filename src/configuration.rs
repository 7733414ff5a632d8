//! Settings every command shares (where the database is) and the error of a setting that does
//! not hold. Each command validates its own flags into its own settings (`commands::<name>`).

use sqlx::postgres::PgConnectOptions;

use crate::adapters::postgres;
use crate::domain::{BlankReason, InvalidQueueUrl, PiiField};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The URL itself is not echoed: it may contain a password.
    #[error("--database-url / DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    #[error("--queue-url / ETL_QUEUE_URL must be an http(s) URL of an SQS queue")]
    QueueUrl,
    #[error(transparent)]
    Justification(#[from] BlankReason),
    #[error("{0}")]
    Invalid(&'static str),
    #[error("{0} is not a mask: a mask is 64 hexadecimal characters, as stored in user_logins")]
    BadMask(MaskSource),
    #[error("cannot read the mask file: {0}")]
    MaskFile(std::io::Error),
    #[error("{given}: a user id is 1 to 128 characters")]
    BadUserId { given: String },
    #[error("cannot read the file of user ids: {0}")]
    UserFile(std::io::Error),
    #[error("{flag} must be {expected}")]
    OutOfRange {
        flag: &'static str,
        expected: &'static str,
    },
}

impl From<InvalidQueueUrl> for ConfigError {
    fn from(_: InvalidQueueUrl) -> Self {
        Self::QueueUrl
    }
}

impl ConfigError {
    /// `Err(OutOfRange)` unless `min <= value <= max`.
    pub fn check_range<T: PartialOrd>(
        flag: &'static str,
        value: T,
        min: T,
        max: T,
        expected: &'static str,
    ) -> Result<(), Self> {
        if min <= value && value <= max {
            Ok(())
        } else {
            Err(Self::OutOfRange { flag, expected })
        }
    }
}

/// Where a mask given to `etl recover` came from, to name it when it is not a mask (the text
/// itself is not echoed: a mistyped ip is personal data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskSource {
    Flag(PiiField),
    Line(usize),
}

impl std::fmt::Display for MaskSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Flag(PiiField::Ip) => f.write_str("the value of --masked-ip"),
            Self::Flag(PiiField::DeviceId) => f.write_str("the value of --masked-device-id"),
            Self::Line(line) => write!(f, "line {line} of the mask file"),
        }
    }
}

/// Where the database is.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub options: PgConnectOptions,
}

impl DatabaseSettings {
    pub fn parse(database_url: &str) -> Result<Self, ConfigError> {
        let url = database_url.trim_start();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::DatabaseUrl(
                "it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        postgres::connect_options(database_url)
            .map(|options| Self { options })
            .map_err(|err| match err {
                postgres::ConnectOptionsError::Url
                | postgres::ConnectOptionsError::EnvSystemRoots
                | postgres::ConnectOptionsError::WeakModeWithSystemRoots => {
                    ConfigError::DatabaseUrl(err.to_string())
                }
                postgres::ConnectOptionsError::EnvSslMode => ConfigError::OutOfRange {
                    flag: "PGSSLMODE",
                    expected: "one of disable, allow, prefer, require, verify-ca, verify-full",
                },
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_mask_is_named_by_where_it_came_from() {
        assert_eq!(
            ConfigError::BadMask(MaskSource::Flag(PiiField::Ip)).to_string(),
            "the value of --masked-ip is not a mask: a mask is 64 hexadecimal characters, as \
             stored in user_logins"
        );
        assert!(ConfigError::BadMask(MaskSource::Line(3))
            .to_string()
            .starts_with("line 3 of the mask file is not a mask"));
    }

    #[test]
    fn database_url_errors_do_not_echo_the_url() {
        let err = DatabaseSettings::parse("mysql://user:hunter2@host/db")
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
