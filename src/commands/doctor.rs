//! `etl doctor`: one line per check, OK or FAIL, and for each failure what to do.

use std::time::Duration;

use aws_config::SdkConfig;
use sqlx::postgres::{PgConnectOptions, PgSslMode};
use sqlx::PgPool;

use clap::Args;

use super::{Outcome, SqsProtocolArg};
use crate::adapters::aws;
use crate::adapters::kms::{Kms, KmsError};
use crate::adapters::postgres::{self, MIGRATOR};
use crate::adapters::sqs::SqsQueue;
use crate::configuration::{ConfigError, DatabaseSettings};
use crate::domain::QueueUrl;
use crate::keys::{load_transformer, load_user_keys, KeyLoadError};

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

/// The group roles `etl migrate` creates, each the role of one job.
const JOBS: [(Job, &str); 7] = [
    (Job::Ingest, "etl_ingest"),
    (Job::Analyst, "etl_analyst"),
    (Job::Recoverer, "etl_recoverer"),
    (Job::Auditor, "etl_auditor"),
    (Job::Privacy, "etl_privacy"),
    (Job::Opener, "etl_opener"),
    (Job::Approver, "etl_approver"),
];

fn role_names() -> Vec<&'static str> {
    JOBS.iter().map(|(_, role)| *role).collect()
}

/// What a login may do, by the group roles whose privileges it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Job {
    Ingest,
    Analyst,
    Recoverer,
    Auditor,
    Privacy,
    Opener,
    Approver,
}

impl Job {
    fn name(self) -> &'static str {
        match self {
            Self::Ingest => "ingest",
            Self::Analyst => "analyst",
            Self::Recoverer => "recoverer",
            Self::Auditor => "auditor",
            Self::Privacy => "privacy officer",
            Self::Opener => "recovery service",
            Self::Approver => "approver",
        }
    }

    /// What the job reads or runs, by schema and object: checked with the catalog, so that a
    /// grant revoked by hand shows here rather than as a failure in the middle of a run.
    fn needs(self) -> &'static [Need] {
        use Need::{Execute, Table};
        match self {
            Self::Ingest => &[
                Table("public", "user_logins", "INSERT"),
                Table("vault", "entries", "INSERT"),
                Table("etl", "processed_messages", "INSERT"),
                Table("keyring", "data_keys", "SELECT"),
                Execute("etl", "hold_vault_epoch"),
            ],
            Self::Analyst => &[Table("public", "user_logins", "SELECT")],
            Self::Recoverer => &[
                Execute("recovery", "request"),
                Table("recovery", "replies", "SELECT"),
            ],
            Self::Auditor => &[Table("recovery", "audit_log", "SELECT")],
            Self::Privacy => &[Execute("etl", "forget")],
            Self::Opener => &[
                Execute("recovery", "claim_request"),
                Execute("recovery", "opening_material"),
            ],
            Self::Approver => &[Execute("recovery", "approve")],
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Need {
    /// A privilege on a table: schema, table, privilege.
    Table(&'static str, &'static str, &'static str),
    /// EXECUTE on a function: schema, function.
    Execute(&'static str, &'static str),
}

impl std::fmt::Display for Need {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Table("public", table, privilege) => write!(f, "{privilege} on {table}"),
            Self::Table(schema, table, privilege) => write!(f, "{privilege} on {schema}.{table}"),
            Self::Execute(schema, function) => write!(f, "EXECUTE on {schema}.{function}()"),
        }
    }
}

/// The database user doctor runs as, and what it may do.
struct Login {
    name: String,
    /// Owns the schema (or is a superuser): every job's privileges, and the migrations.
    owner: bool,
    jobs: Vec<Job>,
}

impl Login {
    fn does(&self, job: Job) -> bool {
        self.owner || self.jobs.contains(&job)
    }

