//! `etl privacy report`: how well the rows of `user_logins` hide the people behind them (see
//! `adapters::postgres::privacy`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use chrono::Utc;
use clap::{Args, Subcommand};
use serde::Serialize;
use sqlx::ConnectOptions;

use super::{DatabaseArgs, KmsPinArgs, Outcome, OutputFormat};
use crate::adapters::aws;
use crate::adapters::postgres::privacy::{self, QuasiIdentifier, Reader, RiskReport};
use crate::adapters::postgres::{audit, domains, keyring, lifecycle, recovery};
use crate::crypto::{ChainVerifier, KeyPurpose};
use crate::domain::{Ip, IpPrefix, Justification};
use crate::human;
use crate::keys::{lock_key_job, VaultKeys};
use crate::startup::KMS_ATTEMPT_TIMEOUT;

#[derive(Debug, Subcommand)]
pub enum PrivacyCommand {
    /// The re-identification risk of user_logins (for the owner and etl_analyst): k-anonymity
    /// over quasi-identifiers, the l-diversity of masked_ip within their classes, and the masks
    /// only one user carries. Counts only, computed on the server in one pass over the table.
    Report(ReportArgs),
    /// The items of the EDPB's pseudonymisation guidelines (01/2025) a program can verify, read
    /// from the catalog and the key configuration (for the schema owner): the domains and who
    /// reads each, analysts kept apart from the vault, keys and quarantine, keys wrapped by KMS,
    /// recovery audited and under policy, erasure and retention configured. One line each.
    Check {
        #[command(flatten)]
        database: DatabaseArgs,
    },
    /// Give the rows written before `--ip-prefix` their network (for the schema owner, with KMS
    /// Decrypt on the vault key, as the key jobs have): each ip's vault entry is opened in this
    /// process, on record (an audit row before any is, one with the figures after), and the rows
    /// are updated a day at a time beside a running ingest. A run that stopped is finished by
    /// running it again: rows filled stay filled.
    FillNetworks(FillNetworksArgs),
}

#[derive(Debug, Args)]
pub struct FillNetworksArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    kms: KmsPinArgs,
    /// The prefix lengths, as ingest's --ip-prefix (24,48 is the usual choice).
    #[arg(long, env = "ETL_IP_PREFIX", value_name = "V4BITS,V6BITS")]
    ip_prefix: IpPrefix,
    /// Why the values are opened: recorded in the audit log before any is.
    #[arg(long)]
    reason: String,
    /// Ticket or case reference, recorded with the reason.
    #[arg(long)]
    ticket: Option<String>,
    /// Vault entries read per statement.
    #[arg(long, default_value_t = 5000, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    batch: i64,
    /// Output format of the summary.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
}

/// What a fill opened and wrote.
#[derive(Debug, Default, Serialize)]
struct Filled {
    ip_prefix: String,
    vault_entries: u64,
    user_logins: u64,
    days: u64,
    elapsed_seconds: f64,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    #[command(flatten)]
    database: DatabaseArgs,
    /// The columns that together may single a person out, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        value_name = "COLUMNS",
        default_values_t = QuasiIdentifier::DEFAULT
    )]
    quasi_identifiers: Vec<QuasiIdentifier>,
    /// A class of fewer users than this is counted as below k.
    #[arg(long, value_name = "K", default_value_t = 5, value_parser = clap::value_parser!(u32).range(2..))]
    k: u32,
    /// Output format.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    format: OutputFormat,
    /// Also write the figures to this file in the Prometheus text format, for node_exporter's
    /// textfile collector (written whole, then renamed into place).
    #[arg(long, value_name = "PATH")]
    metrics_file: Option<PathBuf>,
}

/// A report as printed: the settings it ran with, then its figures.
#[derive(Debug, Serialize)]
struct Printed<'a> {
    quasi_identifiers: &'a [QuasiIdentifier],
    k: u32,
    #[serde(flatten)]
    report: &'a RiskReport,
    single_user_masks: i64,
    elapsed_seconds: f64,
}

pub async fn run(command: PrivacyCommand) -> anyhow::Result<Outcome> {
    match command {
        PrivacyCommand::Report(args) => report(args).await,
        PrivacyCommand::Check { database } => check(&database).await,
        PrivacyCommand::FillNetworks(args) => fill_networks(&args).await,
    }
}

