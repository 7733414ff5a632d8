//! Validated settings built from the raw flags in `cli`.

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

use crate::adapters::postgres;
use crate::adapters::sqs::{MAX_VISIBILITY_SECONDS, MAX_WAIT_SECONDS};
use crate::cli::{
    DatabaseArgs, ForgetArgs, IngestArgs, LambdaArgs, OutputFormat, RecoverArgs, SeedArgs,
    ShapeArgs,
};
use crate::domain::PiiField;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The URL itself is not echoed: it may contain a password.
    #[error("--database-url / DATABASE_URL is not a valid PostgreSQL URL: {0}")]
    DatabaseUrl(String),
    #[error("--queue-url / ETL_QUEUE_URL must be an http(s) URL of an SQS queue")]
    QueueUrl,
    #[error("{0}")]
    Recover(&'static str),
    #[error("{0} is not a mask: a mask is 64 hexadecimal characters, as stored in user_logins")]
    BadMask(MaskSource),
    #[error("cannot read the mask file: {0}")]
    MaskFile(std::io::Error),
    #[error("{0}")]
    Forget(&'static str),
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

impl TryFrom<&DatabaseArgs> for DatabaseSettings {
    type Error = ConfigError;

    fn try_from(args: &DatabaseArgs) -> Result<Self, ConfigError> {
        let url = args.database_url.trim_start();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(ConfigError::DatabaseUrl(
                "it must start with postgres:// or postgresql://".to_owned(),
            ));
        }
        postgres::connect_options(&args.database_url)
            .map(|options| Self { options })
            .map_err(|err| match err {
                postgres::ConnectOptionsError::Url => ConfigError::DatabaseUrl(err.to_string()),
                postgres::ConnectOptionsError::EnvSslMode => ConfigError::OutOfRange {
                    flag: "PGSSLMODE",
                    expected: "one of disable, allow, prefer, require, verify-ca, verify-full",
                },
            })
    }
}

/// An SQS queue URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueUrl(String);

impl QueueUrl {
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let rest = text
            .strip_prefix("https://")
            .or_else(|| text.strip_prefix("http://"))
            .ok_or(ConfigError::QueueUrl)?;
        match rest.split_once('/') {
            Some((host, path)) if !host.is_empty() && !path.trim_matches('/').is_empty() => {
                Ok(Self(text.to_owned()))
            }
            _ => Err(ConfigError::QueueUrl),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where `etl ingest` reads messages.
#[derive(Debug, Clone)]
pub enum IngestSource {
    Queue(QueueUrl),
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct IngestSettings {
    pub database: DatabaseSettings,
    pub source: IngestSource,
    pub receivers: usize,
    pub writers: usize,
    pub batch_messages: usize,
    pub batch_wait: Duration,
    pub wait: Duration,
    pub drain: bool,
    pub summary_json: bool,
    pub db_max_connections: u32,
    pub visibility: Duration,
    pub max_receives: i32,
}

/// Receive wait in drain mode unless given: short, so the final empty receive ends the run quickly.
const DRAIN_WAIT_SECONDS: u8 = 1;
const DEFAULT_RECEIVERS: usize = 16;
const DEFAULT_WRITERS: usize = 4;
const MAX_WRITERS: usize = 64;

impl TryFrom<&IngestArgs> for IngestSettings {
    type Error = ConfigError;

    fn try_from(args: &IngestArgs) -> Result<Self, ConfigError> {
        // The deprecated --pollers stands for both where they are not given.
        if let Some(pollers) = args.pollers {
            in_range("--pollers", pollers, 1, 256, "between 1 and 256")?;
        }
        let receivers = args.receivers.or(args.pollers).unwrap_or(DEFAULT_RECEIVERS);
        // --pollers allowed 256 loops; writers beyond 64 only wait for connections.
        let writers = args
            .writers
            .or(args.pollers.map(|p| p.min(MAX_WRITERS)))
            .unwrap_or(DEFAULT_WRITERS);
        in_range("--receivers", receivers, 1, 256, "between 1 and 256")?;
        in_range("--writers", writers, 1, MAX_WRITERS, "between 1 and 64")?;
        in_range(
            "--batch-messages",
            args.batch_messages,
            1,
            100_000,
            "between 1 and 100000",
        )?;
        let default_wait = if args.drain {
            DRAIN_WAIT_SECONDS
        } else {
            MAX_WAIT_SECONDS
        };
        let wait_seconds = args.wait_seconds.unwrap_or(default_wait);
        if wait_seconds > MAX_WAIT_SECONDS {
            return Err(ConfigError::OutOfRange {
                flag: "--wait-seconds",
                expected: "between 0 and 20",
            });
        }
        // Each writer holds one connection at a time; the file source's lock holds one more.
        let db_max_connections = args.db_max_connections.unwrap_or(writers as u32 + 2);
        // A writer short of a connection waits out the pool's timeout as a transient failure.
        if (db_max_connections as usize) < writers {
            return Err(ConfigError::OutOfRange {
                flag: "--db-max-connections",
                expected: "at least --writers",
            });
        }
        if args.max_receives < 1 {
            return Err(ConfigError::OutOfRange {
                flag: "--max-receives",
                expected: "at least 1",
            });
        }
        if !(2..=MAX_VISIBILITY_SECONDS).contains(&args.visibility_timeout) {
            return Err(ConfigError::OutOfRange {
                flag: "--visibility-timeout",
                expected: "between 2 and 43200 seconds",
            });
        }
        let visibility = Duration::from_secs(args.visibility_timeout);
        // A batch waiting longer would need its visibility extended before it is even written.
        if args.batch_wait > visibility / 2 {
            return Err(ConfigError::OutOfRange {
                flag: "--batch-wait",
                expected: "at most half of --visibility-timeout",
            });
        }
        Ok(Self {
            database: DatabaseSettings::try_from(&args.database)?,
            source: match (&args.from_file, &args.queue_url) {
                (Some(path), _) => IngestSource::File(path.clone()),
                (None, Some(url)) => IngestSource::Queue(QueueUrl::parse(url)?),
                (None, None) => return Err(ConfigError::QueueUrl),
            },
            visibility,
            max_receives: args.max_receives,
            receivers,
            writers,
            batch_messages: args.batch_messages,
            batch_wait: args.batch_wait,
            wait: Duration::from_secs(wait_seconds.into()),
            drain: args.drain,
            summary_json: args.summary_json,
            db_max_connections,
        })
    }
}

fn in_range(
    flag: &'static str,
    value: usize,
    min: usize,
    max: usize,
    expected: &'static str,
) -> Result<(), ConfigError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(ConfigError::OutOfRange { flag, expected })
    }
}

/// What `etl lambda` runs with.
#[derive(Debug, Clone)]
pub struct LambdaSettings {
    pub database: DatabaseSettings,
    pub max_receives: i32,
    pub db_max_connections: u32,
}

impl TryFrom<&LambdaArgs> for LambdaSettings {
    type Error = ConfigError;

    fn try_from(args: &LambdaArgs) -> Result<Self, ConfigError> {
        if args.max_receives < 1 {
            return Err(ConfigError::OutOfRange {
                flag: "--max-receives",
                expected: "at least 1",
            });
        }
        // One event at a time per instance: more connections only hold server slots that
        // hundreds of concurrent instances would exhaust.
        if !(1..=8).contains(&args.db_max_connections) {
            return Err(ConfigError::OutOfRange {
                flag: "--db-max-connections",
                expected: "between 1 and 8 for `etl lambda`",
            });
        }
        Ok(Self {
            database: DatabaseSettings::try_from(&args.database)?,
            max_receives: args.max_receives,
            db_max_connections: args.db_max_connections,
        })
    }
}

/// What `etl dev seed` sends.
#[derive(Debug, Clone)]
pub struct SeedSettings {
    pub queue_url: QueueUrl,
    pub source: SeedSource,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub enum SeedSource {
    File(PathBuf),
    Synthetic(crate::synthetic::SyntheticOptions),
}

impl TryFrom<&SeedArgs> for SeedSettings {
    type Error = ConfigError;

    fn try_from(args: &SeedArgs) -> Result<Self, ConfigError> {
        let source = match &args.from_file {
            Some(path) => SeedSource::File(path.clone()),
            None => SeedSource::Synthetic(synthetic_options(args.count, &args.shape)?),
        };
        if args.concurrency == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--concurrency",
                expected: "at least 1",
            });
        }
        Ok(Self {
            queue_url: QueueUrl::parse(&args.queue_url)?,
            source,
            concurrency: args.concurrency,
        })
    }
}

