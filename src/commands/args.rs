//! Arguments several commands share: where the database is, the output format, the SQS protocol;
//! and the log format every command takes.

use clap::{Args, ValueEnum};

use crate::adapters::sqs::SqsProtocol;
use crate::configuration::{ConfigError, DatabaseSettings};
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
