//! One module per subcommand: each owns its flags (`Args`), validates them into its settings,
//! runs, and prints its result on stdout. What several commands share lives here and in
//! [`args`]; what they share below the command line lives in `keys`, `recovery` and `pipeline`.

/// `println!` that returns the write's error instead of panicking: a reader that went away
/// (`etl … | head -1`) ends the command quietly, with exit 0 (see `error::is_broken_pipe`).
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*).map_err($crate::error::StdoutError)
    }};
}

/// `print!` as [`outln`] does it.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        write!(std::io::stdout().lock(), $($arg)*).map_err($crate::error::StdoutError)
    }};
}

mod args;
pub mod audit;
pub mod dev;
pub mod doctor;
pub mod domains;
pub mod export;
pub mod forget;
pub mod ingest;
pub mod keys;
pub mod lambda;
pub mod migrate;
pub mod privacy;
pub mod quarantine;
pub mod recover;
pub mod recovery_service;
pub mod retention;

pub use args::{
    DatabaseArgs, IpPrefixArgs, KmsPinArgs, LogFormatArg, OutputFormat, SqsProtocolArg,
};

use sqlx::PgPool;

use crate::adapters::postgres;

/// How a command that ran without error ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Exit code 0: done.
    Success,
    /// Exit code 1: nothing found or nothing to do (see [`EXIT_ONE`] for each command).
    Negative,
}

/// The one exit-code table, as top-level `--help` and README state it.
pub const EXIT_CODES: &str = "Exit codes: 0 done; 1 nothing found or nothing to do (a negative \
    answer: each command's help says when); 2 an error or a refusal. Listings exit 0 even when \
    empty, and so do the commands that bring a state about (migrate, keys, ingest, retention \
    apply) when it already held, so that schedulers and deployments can run them every time.";

/// What exit code 1 means, for each command that uses it; every other command exits 0 or 2.
pub const EXIT_ONE: [(&str, &str); 10] = [
    (
        "recover",
        "a mask is not in the vault, or the request waits for approval",
    ),
    (
        "recover collect",
        "a value is not found, or the request still waits for approval",
    ),
    ("audit verify", "the chain does not hold"),
    ("doctor", "a check failed"),
    ("privacy check", "a check failed"),
    (
        "quarantine show",
        "no such quarantined message, or the request waits for approval",
    ),
    ("quarantine replay", "no quarantined message matches"),
    ("quarantine purge", "no quarantined message is that old"),
    (
        "forget",
        "every user given was already forgotten: nothing written",
    ),
    (
        "export",
        "the user has no row, or the request waits for approval",
    ),
];

/// The exit-status line of one command's `--help` (its path without `etl`, as `quarantine show`),
/// from the one table.
pub fn exit_status(path: &str) -> String {
    match EXIT_ONE.iter().find(|(command, _)| *command == path) {
        Some((_, one)) => format!("Exit status: 0 done; 1 {one}; 2 error or refused."),
        None => "Exit status: 0 done; 2 error or refused.".to_owned(),
    }
}

/// A one-connection pool for commands that append to the audit log: READ COMMITTED whatever the
/// server's default, which the append trigger requires.
async fn audit_pool(database: &DatabaseArgs) -> anyhow::Result<PgPool> {
    audit_pool_of(database, 1).await
}

/// [`audit_pool`] with `max_connections`.
async fn audit_pool_of(database: &DatabaseArgs, max_connections: u32) -> anyhow::Result<PgPool> {
    let settings = database.settings()?;
    checked_pool(postgres::read_committed(settings.options), max_connections).await
}

/// A small pool for one-shot commands.
async fn pool(database: &DatabaseArgs) -> anyhow::Result<PgPool> {
    checked_pool(database.settings()?.options, 2).await
}

/// A pool whose server has just accepted a connection: a one-shot command that cannot connect
/// fails at once, with the cause in words.
async fn checked_pool(
    options: sqlx::postgres::PgConnectOptions,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    postgres::check_connection(&options).await?;
    Ok(postgres::pool(options, max_connections))
}

/// A request that waits for approvals: no value yet (exit 1), and how to collect it.
fn report_pending(
    waiting: &crate::recovery::PendingRequest,
    format: OutputFormat,
) -> anyhow::Result<Outcome> {
    if format == OutputFormat::Json {
        outln!(
            "{}",
            serde_json::json!({
                "request_id": waiting.request_id,
                "state": "pending_approval",
                "approvals": waiting.approvals,
                "approvals_needed": waiting.approvals_needed,
            })
        )?;
    }
    eprintln!("{waiting}");
    Ok(Outcome::Negative)
}