/// What `etl recover` asks for.
#[derive(Debug, Clone)]
pub struct RecoverSettings {
    pub database: DatabaseSettings,
    pub field: PiiField,
    pub masks: Vec<String>,
    /// Whether the masks came from a file (bulk output) or the command line (one value).
    pub bulk: bool,
    pub reason: String,
    pub ticket: Option<String>,
    pub format: OutputFormat,
}

impl TryFrom<&RecoverArgs> for RecoverSettings {
    type Error = ConfigError;

    fn try_from(args: &RecoverArgs) -> Result<Self, ConfigError> {
        let (field, mask) = match (&args.masked_ip, &args.masked_device_id) {
            (Some(mask), None) => (PiiField::Ip, mask),
            (None, Some(mask)) => (PiiField::DeviceId, mask),
            _ => {
                return Err(ConfigError::Recover(
                    "give exactly one of --masked-ip and --masked-device-id",
                ))
            }
        };
        let masks = match (mask, &args.from_file) {
            (Some(mask), None) => {
                vec![normalize_mask(mask).ok_or(ConfigError::BadMask(MaskSource::Flag(field)))?]
            }
            (None, Some(path)) => read_masks(path)?,
            (Some(_), Some(_)) => {
                return Err(ConfigError::Recover(
                    "give the mask on the command line or --from-file, not both",
                ))
            }
            (None, None) => {
                return Err(ConfigError::Recover(
                    "give a mask after --masked-ip / --masked-device-id, or --from-file",
                ))
            }
        };
        if masks.is_empty() {
            return Err(ConfigError::Recover("the mask file holds no masks"));
        }
        let reason = args.reason.as_deref().unwrap_or_default().trim();
        if reason.is_empty() {
            return Err(ConfigError::Recover(
                "--reason must say why the value is needed; it is recorded in the audit log",
            ));
        }
        Ok(Self {
            database: DatabaseSettings::try_from(&DatabaseArgs {
                database_url: args.database_url.clone().unwrap_or_default(),
            })?,
            field,
            masks,
            bulk: args.from_file.is_some(),
            reason: reason.to_owned(),
            ticket: ticket(args.ticket.as_deref()),
            format: args.format,
        })
    }
}