    fn job_names(&self) -> String {
        self.jobs
            .iter()
            .map(|job| job.name())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

struct Report {
    failures: usize,
    /// The reader of stdout went away: nothing more is printed.
    stdout_closed: bool,
    /// The database user doctor connected as, named in the checks it cannot make as that user.
    login: Option<String>,
}

impl Report {
    /// A check this login cannot make: neither a pass nor a failure.
    fn skip_as_login(&mut self, name: &str, why: &str) {
        let line = match &self.login {
            Some(login) => format!("SKIP  {name}: cannot check as {login}: {why}"),
            None => format!("SKIP  {name}: cannot check: {why}"),
        };
        self.line(format_args!("{line}"));
    }

    /// A check that cannot run until a failure above is fixed.
    fn skip(&mut self, name: &str, why: &str) {
        self.line(format_args!("SKIP  {name}: cannot check: {why}"));
    }

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
            self.line(format_args!(
                "{} failed",
                crate::human::count(failures as i64, "check")
            ));
            Outcome::Negative
        }
    }
}

pub async fn run(args: DoctorArgs) -> anyhow::Result<Outcome> {
    let args = &args;
    let mut report = Report {
        failures: 0,
        stdout_closed: false,
        login: None,
    };
    let connected = database(&mut report, args.database_url.as_deref()).await;
    let mut login = None;
    if let Some((pool, options)) = &connected {
        server_version(&mut report, pool).await;
        database_tls(&mut report, pool, options).await;
        login = login_check(&mut report, pool).await;
        report.login = login.as_ref().map(|login| login.name.clone());
        migrations(&mut report, pool, login.as_ref()).await;
        roles(&mut report, pool).await;
        if let Some(login) = &login {
            access(&mut report, pool, login).await;
            idle_transactions(&mut report, pool, login).await;
        }
        public_schema(&mut report, pool).await;
    }
    // Without a known login every check runs; with one, only those its jobs need.
    let needs = |jobs: &[Job]| {
        login
            .as_ref()
            .is_none_or(|login| jobs.iter().any(|job| login.does(*job)))
    };
    if !needs(&[Job::Ingest, Job::Privacy, Job::Opener]) {
        let why = "its jobs call no AWS service (only ingest, a privacy officer and the recovery service do)";
        for name in ["AWS", "queue", "KMS key", "data keys"] {
            report.skip_as_login(name, why);
        }
        return Ok(report.outcome());
    }
    let sdk = aws::load_config(Duration::from_secs(10)).await;
    if let Err(why) = aws_setup(&mut report, &sdk).await {
        for name in ["queue", "KMS key", "data keys"] {
            report.skip(name, why);
        }
        return Ok(report.outcome());
    }
    if needs(&[Job::Ingest]) {
        queue(&mut report, &sdk, args).await;
    } else {
        report.skip_as_login("queue", "only ingest reads the queue");
    }
    let kms = Kms::new(&sdk);
    // The data keys are checked as a pinned process unwraps them.
    let kms = match kms_key(&mut report, &kms, args.kms_key_id.as_deref()).await {
        Some(arn) => kms.pinned_to(&arn),
        None => kms,
    };
    if let Some((pool, _)) = &connected {
        data_keys(&mut report, pool, &kms, login.as_ref()).await;
    }
    Ok(report.outcome())
}

/// The AWS region and credentials, each one line naming what to set; without them the queue and
/// KMS checks say why they cannot run rather than fail with an SDK error.
async fn aws_setup(report: &mut Report, sdk: &SdkConfig) -> Result<(), &'static str> {
    let Some(region) = sdk.region() else {
        report.check(
            "AWS region",
            Err((
                "no region configured".into(),
                "set AWS_REGION (or AWS_PROFILE naming a profile with a region)".into(),
            )),
        );
        return Err("no AWS region");
    };
    report.check("AWS region", Ok(region.to_string()));
    use aws_credential_types::provider::ProvideCredentials;
    let found = match sdk.credentials_provider() {
        Some(provider) => provider.provide_credentials().await.is_ok(),
        None => false,
    };
    if found {
        report.check("AWS credentials", Ok("found".into()));
        Ok(())
    } else {
        report.check(
            "AWS credentials",
            Err((
                "none found".into(),
                "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, or run with an IAM role"
                    .into(),
            )),
        );
        Err("no AWS credentials")
    }
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
    let verified = matches!(mode, PgSslMode::VerifyCa | PgSslMode::VerifyFull);
    match tls_version {
        Some(version) if !local && !verified => Err((
            format!(
                "encrypted ({version}) to a host off this machine, but its certificate is not \
                 verified (sslmode={mode_name}): anyone on the path can pose as the server"
            ),
            "connect with sslmode=verify-full (the default off this machine) and sslrootcert=<the server's CA bundle>".into(),
        )),
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

async fn migrations(report: &mut Report, pool: &PgPool, login: Option<&Login>) {
    let owner = login.is_none_or(|login| login.owner);
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
            Err(err) => match postgres::sqlstate(&err).as_deref() {
                Some(UNDEFINED_TABLE) if owner => {
                    Err(("no migrations applied".into(), "run `etl migrate`".into()))
                }
                // Another login may not see the owner's schema at all.
                Some(UNDEFINED_TABLE | INSUFFICIENT_PRIVILEGE) => {
                    report.skip_as_login(
                        "migrations applied",
                        "only the schema owner reads _sqlx_migrations (the checks below look at what this login needs)",
                    );
                    return;
                }
                _ => Err((err.to_string(), "check the connection".into())),
            },
        },
    );
}