/// The refusals of the approval and review functions in words: the requester's own request, a
/// request that does not wait, a role missing. Their messages name requests, never a value.
fn approver_error(pool: &sqlx::PgPool) -> impl Fn(sqlx::Error) -> anyhow::Error + '_ {
    move |err| {
        let (code, message) = match &err {
            sqlx::Error::Database(db) => {
                (db.code().map(|c| c.into_owned()), db.message().to_owned())
            }
            _ => (None, String::new()),
        };
        match code.as_deref() {
            // Raised by the functions themselves: their words name the request, never a value.
            Some("42501") if message.contains("requester") => anyhow::anyhow!("{message}"),
            Some("42501") => anyhow::anyhow!(
                "the database refused: your database user needs the etl_approver role (an \
                 administrator runs: GRANT etl_approver TO <your user>)"
            ),
            Some("P0002" | "23505" | "22023") => anyhow::anyhow!("{message}"),
            _ => anyhow::Error::new(crate::adapters::postgres::DatabaseError::on(pool)(err)),
        }
    }
}

/// The refusal of a statement only the owner of the etl schemas may run, in words (`doing`: what
/// was refused, "add a domain"); any other error is the database's, with `doing` as context.
fn owner_only<'a>(
    pool: &'a sqlx::PgPool,
    doing: &'static str,
) -> impl Fn(sqlx::Error) -> anyhow::Error + Copy + 'a {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            anyhow::anyhow!("only the owner of the etl schemas may {doing}")
        }
        _ => anyhow::Error::new(crate::adapters::postgres::DatabaseError::on(pool)(err))
            .context(format!("trying to {doing}")),
    }
}

/// Writes a node_exporter textfile: whole, then renamed into place, since the collector may read
/// at any moment and must never see half a file.
fn write_textfile(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    let partial = path.with_extension("prom.partial");
    std::fs::write(&partial, text)?;
    std::fs::rename(&partial, path)
}

/// A file, or stdin for `-`.
fn read_input(path: &std::path::Path) -> std::io::Result<String> {
    if path.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
}

/// Whether a switch-like transaction failed for a reason that may pass (a lock wait that timed
/// out among them): it rolled back, so it may run again.
fn is_transient(err: &anyhow::Error) -> bool {
    err.chain()
        .filter_map(|layer| layer.downcast_ref::<sqlx::Error>())
        .any(postgres::is_transient)
}

/// Runs `attempt` again, with the pipeline's backoff, while it fails waiting for a lock (its
/// `lock_timeout` spent on ingest's commits, or a deadlock): such a transaction rolled back and
/// its session, with the session's temporary tables, is intact. Any other failure is returned.
async fn again_after_lock_waits<T>(
    mut attempt: impl AsyncFnMut() -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let is_lock_wait = |err: &anyhow::Error| {
        err.chain()
            .filter_map(|layer| layer.downcast_ref::<sqlx::Error>())
            .any(|err| {
                matches!(err, sqlx::Error::Database(db)
                    if matches!(db.code().as_deref(), Some("55P03" | "40P01")))
            })
    };
    let mut waits = backon::BackoffBuilder::build(crate::pipeline::backoff());
    loop {
        match attempt().await {
            Err(err) if is_lock_wait(&err) => match waits.next() {
                Some(delay) => tokio::time::sleep(delay).await,
                None => return Err(err),
            },
            other => return other,
        }
    }
}

/// A progress bar for a long pass of a command, shown on a terminal only (elsewhere the command
/// logs a line per step); the caller enters the span and moves it with `pb_inc`.
fn progress(what: &str, total: u64) -> tracing::Span {
    use std::io::IsTerminal;
    use tracing_indicatif::span_ext::IndicatifSpanExt;
    let span = tracing::info_span!("progress", indicatif.pb_show = tracing::field::Empty);
    if std::io::stderr().is_terminal() {
        if let Ok(style) = indicatif::ProgressStyle::with_template(&format!(
            "{{spinner}} {what} {{wide_bar}} {{human_pos}}/{{human_len}} ({{eta}})"
        )) {
            span.pb_set_style(&style);
        }
        span.pb_set_length(total);
    }
    span
}

/// SIGINT or SIGTERM cancels `shutdown`: a service stops taking work and finishes what is in
/// flight.
async fn cancel_on_signal(shutdown: tokio_util::sync::CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing what is in flight");
    shutdown.cancel();
}
