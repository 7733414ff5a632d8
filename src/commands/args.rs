//! Arguments several commands share: where the database is, the output format, the SQS protocol;
//! and the log format every command takes.

use clap::{Args, ValueEnum};

use crate::adapters::kms::Kms;
use crate::adapters::sqs::SqsProtocol;
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::domain::IpPrefix;
use crate::telemetry::LogFormat;

#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL connection URL, for example postgres://user:pass@host:5432/db.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: String,
}

impl DatabaseArgs {
    pub fn settings(&self) -> Result<DatabaseSettings, ConfigError> {
        DatabaseSettings::parse(&self.database_url)
    }
}

/// The generalised network column, for every command that writes rows (`ingest`, `lambda`,
/// `quarantine replay`).
#[derive(Debug, Args)]
pub struct IpPrefixArgs {
    /// Also write each row's network to user_logins.ip_network (a cidr analysts may read): the
    /// first V4BITS bits of an IPv4 address, V6BITS of an IPv6 one; 24,48 is the usual choice.
    /// Off by default: SECURITY.md says what a network reveals.
    #[arg(long, env = "ETL_IP_PREFIX", value_name = "V4BITS,V6BITS")]
    pub ip_prefix: Option<IpPrefix>,
}

/// The KMS key every data key must be wrapped under, for the commands that unwrap them.
#[derive(Debug, Args)]
pub struct KmsPinArgs {
    /// The KMS key the data keys are wrapped under (key id, ARN or alias). When set, a keyring
    /// row wrapped under any other key is refused (exit 2) before KMS is asked to unwrap it.
    #[arg(long = "kms-key-id", env = "ETL_KMS_KEY_ID", value_name = "KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
}

impl KmsPinArgs {
    /// A KMS client, pinned to the configured key's ARN (resolved once, here) when one is set.
    pub async fn kms(&self, sdk: &aws_config::SdkConfig) -> anyhow::Result<Kms> {
        let kms = Kms::new(sdk);
        let Some(id) = self
            .kms_key_id
            .as_deref()
            .map(str::trim)
            .filter(|id| !id.is_empty())
        else {
            return Ok(kms);
        };
        match kms.describe_usable_key(id).await? {
            Ok(arn) => Ok(kms.pinned_to(&arn)),
            Err(problem) => anyhow::bail!("--kms-key-id / ETL_KMS_KEY_ID: {problem}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// `--sqs-protocol`, as the adapter's [`SqsProtocol`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SqsProtocolArg {
    /// Try AWS JSON once at start; fall back to Query if the endpoint does not answer it.
    Auto,
    /// AWS JSON 1.0 through the AWS SDK (real SQS, current emulators).
    Json,
    /// The Query protocol with XML replies (the reference LocalStack 0.14 image).
    Query,
}

impl From<SqsProtocolArg> for SqsProtocol {
    fn from(arg: SqsProtocolArg) -> Self {
        match arg {
            SqsProtocolArg::Auto => Self::Auto,
            SqsProtocolArg::Json => Self::Json,
            SqsProtocolArg::Query => Self::Query,
        }
    }
}

/// `--log-format`, as telemetry's [`LogFormat`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormatArg {
    Text,
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Text => Self::Text,
            LogFormatArg::Json => Self::Json,
        }
    }
}