const UNDEFINED_TABLE: &str = "42P01";
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// Which group roles this login uses the privileges of (membership with INHERIT), and whether it
/// owns the schema; "lacks the role" errors send users here.
async fn login_check(report: &mut Report, pool: &PgPool) -> Option<Login> {
    let row: Result<(String, bool, Vec<String>), _> = sqlx::query_as(
        "SELECT current_user::text, \
                r.rolsuper OR COALESCE(pg_has_role(current_user, c.relowner, 'USAGE'), \
                    c.oid IS NULL AND has_database_privilege(current_database(), 'CREATE')), \
                ARRAY(SELECT g FROM unnest($1::text[]) AS g \
                      WHERE CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = g) \
                                 THEN pg_has_role(current_user, g, 'USAGE') ELSE false END) \
         FROM pg_roles r LEFT JOIN pg_class c ON c.oid = to_regclass('public.user_logins') \
         WHERE r.rolname = current_user",
    )
    .bind(role_names())
    .fetch_one(pool)
    .await;
    let (name, owner, groups) = match row {
        Ok(row) => row,
        Err(err) => {
            report.check(
                "login",
                Err((err.to_string(), "check the connection".into())),
            );
            return None;
        }
    };
    let login = Login {
        jobs: JOBS
            .iter()
            .filter(|(_, role)| groups.iter().any(|g| g == role))
            .map(|(job, _)| *job)
            .collect(),
        name,
        owner,
    };
    report.check(
        "login",
        match (login.owner, login.jobs.is_empty()) {
            (true, _) => Ok(format!("{} owns the schema: every job", login.name)),
            (false, false) => Ok(format!(
                "{} is a member of {} (jobs: {})",
                login.name,
                groups.join(", "),
                login.job_names()
            )),
            (false, true) => Err((
                format!(
                    "{} is a member of no etl role, so it can do no job",
                    login.name
                ),
                format!(
                    "as the owner: GRANT etl_ingest (or the role of its job, docs/roles.md) TO {}",
                    login.name
                ),
            )),
        },
    );
    Some(login)
}

/// Whether the login holds what each of its jobs needs, one line per job.
async fn access(report: &mut Report, pool: &PgPool, login: &Login) {
    if login.owner {
        return;
    }
    for job in &login.jobs {
        let mut lacking = Vec::new();
        let mut missing = Vec::new();
        for need in job.needs() {
            match holds(pool, *need).await {
                Ok(Some(true)) => {}
                Ok(Some(false)) => lacking.push(need.to_string()),
                Ok(None) => missing.push(need.to_string()),
                Err(err) => lacking.push(format!("{need} ({err})")),
            }
        }
        let needs: Vec<String> = job.needs().iter().map(ToString::to_string).collect();
        report.check(
            &format!("{} access", job.name()),
            if !missing.is_empty() {
                Err((
                    format!("not in the database: {}", missing.join(", ")),
                    "have the owner run `etl migrate`".into(),
                ))
            } else if !lacking.is_empty() {
                Err((
                    format!("{} lacks {}", login.name, lacking.join(", ")),
                    "have the owner run `etl migrate`, which grants them again".into(),
                ))
            } else {
                Ok(needs.join(", "))
            },
        );
    }
}