/// Validated synthetic-event options.
pub fn synthetic_options(
    count: usize,
    shape: &ShapeArgs,
) -> Result<crate::synthetic::SyntheticOptions, ConfigError> {
    let share = |value: f64, flag: &'static str| {
        if (0.0..=1.0).contains(&value) {
            Ok(value)
        } else {
            Err(ConfigError::OutOfRange {
                flag,
                expected: "between 0 and 1",
            })
        }
    };
    Ok(crate::synthetic::SyntheticOptions {
        count,
        null_locale_share: share(shape.null_locale_share, "--null-locale-share")?,
        duplicate_share: share(shape.duplicate_share, "--duplicate-share")?,
        malformed_share: share(shape.malformed_share, "--malformed-share")?,
        seed: shape.seed,
    })
}

/// A mask is 64 hex characters; accepted in either case, stored lowercase.
fn normalize_mask(text: &str) -> Option<String> {
    let text = text.trim();
    (text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| text.to_ascii_lowercase())
}

fn read_masks(path: &std::path::Path) -> Result<Vec<String>, ConfigError> {
    let text = read_input(path).map_err(ConfigError::MaskFile)?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(index, line)| {
            normalize_mask(line).ok_or(ConfigError::BadMask(MaskSource::Line(index + 1)))
        })
        .collect()
}