async fn report(args: ReportArgs) -> anyhow::Result<Outcome> {
    let mut quasi_identifiers = args.quasi_identifiers;
    // Each column once, in the order given.
    let mut seen = Vec::new();
    quasi_identifiers.retain(|q| {
        let first = !seen.contains(q);
        seen.push(*q);
        first
    });
    anyhow::ensure!(
        !quasi_identifiers.is_empty(),
        "--quasi-identifiers needs at least one column"
    );
    // The statement takes seconds on a large table by design: not a slow statement to warn of.
    let options = args.database.settings()?.options;
    let pool = super::checked_pool(options.disable_statement_logging(), 2).await?;
    let started = Instant::now();
    let report = privacy::risk_report(&pool, &quasi_identifiers, i64::from(args.k))
        .await
        .map_err(|err| match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => anyhow::anyhow!(
                "the database refused: the report reads user_logins (the schema owner and \
                 etl_analyst may)"
            ),
            _ => anyhow::Error::new(crate::adapters::postgres::DatabaseError::on(&pool)(err))
                .context("computing the privacy report"),
        })?;
    let printed = Printed {
        quasi_identifiers: &quasi_identifiers,
        k: args.k,
        report: &report,
        single_user_masks: report.single_user_masked_ip + report.single_user_masked_device_id,
        elapsed_seconds: started.elapsed().as_secs_f64(),
    };
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&printed)?)?,
        OutputFormat::Text => print_text(&printed)?,
    }
    if let Some(path) = &args.metrics_file {
        super::write_textfile(path, &metrics(&printed))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(Outcome::Success)
}

fn print_text(printed: &Printed) -> anyhow::Result<()> {
    let report = printed.report;
    let columns: Vec<&str> = printed
        .quasi_identifiers
        .iter()
        .map(|q| q.column())
        .collect();
    let or_none = |value: Option<i64>| value.map_or("none".to_owned(), |v| v.to_string());
    outln!(
        "user_logins: {} of {}, quasi-identifiers {}",
        human::count(report.rows, "row"),
        human::count(report.users, "user"),
        columns.join(", ")
    )?;
    outln!(
        "equivalence classes: {}; smallest: {}",
        report.classes,
        report
            .smallest_class
            .map_or("none".to_owned(), |n| human::count(n, "user"))
    )?;
    outln!(
        "below k={}: {} of {} in {}",
        printed.k,
        human::count(report.users_below_k, "user"),
        human::count(report.rows_below_k, "row"),
        human::count(report.classes_below_k, "class")
    )?;
    outln!(
        "l-diversity of masked_ip: {}; classes of several users sharing one masked_ip: {}",
        or_none(report.l_diversity),
        report.homogeneous_classes
    )?;
    outln!(
        "masks of a single user: {} (masked_ip {}, masked_device_id {})",
        printed.single_user_masks,
        report.single_user_masked_ip,
        report.single_user_masked_device_id
    )?;
    outln!("computed in {:.1} s", printed.elapsed_seconds)?;
    Ok(())
}

/// The figures as gauges of the last report, with its time, for an alert on a falling k.
fn metrics(printed: &Printed) -> String {
    let report = printed.report;
    // A figure an empty table has none of is left out, rather than written as a 0 that alerts.
    let gauges: [(&str, &str, Option<i64>); 8] = [
        (
            "rows",
            "Rows of user_logins the last report read.",
            Some(report.rows),
        ),
        (
            "classes",
            "Equivalence classes over the quasi-identifiers.",
            Some(report.classes),
        ),
        (
            "smallest_class",
            "Users in the smallest equivalence class.",
            report.smallest_class,
        ),
        (
            "rows_below_k",
            "Rows in classes of fewer than k users.",
            Some(report.rows_below_k),
        ),
        (
            "users_below_k",
            "Users with a row in a class of fewer than k users.",
            Some(report.users_below_k),
        ),
        (
            "l_diversity",
            "The fewest distinct masked ips in an equivalence class.",
            report.l_diversity,
        ),
        (
            "homogeneous_classes",
            "Classes of several users whose rows share one masked ip.",
            Some(report.homogeneous_classes),
        ),
        (
            "single_user_masks",
            "Masks that only one user's rows carry.",
            Some(printed.single_user_masks),
        ),
    ];
    let mut text = String::new();
    for (name, help, value) in gauges {
        let Some(value) = value else { continue };
        text.push_str(&format!(
            "# HELP etl_privacy_{name} {help}\n# TYPE etl_privacy_{name} gauge\netl_privacy_{name}{{k=\"{}\"}} {value}\n",
            printed.k
        ));
    }
    text.push_str(&format!(
        "# HELP etl_privacy_report_last_success_timestamp_seconds When the last report ended.\n\
         # TYPE etl_privacy_report_last_success_timestamp_seconds gauge\n\
         etl_privacy_report_last_success_timestamp_seconds {}\n",
        Utc::now().timestamp()
    ));
    text
}