/// Whether a transaction this login leaves open ends by itself: one left idle holds what it locked
/// (the audit chain, the vault epoch) and makes ingest, erasure and recovery wait.
async fn idle_transactions(report: &mut Report, pool: &PgPool, login: &Login) {
    if login.owner {
        return;
    }
    let timeout: Result<String, _> =
        sqlx::query_scalar("SELECT current_setting('idle_in_transaction_session_timeout')")
            .fetch_one(pool)
            .await;
    report.check(
        "idle transactions",
        match timeout {
            Ok(timeout) if timeout != "0" => Ok(format!(
                "a session idle in a transaction ends after {timeout}"
            )),
            Ok(_) => Err((
                format!(
                    "{} may leave a transaction open forever, holding what it locked",
                    login.name
                ),
                format!(
                    "as the owner: ALTER ROLE {} SET idle_in_transaction_session_timeout = '1min'",
                    login.name
                ),
            )),
            Err(err) => Err((err.to_string(), "check the connection".into())),
        },
    );
}

/// Whether the current user holds `need`: `None` when the object does not exist. Read from the
/// catalog, which every user may read, so no lookup fails for lack of a schema privilege. SELECT
/// may be granted on columns (the keyring's, whose key checks no login reads); writes may not.
async fn holds(pool: &PgPool, need: Need) -> Result<Option<bool>, sqlx::Error> {
    match need {
        Need::Table(schema, table, privilege) => {
            sqlx::query_scalar(
                "SELECT has_schema_privilege(n.oid, 'USAGE') \
                        AND CASE WHEN $3 = 'SELECT' THEN has_any_column_privilege(c.oid, $3) \
                                 ELSE has_table_privilege(c.oid, $3) END \
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                 WHERE n.nspname = $1 AND c.relname = $2",
            )
            .bind(schema)
            .bind(table)
            .bind(privilege)
            .fetch_optional(pool)
            .await
        }
        Need::Execute(schema, function) => {
            sqlx::query_scalar(
                "SELECT bool_or(has_schema_privilege(n.oid, 'USAGE') \
                                AND has_function_privilege(p.oid, 'EXECUTE')) \
                 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace \
                 WHERE n.nspname = $1 AND p.proname = $2",
            )
            .bind(schema)
            .bind(function)
            .fetch_one(pool)
            .await
        }
    }
}