/// Users to forget, each with where it was given (for messages that must not echo the id).
#[derive(Debug, Clone)]
pub struct ForgetSettings {
    pub database: DatabaseSettings,
    pub users: Vec<GivenUser>,
    pub reason: String,
    pub ticket: Option<String>,
    pub dry_run: bool,
    pub format: OutputFormat,
}

#[derive(Clone)]
pub struct GivenUser {
    pub user_id: String,
    /// `--user-id`, or `line N` of the file.
    pub source: String,
}

impl std::fmt::Debug for GivenUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GivenUser")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

/// `user_logins.user_id` is varchar(128).
const USER_ID_MAX_CHARS: usize = 128;

impl TryFrom<&ForgetArgs> for ForgetSettings {
    type Error = ConfigError;

    fn try_from(args: &ForgetArgs) -> Result<Self, ConfigError> {
        let reason = args.reason.trim();
        if reason.is_empty() {
            return Err(ConfigError::Forget(
                "--reason must say why; it is recorded in each erasure receipt",
            ));
        }
        let mut users = Vec::new();
        if let Some(user_id) = &args.user_id {
            users.push(given_user(user_id, "--user-id".to_owned())?);
        }
        if let Some(path) = &args.from_file {
            let text = read_input(path).map_err(ConfigError::UserFile)?;
            for (index, line) in text.lines().enumerate() {
                if !line.trim().is_empty() {
                    users.push(given_user(line, format!("line {}", index + 1))?);
                }
            }
        }
        if users.is_empty() {
            return Err(ConfigError::Forget("no user id given: the file has none"));
        }
        Ok(Self {
            database: DatabaseSettings::try_from(&args.database)?,
            users,
            reason: reason.to_owned(),
            ticket: ticket(args.ticket.as_deref()),
            dry_run: args.dry_run,
            format: args.format,
        })
    }
}

/// A ticket reference as recorded in the audit log: trimmed, and none when blank.
pub fn ticket(raw: Option<&str>) -> Option<String> {
    raw.map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
}

/// A user id as given, without surrounding whitespace; never echoed in an error.
fn given_user(text: &str, source: String) -> Result<GivenUser, ConfigError> {
    let user_id = text.trim();
    if user_id.is_empty() || user_id.chars().count() > USER_ID_MAX_CHARS {
        return Err(ConfigError::BadUserId { given: source });
    }
    Ok(GivenUser {
        user_id: user_id.to_owned(),
        source,
    })
}

/// A file, or stdin for `-`.
fn read_input(path: &std::path::Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_are_validated_and_lowercased() {
        let mask = "AB".repeat(32);
        assert_eq!(normalize_mask(&format!(" {mask} ")), Some("ab".repeat(32)));
        assert_eq!(normalize_mask("abc"), None);
        assert_eq!(normalize_mask(&"g".repeat(64)), None);
    }

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
    fn queue_urls() {
        assert!(QueueUrl::parse("http://localhost:4566/000000000000/login-queue").is_ok());
        assert!(QueueUrl::parse("https://sqs.us-east-1.amazonaws.com/123/q").is_ok());
        assert!(QueueUrl::parse("login-queue").is_err());
        assert!(QueueUrl::parse("http://host/").is_err());
        assert!(QueueUrl::parse("ftp://host/q").is_err());
    }

    #[test]
    fn database_url_errors_do_not_echo_the_url() {
        let args = DatabaseArgs {
            database_url: "mysql://user:hunter2@host/db".into(),
        };
        let err = DatabaseSettings::try_from(&args)
            .map(|_| ())
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
    }
}
