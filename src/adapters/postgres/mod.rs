//! PostgreSQL: connection, schema migrations, the keyring, the batch writer (with its binary COPY
//! encoder) and quarantine.

mod copy;
pub mod keyring;
pub mod quarantine;
pub mod recovery;
pub mod writer;

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

/// The migrations in `migrations/`, embedded so `etl migrate` needs no files at run time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Parses a connection URL without echoing it: it may hold a password.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, sqlx::Error> {
    PgConnectOptions::from_str(url).map(|options| options.application_name("etl"))
}

/// A pool that connects lazily, so the process can start (and report readiness) while the
/// database is down.
pub fn pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options)
}

/// Whether retrying the same statement may succeed: lost connections, pool exhaustion, and the
/// SQLSTATEs of serialization failure, deadlock, admin shutdown and connection exceptions.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300"
            ) || code.starts_with("08")
        }),
        _ => false,
    }
}