async fn roles(report: &mut Report, pool: &PgPool) {
    let roles = role_names();
    let present: Vec<String> =
        match sqlx::query_scalar("SELECT rolname::text FROM pg_roles WHERE rolname = ANY($1)")
            .bind(&roles)
            .fetch_all(pool)
            .await
        {
            Ok(present) => present,
            Err(err) => {
                report.check(
                    "roles present",
                    Err((err.to_string(), "check the connection".into())),
                );
                return;
            }
        };
    let missing: Vec<&str> = roles
        .iter()
        .copied()
        .filter(|r| !present.iter().any(|p| p == r))
        .collect();
    report.check(
        "roles present",
        if missing.is_empty() {
            Ok(roles.join(", "))
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

/// The KMS key given with `--kms-key-id`: its ARN when it is usable.
async fn kms_key(report: &mut Report, kms: &Kms, key_id: Option<&str>) -> Option<String> {
    let Some(id) = key_id else {
        report.check(
            "KMS key",
            Ok("not given (set ETL_KMS_KEY_ID to pin the key every data key must be wrapped under)".into()),
        );
        return None;
    };
    let usable = kms.describe_usable_key(id).await;
    let arn = usable
        .as_ref()
        .ok()
        .and_then(|usable| usable.as_ref().ok())
        .cloned();
    report.check(
        "KMS key usable",
        match usable {
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
    );
    arn
}

/// The data keys this login's jobs unwrap: all of ingest's for ingest and the owner, the user key
/// for a privacy officer. The recovery service unwraps the vault and quarantine keys per request,
/// which needs a request.
async fn data_keys(report: &mut Report, pool: &PgPool, kms: &Kms, login: Option<&Login>) {
    let does = |job| login.is_none_or(|login| login.does(job));
    if does(Job::Ingest) {
        report.check(
            "data keys",
            load_transformer(pool, kms)
                .await
                .map(|t| {
                    format!(
                        "mask key v{}, user key v{} and vault key v{} unwrap; the quarantine key's attestation verifies",
                        t.masker().version(),
                        t.user_keys().newest().version(),
                        t.sealer().version()
                    )
                })
                .map_err(|err| (err.to_string(), key_fix(&err).to_owned())),
        );
    } else if does(Job::Privacy) {
        report.check(
            "data keys",
            load_user_keys(pool, kms)
                .await
                .map(|keys| {
                    format!(
                        "user key v{} unwraps (and {})",
                        keys.newest().version(),
                        crate::human::count(keys.others().len() as i64, "other stored version")
                    )
                })
                .map_err(|err| (err.to_string(), key_fix(&err).to_owned())),
        );
    } else if does(Job::Opener) {
        report.skip_as_login(
            "data keys",
            "the recovery service unwraps the vault and quarantine keys per request (a `recover` of a known mask checks them end to end)",
        );
    } else {
        report.skip_as_login("data keys", "its jobs unwrap no data key");
    }
}

/// What to do about a data key that did not load, by why.
fn key_fix(err: &KeyLoadError) -> &'static str {
    let kms = match err {
        KeyLoadError::MissingKey(_) | KeyLoadError::MissingUserKeyVersions(_) => {
            return "have the owner run `etl keys init --kms-key-id <id>`"
        }
        KeyLoadError::Database(db) if db.sqlstate().as_deref() == Some(INSUFFICIENT_PRIVILEGE) => {
            return "connect as a login of the role its job needs (docs/roles.md)"
        }
        KeyLoadError::Database(_) => return "check the connection",
        KeyLoadError::BadPublicKey(_)
        | KeyLoadError::BadUserKey(_)
        | KeyLoadError::UnattestedPublicKey { .. }
        | KeyLoadError::VaultKeyBelowMinimum { .. }
        | KeyLoadError::QuarantineKeyBelowMinimum { .. } => {
            return "the keyring was changed outside `etl keys`: restore it from a backup, and find out who changed it"
        }
        KeyLoadError::CannotReload => return "restart the process",
        KeyLoadError::PublicKeyUnchecked { source, .. } => source,
        KeyLoadError::Unwrap(unwrap) => &unwrap.source,
    };
    match kms {
        KmsError::NotPinned { .. } => {
            "a keyring row is wrapped under another KMS key: find out who wrote it, or set ETL_KMS_KEY_ID to the key `etl keys rewrap` moved the keys to"
        }
        KmsError::Denied { .. } => {
            "grant this AWS identity kms:Decrypt on the key, for context application=etl"
        }
        KmsError::NotFound { .. } | KmsError::KeyUnusable { .. } => {
            "the KMS key that wraps the data keys is gone or disabled: enable it, or restore the keyring"
        }
        KmsError::InvalidCiphertext { .. } => {
            "the wrapped key does not match its KMS key or context: the keyring was changed; restore it"
        }
        _ => "check AWS_ENDPOINT_URL, AWS_REGION and the credentials, and that KMS answers",
    }
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
            tls_verdict(Some("TLSv1.3"), PgSslMode::Require, true),
            Ok("encrypted (TLSv1.3), server certificate not verified (sslmode=require)".into())
        );
        assert_eq!(
            tls_verdict(None, PgSslMode::Disable, true),
            Ok("not encrypted (this machine, sslmode=disable)".into())
        );
        let (problem, _) = tls_verdict(Some("TLSv1.3"), PgSslMode::Require, false).unwrap_err();
        assert!(
            problem.contains("not verified (sslmode=require)"),
            "{problem}"
        );
        let (problem, _) = tls_verdict(None, PgSslMode::Prefer, false).unwrap_err();
        assert_eq!(
            problem,
            "not encrypted to a host off this machine (sslmode=prefer)"
        );
    }
}