/// A check's verdict: what holds, or what does not and what to do.
type Verdict = Result<String, (String, String)>;

/// One line per check on stdout; exit 1 when any failed.
async fn check(database: &DatabaseArgs) -> anyhow::Result<Outcome> {
    let pool = super::pool(database).await?;
    let owner_only = |what: &'static str| {
        move |err: sqlx::Error| match &err {
            sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => anyhow::anyhow!(
                "the database refused to show {what}: run `etl privacy check` as the owner of \
                 the etl schemas"
            ),
            _ => anyhow::Error::new(err).context(format!("reading {what}")),
        }
    };
    let keys = keyring::list(&pool)
        .await
        .map_err(owner_only("keyring.data_keys"))?;
    let domain_keys = domains::stored_keys(&pool)
        .await
        .map_err(owner_only("keyring.domain_keys"))?;
    let mask_version = keyring::active_mask_version(&pool)
        .await
        .map_err(owner_only("the active mask key"))?;
    let mut seen = vec![Domain {
        name: "user_logins".to_owned(),
        table: "user_logins".to_owned(),
        key: mask_version.map_or("no mask key yet".to_owned(), |v| format!("mask key v{v}")),
        public: false,
        readers: Vec::new(),
    }];
    for domain in domains::list(&pool)
        .await
        .map_err(owner_only("etl.domains"))?
    {
        seen.push(Domain {
            table: format!("domains.{}", domain.name),
            key: format!("the domain's key v{}", domain.key_version),
            name: domain.name,
            public: false,
            readers: Vec::new(),
        });
    }
    for domain in &mut seen {
        domain.readers = privacy::readers(&pool, &domain.table)
            .await
            .map_err(owner_only("the catalog"))?;
        domain.public = privacy::public_reads(&pool, &domain.table)
            .await
            .map_err(owner_only("the catalog"))?;
    }
    let guards = privacy::audit_guards_enabled(&pool)
        .await
        .map_err(owner_only("the audit log's triggers"))?;
    let mut chain = ChainVerifier::with_anchors([]);
    audit::verify(&pool, &mut chain)
        .await
        .map_err(owner_only("recovery.audit_log"))?;
    let policy = recovery::policy(&pool)
        .await
        .map_err(owner_only("recovery.policy"))?;
    let retention = lifecycle::retention(&pool)
        .await
        .map_err(owner_only("etl.retention"))?;
    let erasers = privacy::logins_in(&pool, "etl_privacy")
        .await
        .map_err(owner_only("the members of etl_privacy"))?;

    let has_key = |purpose: KeyPurpose| keys.iter().any(|k| k.purpose == purpose.as_str());
    let mut verdicts: Vec<(String, Verdict)> = seen
        .iter()
        .map(|d| (format!("domain {}", d.name), domain(d, &seen)))
        .collect();
    let mut readers: Vec<&Reader> = seen.iter().flat_map(|d| &d.readers).collect();
    readers.sort_by(|a, b| a.role.cmp(&b.role));
    readers.dedup_by(|a, b| a.role == b.role);
    verdicts.extend(
        [
            ("analysts kept apart", kept_apart(&readers)),
            ("keys wrapped by KMS", wrapped(&keys, &domain_keys, has_key)),
            ("recovery audited", audited(guards, &chain)),
            ("recovery under policy", under_policy(&policy)),
            ("erasure", erasure(has_key(KeyPurpose::User), &erasers)),
            ("retention", retention_set(&retention)),
        ]
        .map(|(name, verdict)| (name.to_owned(), verdict)),
    );
    let mut failed = 0;
    for (name, verdict) in verdicts {
        match verdict {
            Ok(detail) => outln!("PASS  {name}: {detail}")?,
            Err((problem, fix)) => {
                failed += 1;
                outln!("FAIL  {name}: {problem} → {fix}")?;
            }
        }
    }
    Ok(if failed == 0 {
        Outcome::Success
    } else {
        Outcome::Negative
    })
}

