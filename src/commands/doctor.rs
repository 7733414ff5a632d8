//! `etl doctor`: one line per check, OK or FAIL, and for each failure what to do.

use std::time::Duration;

use aws_config::SdkConfig;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::PgPool;

use clap::Args;

use super::{Outcome, SqsProtocolArg};
use crate::adapters::aws;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::{self, MIGRATOR};
use crate::adapters::sqs::SqsQueue;
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::domain::QueueUrl;
use crate::keys::load_transformer;

/// Doctor takes every setting as given, unvalidated: judging each one is its job.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// PostgreSQL connection URL.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// URL of the SQS queue.
    #[arg(long, env = "ETL_QUEUE_URL")]
    pub queue_url: Option<String>,
    /// KMS key that wraps (or will wrap) the data keys.
    #[arg(long, env = "ETL_KMS_KEY_ID")]
    pub kms_key_id: Option<String>,
    /// SQS wire protocol to check.
    #[arg(long, value_enum, env = "ETL_SQS_PROTOCOL", default_value_t = SqsProtocolArg::Auto)]
    pub sqs_protocol: SqsProtocolArg,
}

const ROLES: [&str; 4] = ["etl_ingest", "etl_analyst", "etl_recoverer", "etl_auditor"];

struct Report {
    failures: usize,
    /// The reader of stdout went away: nothing more is printed.
    stdout_closed: bool,
}

impl Report {
    fn check(&mut self, name: &str, result: Result<String, (String, String)>) {
        match result {
            Ok(detail) => self.line(format_args!("OK    {name}: {detail}")),
            Err((problem, fix)) => {
                self.failures += 1;
                self.line(format_args!("FAIL  {name}: {problem}\n      → {fix}"));
            }
        }
    }

    /// One line on stdout. A reader that went away (`etl doctor | head -1`) ends the output,
    /// not the checks: the exit code still says whether all passed.
    fn line(&mut self, text: std::fmt::Arguments<'_>) {
        use std::io::Write;
        if !self.stdout_closed && writeln!(std::io::stdout(), "{text}").is_err() {
            self.stdout_closed = true;
        }
    }

    fn outcome(mut self) -> Outcome {
        self.line(format_args!(""));
        if self.failures == 0 {
            self.line(format_args!("all checks passed"));
            Outcome::Success
        } else {
            let failures = self.failures;
            self.line(format_args!("{failures} check(s) failed"));
            Outcome::Negative
        }
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<Outcome> {
    let args = &args;
    let mut report = Report {
        failures: 0,
        stdout_closed: false,
    };
    let sdk = aws::load_config(Duration::from_secs(10)).await;
    region(&mut report, &sdk);
    let connected = database(&mut report, args.database_url.as_deref()).await;
    if let Some((pool, options)) = &connected {
        server_version(&mut report, pool).await;
        database_tls(&mut report, pool, options).await;
        migrations(&mut report, pool).await;
        roles(&mut report, pool).await;
        public_schema(&mut report, pool).await;
    }
    queue(&mut report, &sdk, args).await;
    let kms = Kms::new(&sdk);
    kms_key(&mut report, &kms, args.kms_key_id.as_deref()).await;
    if let Some((pool, _)) = &connected {
        data_keys(&mut report, pool, &kms).await;
    }
    Ok(report.outcome())
}

fn region(report: &mut Report, sdk: &SdkConfig) {
    report.check(
        "AWS region",
        sdk.region()
            .map(|region| region.to_string())
            .ok_or_else(|| {
                (
                    "no region configured".into(),
                    "set AWS_REGION (or a profile with a region)".into(),
                )
            }),
    );
}

/// Whether the database answers; on success its pool, and the options the TLS check judges.
async fn database(report: &mut Report, url: Option<&str>) -> Option<(PgPool, PgConnectOptions)> {
    let Some(url) = url else {
        report.check(
            "database",
            Err((
                "no database URL".into(),
                "set DATABASE_URL or --database-url".into(),
            )),
        );
        return None;
    };
    let options = match DatabaseSettings::parse(url) {
        Ok(settings) => settings.options,
        Err(err) => {
            report.check("database", Err((err.to_string(), "fix the URL".into())));
            return None;
        }
    };
    let pool = postgres::pool(options.clone(), 1);
    match sqlx::query_scalar::<_, String>("SHOW server_version")
        .fetch_one(&pool)
        .await
    {
        Ok(version) => {
            report.check("database reachable", Ok(format!("PostgreSQL {version}")));
        }
        Err(err) => {
            report.check(
                "database reachable",
                Err((
                    postgres::DatabaseError::new(err, &options).to_string(),
                    "check host, port, credentials, sslmode and sslrootcert, and that the server runs"
                        .into(),
                )),
            );
            return None;
        }
    }
    Some((pool, options))
}

async fn database_tls(report: &mut Report, pool: &PgPool, options: &PgConnectOptions) {
    let tls_version = sqlx::query_scalar::<_, Option<String>>(
        "SELECT version FROM pg_stat_ssl WHERE pid = pg_backend_pid() AND ssl",
    )
    .fetch_optional(pool)
    .await;
    report.check(
        "database TLS",
        match tls_version {
            Ok(version) => tls_verdict(
                version.flatten().as_deref(),
                options.get_ssl_mode(),
                postgres::is_local(options),
            ),
            Err(err) => Err((err.to_string(), "check that pg_stat_ssl is readable".into())),
        },
    );
}

/// Whether the connection is encrypted, and how far the server is trusted. Plaintext passes only
/// on this machine: elsewhere it carries passwords, masks and wrapped keys in clear.
fn tls_verdict(
    tls_version: Option<&str>,
    mode: PgSslMode,
    local: bool,
) -> Result<String, (String, String)> {
    let mode_name = postgres::ssl_mode_name(mode);
    match tls_version {
        Some(version) => Ok(format!(
            "encrypted ({version}), {}",
            match mode {
                PgSslMode::VerifyFull => "server certificate and host name verified".to_owned(),
                PgSslMode::VerifyCa => {
                    "server certificate verified, host name not checked (sslmode=verify-ca)"
                        .to_owned()
                }
                _ => format!("server certificate not verified (sslmode={mode_name})"),
            }
        )),
        None if local => Ok(format!("not encrypted (this machine, sslmode={mode_name})")),
        None => Err((
            format!("not encrypted to a host off this machine (sslmode={mode_name})"),
            "connect with sslmode=verify-full and sslrootcert=<the server's CA bundle>".into(),
        )),
    }
}

async fn migrations(report: &mut Report, pool: &PgPool) {
    let applied: Result<Vec<i64>, _> =
        sqlx::query_scalar("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
            .fetch_all(pool)
            .await;
    let expected: Vec<i64> = MIGRATOR.iter().map(|m| m.version).collect();
    report.check(
        "migrations applied",
        match applied {
            Ok(applied) if expected.iter().all(|v| applied.contains(v)) => {
                Ok(format!("{} of {}", expected.len(), expected.len()))
            }
            Ok(applied) => Err((
                format!(
                    "{} of {} applied",
                    expected.iter().filter(|v| applied.contains(v)).count(),
                    expected.len()
                ),
                "run `etl migrate`".into(),
            )),
            Err(_) => Err(("no migrations applied".into(), "run `etl migrate`".into())),
        },
    );
}

async fn roles(report: &mut Report, pool: &PgPool) {
    let present: Vec<String> =
        sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
            .bind(&ROLES[..])
            .fetch_all(pool)
            .await
            .unwrap_or_default();
    let missing: Vec<&str> = ROLES
        .into_iter()
        .filter(|r| !present.iter().any(|p| p == r))
        .collect();
    report.check(
        "roles present",
        if missing.is_empty() {
            Ok(ROLES.join(", "))
        } else {
            Err((
                format!("missing {}", missing.join(", ")),
                "run `etl migrate` as a role that may create roles".into(),
            ))
        },
    );
}

/// The major versions the test suite runs on (`scripts/test`).
const TESTED_MAJORS: [i32; 3] = [10, 15, 18];

async fn server_version(report: &mut Report, pool: &PgPool) {
    let version: Result<i32, _> =
        sqlx::query_scalar("SELECT current_setting('server_version_num')::int")
            .fetch_one(pool)
            .await;
    report.check(
        "PostgreSQL version",
        match version {
            Ok(number) => version_verdict(number),
            Err(err) => Err((err.to_string(), "check the connection".into())),
        },
    );
}

/// What the server's `server_version_num` means for etl.
fn version_verdict(number: i32) -> Result<String, (String, String)> {
    let major = number / 10_000;
    let tested = TESTED_MAJORS.map(|v| v.to_string()).join(", ");
    if major < 10 {
        return Err((
            format!("PostgreSQL {major} is older than 10, the oldest etl supports"),
            format!("upgrade the server; etl is tested on {tested}"),
        ));
    }
    let note = if major < 11 {
        "; its audit chain hashes with pgcrypto (the migrations create the extension)"
    } else {
        ""
    };
    Ok(if TESTED_MAJORS.contains(&major) {
        format!("{major} (tested on {tested}){note}")
    } else {
        format!("{major}, between the tested versions {tested}{note}")
    })
}

/// PostgreSQL 10 to 14 let every role create objects in schema public, where a planted function
/// can capture another role's unqualified call; the migrations revoke it where they may.
async fn public_schema(report: &mut Report, pool: &PgPool) {
    let open: Result<bool, _> =
        sqlx::query_scalar("SELECT has_schema_privilege('public', 'public', 'CREATE')")
            .fetch_one(pool)
            .await;
    report.check(
        "schema public",
        match open {
            Ok(false) => Ok("only its owner may create objects in it".into()),
            Ok(true) => Err((
                "every role may create objects in schema public".into(),
                "as the owner of schema public: REVOKE CREATE ON SCHEMA public FROM PUBLIC".into(),
            )),
            Err(err) => Err((err.to_string(), "check the connection".into())),
        },
    );
}

async fn queue(report: &mut Report, sdk: &SdkConfig, args: &DoctorArgs) {
    match args.queue_url.as_deref().map(QueueUrl::parse) {
        None => report.check(
            "queue",
            Err((
                "no queue URL".into(),
                "set ETL_QUEUE_URL or --queue-url".into(),
            )),
        ),
        Some(Err(err)) => report.check(
            "queue",
            Err((
                ConfigError::from(err).to_string(),
                "give the queue's full URL".into(),
            )),
        ),
        Some(Ok(url)) => {
            let reached = match SqsQueue::connect(sdk, url.as_str(), args.sqs_protocol.into()).await
            {
                Ok((queue, protocol)) => queue.depth().await.map(|depth| (depth, protocol)),
                Err(err) => Err(err),
            };
            report.check(
                "queue reachable",
                reached
                    .map(|(depth, protocol)| {
                        format!("{} visible, {} in flight, speaks the {} protocol", depth.visible, depth.in_flight, protocol.as_str())
                    })
                    .map_err(|err| {
                        (err.to_string(), "check the URL, AWS_ENDPOINT_URL, credentials and sqs:GetQueueAttributes".into())
                    }),
            );
        }
    }
}

async fn kms_key(report: &mut Report, kms: &Kms, key_id: Option<&str>) {
    match key_id {
        None => report.check("KMS key", Ok("not given (only `etl keys` needs it)".into())),
        Some(id) => report.check(
            "KMS key usable",
            match kms.describe_usable_key(id).await {
                Ok(Ok(arn)) => Ok(arn),
                Ok(Err(problem)) => Err((
                    problem,
                    "enable the key, or give a symmetric ENCRYPT_DECRYPT key".into(),
                )),
                Err(err) => Err((
                    err.to_string(),
                    "check the key id and kms:DescribeKey permission".into(),
                )),
            },
        ),
    }
}

async fn data_keys(report: &mut Report, pool: &PgPool, kms: &Kms) {
    report.check(
        "data keys",
        load_transformer(pool, kms)
            .await
            .map(|t| {
                format!(
                    "mask key v{} and vault key v{} unwrap",
                    t.masker().version(),
                    t.sealer().version()
                )
            })
            .map_err(|err| {
                (
                    err.to_string(),
                    "run `etl keys init`, or grant kms:Decrypt for context application=etl".into(),
                )
            }),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_verdicts() {
        assert_eq!(
            version_verdict(150_018),
            Ok("15 (tested on 10, 15, 18)".into())
        );
        assert!(version_verdict(100_023).unwrap().contains("pgcrypto"));
        assert!(version_verdict(170_010).unwrap().contains("between"));
        assert!(version_verdict(90_624).is_err());
    }

    #[test]
    fn tls_verdicts() {
        assert_eq!(
            tls_verdict(Some("TLSv1.3"), PgSslMode::VerifyFull, false),
            Ok("encrypted (TLSv1.3), server certificate and host name verified".into())
        );
        assert_eq!(
            tls_verdict(Some("TLSv1.3"), PgSslMode::Require, false),
            Ok("encrypted (TLSv1.3), server certificate not verified (sslmode=require)".into())
        );
        assert_eq!(
            tls_verdict(None, PgSslMode::Disable, true),
            Ok("not encrypted (this machine, sslmode=disable)".into())
        );
        let (problem, _) = tls_verdict(None, PgSslMode::Prefer, false).unwrap_err();
        assert_eq!(
            problem,
            "not encrypted to a host off this machine (sslmode=prefer)"
        );
    }
}