fn names(readers: &[&Reader]) -> String {
    readers
        .iter()
        .map(|r| r.role.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A pseudonymisation domain as the check sees it: `user_logins` (under the mask key) or one of
/// `etl domains`, its key and its readers.
struct Domain {
    name: String,
    table: String,
    key: String,
    public: bool,
    readers: Vec<Reader>,
}

/// A domain's masks, and who reads them: not PUBLIC, and no reader of another domain's rows
/// (through which the two domains' masks would link).
fn domain(this: &Domain, all: &[Domain]) -> Verdict {
    if this.public {
        return Err((
            format!("PUBLIC may read {}: every database user can", this.table),
            format!("REVOKE SELECT ON {} FROM PUBLIC", this.table),
        ));
    }
    let crossing: Vec<String> = this
        .readers
        .iter()
        .filter_map(|reader| {
            let others: Vec<&str> = all
                .iter()
                .filter(|other| other.table != this.table)
                .filter(|other| other.readers.iter().any(|r| r.role == reader.role))
                .map(|other| other.table.as_str())
                .collect();
            (!others.is_empty()).then(|| format!("{} reads {}", reader.role, others.join(", ")))
        })
        .collect();
    if !crossing.is_empty() {
        return Err((
            format!(
                "{}: their rows link the masks of {} to another domain's",
                crossing.join("; "),
                this.table
            ),
            "give each domain's readers that domain alone".to_owned(),
        ));
    }
    let readers = &this.readers;
    let groups: Vec<&Reader> = readers.iter().filter(|r| !r.login).collect();
    let logins: Vec<&Reader> = readers.iter().filter(|r| r.login).collect();
    // user_logins is its own table; a domain's is named.
    let table = if this.table == this.name {
        String::new()
    } else {
        format!("table {}, ", this.table)
    };
    Ok(format!(
        "{table}masks of ip and device_id under {}; read by the owner and {} ({})",
        this.key,
        if groups.is_empty() {
            "no group".to_owned()
        } else {
            names(&groups)
        },
        human::count(logins.len() as i64, "login")
    ))
}

/// No role that reads masks may read what opens them.
fn kept_apart(readers: &[&Reader]) -> Verdict {
    let reaching: Vec<&Reader> = readers
        .iter()
        .copied()
        .filter(|r| !r.reaches.is_empty())
        .collect();
    // Groups by name; logins (which inherit from them) by name only while they are few.
    let mut named: Vec<String> = reaching
        .iter()
        .filter(|r| !r.login || reaching.iter().filter(|r| r.login).count() <= 5)
        .map(|r| format!("{} reads {}", r.role, r.reaches.join(", ")))
        .collect();
    let logins = reaching.iter().filter(|r| r.login).count();
    if logins > 5 {
        named.push(format!(
            "and {}",
            human::count(logins as i64, "member login")
        ));
    }
    if reaching.is_empty() {
        Ok(format!(
            "none of the {} reading masks reads the vault, the keyring or quarantine",
            human::count(readers.len() as i64, "role")
        ))
    } else {
        Err((
            named.join("; "),
            "REVOKE those privileges (docs/roles.md lists what each role holds)".to_owned(),
        ))
    }
}

/// Every data key is stored wrapped by a KMS key, and each purpose has one.
fn wrapped(
    keys: &[keyring::StoredKey],
    domain_keys: &[(String, i32)],
    has_key: impl Fn(KeyPurpose) -> bool,
) -> Verdict {
    let missing: Vec<&str> = KeyPurpose::ALL
        .into_iter()
        .filter(|p| !has_key(*p))
        .map(KeyPurpose::as_str)
        .collect();
    if !missing.is_empty() {
        return Err((
            format!("no {} key", missing.join(", ")),
            "etl keys init --kms-key-id <KMS key>".to_owned(),
        ));
    }
    // A wrapped key is longer than the 32 bytes of a plain one: KMS adds its header and tag.
    let stored: Vec<(&str, usize)> = keys
        .iter()
        .map(|k| (k.kms_key_id.as_str(), k.wrapped_key.len()))
        .chain(
            domain_keys
                .iter()
                .map(|(id, len)| (id.as_str(), usize::try_from(*len).unwrap_or(0))),
        )
        .collect();
    let bare = stored
        .iter()
        .filter(|(id, len)| id.trim().is_empty() || *len <= 32)
        .count();
    if bare > 0 {
        return Err((
            format!(
                "{} not wrapped by KMS",
                human::count(bare as i64, "data key")
            ),
            "etl keys rotate, then etl keys retire the bare versions".to_owned(),
        ));
    }
    let kms_keys: std::collections::BTreeSet<&str> = stored.iter().map(|(id, _)| *id).collect();
    Ok(format!(
        "{} wrapped under {}",
        human::count(stored.len() as i64, "data key"),
        human::count(kms_keys.len() as i64, "KMS key")
    ))
}

/// Every opening leaves a chained audit row that no one can change or remove.
fn audited(guards: i64, chain: &ChainVerifier) -> Verdict {
    if guards < 3 {
        return Err((
            format!("{} of the audit log's 3 triggers are enabled", guards),
            "etl migrate (it restores them), then etl audit verify".to_owned(),
        ));
    }
    if let Some(broken) = chain.first_break() {
        return Err((
            format!("the audit chain breaks at row {}", broken.id()),
            "etl audit verify, and treat it as an incident".to_owned(),
        ));
    }
    Ok(format!(
        "openings go through the recovery service and the audit log; its chain of {} holds",
        human::count(chain.rows() as i64, "row")
    ))
}

/// An opening waits for another person's approval, or opening is capped per day.
fn under_policy(policy: &recovery::Policy) -> Verdict {
    if policy.approvals == 0 && policy.daily_limit == 0 {
        return Err((
            "a member of etl_recoverer opens any number of values with no approval".to_owned(),
            "etl recover policy set --approvals 1 (or --daily-limit N)".to_owned(),
        ));
    }
    Ok(format!(
        "{}, {} per user per day{}",
        human::count(policy.approvals, "approval"),
        if policy.daily_limit == 0 {
            "any number of values".to_owned()
        } else {
            human::count(policy.daily_limit, "value")
        },
        if policy.require_ticket {
            ", a ticket"
        } else {
            ""
        }
    ))
}

/// Erasure needs the user key (it keeps the erased users' hashes) and someone who may run it.
fn erasure(user_key: bool, erasers: &[String]) -> Verdict {
    if !user_key {
        return Err((
            "no user key: erased users cannot be recorded".to_owned(),
            "etl keys init --kms-key-id <KMS key>".to_owned(),
        ));
    }
    Ok(format!(
        "etl forget is ready; {} in etl_privacy besides the owner",
        human::count(erasers.len() as i64, "login")
    ))
}

/// The analysts' rows and quarantined messages are kept for a bounded time.
fn retention_set(retention: &lifecycle::Retention) -> Verdict {
    match (retention.logins_days, retention.quarantine_days) {
        (Some(logins), Some(quarantine)) => Ok(format!(
            "user_logins kept {}, quarantine {}; schedule etl retention apply",
            human::count(logins, "day"),
            human::count(quarantine, "day")
        )),
        _ => Err((
            "user_logins or quarantine is kept forever".to_owned(),
            "etl retention set --logins DAYS --quarantine DAYS".to_owned(),
        )),
    }
}

/// Opens the vault entry of each ip whose rows have no network yet, once, into a session map of
/// mask → network, then fills those rows day by day. The map is the session's own temporary
/// table: no value leaves this process, and only networks reach the rows.
async fn fill_networks(args: &FillNetworksArgs) -> anyhow::Result<Outcome> {
    let why = Justification::parse(&args.reason, args.ticket.as_deref(), "in the audit log")?;
    // The audit rows, the key jobs' lock, the map's session and the stream of masks.
    let pool = super::audit_pool_of(&args.database, 4).await?;
    let started = Instant::now();
    let mut filled = Filled {
        ip_prefix: args.ip_prefix.to_string(),
        ..Filled::default()
    };
    let refused = super::owner_only(&pool, "fill networks (it opens the vault)");
    let mixed = privacy::other_network_lengths(&pool, args.ip_prefix.v4(), args.ip_prefix.v6())
        .await
        .map_err(refused)?;
    anyhow::ensure!(
        !mixed,
        "user_logins already holds networks of another length than --ip-prefix {}: fill with the \
         prefix ingest writes",
        filled.ip_prefix
    );
    // One key job at a time (a re-mask or re-seal does not run beside the fill), taken before
    // anything goes on record.
    let _lock = lock_key_job(&pool).await?;
    let record = |outcome: &'static str, filled: &Filled| {
        let figures = format!(
            "ip_prefix={} vault_entries={} user_logins={} days={}",
            filled.ip_prefix, filled.vault_entries, filled.user_logins, filled.days
        );
        let pool = &pool;
        let why = &why;
        async move {
            lifecycle::record(
                pool,
                "network_fill",
                (Some(why.reason()), why.ticket()),
                outcome,
                &figures,
            )
            .await
            .map(|()| figures)
        }
    };
    // On record before any value is opened.
    record("opening", &filled).await.map_err(refused)?;
    if let Err(err) = fill(args, &pool, &mut filled).await {
        // What was opened before the failure, on record too; the error is the one to report.
        let _ = record("aborted", &filled).await;
        return Err(err);
    }
    filled.elapsed_seconds = started.elapsed().as_secs_f64();
    let figures = record("filled", &filled).await.map_err(refused)?;
    match args.format {
        OutputFormat::Json => outln!("{}", serde_json::to_string(&filled)?)?,
        OutputFormat::Text => outln!(
            "networks filled: {figures} in {:.1} s",
            filled.elapsed_seconds
        )?,
    }
    Ok(Outcome::Success)
}

/// The work of [`fill_networks`], counting into `filled` as it goes.
async fn fill(
    args: &FillNetworksArgs,
    pool: &sqlx::PgPool,
    filled: &mut Filled,
) -> anyhow::Result<()> {
    use futures_util::TryStreamExt;

    let kms = args
        .kms
        .kms(&aws::load_config(KMS_ATTEMPT_TIMEOUT).await)
        .await?;
    let mut keys = VaultKeys::new(pool, &kms).await?;
    keys.load(keys.versions()).await?;
    let database = |err| crate::adapters::postgres::DatabaseError::on(pool)(err);
    let mut map = pool.acquire().await.map_err(database)?;
    privacy::create_network_map(&mut map)
        .await
        .map_err(database)?;
    let mut reader = pool.acquire().await.map_err(database)?;
    let batch = usize::try_from(args.batch).unwrap_or(5000);
    let mut masks = privacy::masks_without_networks(&mut reader);
    let mut chunk = Vec::with_capacity(batch);
    loop {
        let next = masks.try_next().await.map_err(database)?;
        let end = next.is_none();
        chunk.extend(next);
        if chunk.len() < batch && !end {
            continue;
        }
        let entries = privacy::ip_entries(&mut map, &chunk)
            .await
            .map_err(database)?;
        let mut networks = Vec::with_capacity(entries.len());
        for entry in &entries {
            let (_, value) = keys.open(entry)?;
            let ip = Ip::parse(&value)
                .map_err(|_| anyhow::anyhow!("a vault entry of an ip holds no ip"))?;
            networks.push((hex::encode(&entry.mask), args.ip_prefix.network(&ip)));
        }
        privacy::add_to_network_map(&mut map, &networks)
            .await
            .map_err(database)?;
        filled.vault_entries += entries.len() as u64;
        chunk.clear();
        if end {
            break;
        }
    }
    drop(masks);
    for day in privacy::days_without_networks(&mut map)
        .await
        .map_err(database)?
    {
        filled.user_logins += privacy::fill_day(&mut map, day).await.map_err(database)?;
        filled.days += 1;
    }
    Ok(())
}
