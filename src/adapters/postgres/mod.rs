//! PostgreSQL: connection, schema migrations, the keyring, the batch writer (with its binary COPY
//! encoder) and quarantine.

pub mod audit;
mod copy;
pub mod domains;
mod error;
pub mod file_batches;
pub mod keyring;
pub mod lifecycle;
pub mod privacy;
pub mod quarantine;
pub mod recovery;
pub mod rekey;
pub mod writer;

use std::net::IpAddr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgSslMode};
use sqlx::{ConnectOptions, PgPool};

pub use error::{describe_unlocated, redacted, sqlstate, DatabaseError};

/// The migrations in `migrations/`, embedded so `etl migrate` needs no files at run time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Why a database URL cannot be used. No variant quotes the URL: it may hold a password.
#[derive(Debug, thiserror::Error)]
pub enum ConnectOptionsError {
    #[error("unparseable URL or unsupported option")]
    Url,
    #[error("PGSSLMODE is not one of disable, allow, prefer, require, verify-ca, verify-full")]
    EnvSslMode,
    #[error("PGSSLROOTCERT=system is not supported: give sslrootcert=system in the URL")]
    EnvSystemRoots,
    #[error("sslrootcert=system needs sslmode=verify-full: any public certificate chains to it")]
    WeakModeWithSystemRoots,
}

/// Connect options from a URL. sqlx starts from the PG* variables (PGHOST, PGSSLMODE,
/// PGSSLROOTCERT, PGSSLCERT, PGSSLKEY, ...) and lets the URL override them. The TLS rules follow
/// libpq: without an explicit sslmode a host off this machine gets `verify-full` (sqlx's default
/// `prefer` falls back to plaintext without a word); `require` with an `sslrootcert` verifies the
/// chain as `verify-ca` does; `sslrootcert=system` (in the URL) trusts the public roots.
pub fn connect_options(url: &str) -> Result<PgConnectOptions, ConnectOptionsError> {
    let mut parsed = url::Url::parse(url).map_err(|_| ConnectOptionsError::Url)?;
    let url_names_mode = parsed
        .query_pairs()
        .any(|(key, _)| key == "sslmode" || key == "ssl-mode");
    let url_root_cert = parsed
        .query_pairs()
        .find(|(key, _)| key == "sslrootcert" || key == "ssl-root-cert")
        .map(|(_, value)| value.into_owned());
    let env_root_cert = std::env::var("PGSSLROOTCERT")
        .ok()
        .filter(|value| !value.is_empty());
    if url_root_cert.is_none() && env_root_cert.as_deref() == Some(SYSTEM_ROOTS) {
        return Err(ConnectOptionsError::EnvSystemRoots);
    }
    if url_root_cert.as_deref() == Some(SYSTEM_ROOTS) {
        // sqlx verifies against the public roots when it is given no file.
        let kept: Vec<(String, String)> = parsed
            .query_pairs()
            .filter(|(key, _)| key != "sslrootcert" && key != "ssl-root-cert")
            .map(|(key, value)| (key.into_owned(), value.into_owned()))
            .collect();
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    let system_roots = url_root_cert.as_deref() == Some(SYSTEM_ROOTS);
    let root_cert_file = match url_root_cert {
        Some(_) => !system_roots,
        None => env_root_cert.is_some(),
    };
    let options = PgConnectOptions::from_url(&parsed)
        .map_err(|_| ConnectOptionsError::Url)?
        .application_name("etl");
    let env_mode = std::env::var("PGSSLMODE").ok();
    let local = is_local(&options);
    let options = match imposed_ssl_mode(url_names_mode, env_mode.as_deref(), local)? {
        Some(mode) => options.ssl_mode(mode),
        None if root_cert_file && matches!(options.get_ssl_mode(), PgSslMode::Require) => {
            options.ssl_mode(PgSslMode::VerifyCa)
        }
        None => options,
    };
    // As libpq: any publicly signed certificate chains to the public roots, so only the host
    // name check makes them mean anything.
    if system_roots && !matches!(options.get_ssl_mode(), PgSslMode::VerifyFull) {
        return Err(ConnectOptionsError::WeakModeWithSystemRoots);
    }
    Ok(options)
}

/// The `sslrootcert` value that asks for the public roots rather than a file (libpq 16).
const SYSTEM_ROOTS: &str = "system";

/// The sslmode to set over sqlx's choice, if any: `verify-full` for a remote host when neither
/// the URL nor PGSSLMODE names a mode. An invalid PGSSLMODE is an error here, where sqlx would
/// silently fall back to `prefer`.
fn imposed_ssl_mode(
    url_names_mode: bool,
    env_mode: Option<&str>,
    local: bool,
) -> Result<Option<PgSslMode>, ConnectOptionsError> {
    if url_names_mode {
        return Ok(None);
    }
    match env_mode.filter(|mode| !mode.is_empty()) {
        Some(mode) => match mode.parse::<PgSslMode>() {
            Ok(_) => Ok(None),
            Err(_) => Err(ConnectOptionsError::EnvSslMode),
        },
        None if local => Ok(None),
        None => Ok(Some(PgSslMode::VerifyFull)),
    }
}

/// Whether the connection stays on this machine: a Unix socket or a loopback address.
pub fn is_local(options: &PgConnectOptions) -> bool {
    options.get_socket().is_some() || is_local_host(options.get_host())
}

/// A Unix socket directory, `localhost`, 127.0.0.0/8 or ::1 (also IPv4-mapped). Other names count
/// as remote even when they resolve to loopback: the rule must not depend on DNS.
fn is_local_host(host: &str) -> bool {
    host.starts_with('/')
        || host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.to_canonical().is_loopback())
}

/// The name `sslmode` takes in a URL.
pub fn ssl_mode_name(mode: PgSslMode) -> &'static str {
    match mode {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// Sessions that append to the audit log run READ COMMITTED whatever the server's or role's
/// default: the append trigger refuses other isolation levels.
pub fn read_committed(options: PgConnectOptions) -> PgConnectOptions {
    // The startup `options` packet splits on spaces; a backslash keeps this one.
    options.options([("default_transaction_isolation", "read\\ committed")])
}

/// A pool that connects lazily, so the process can start (and report readiness) while the
/// database is down.
pub fn pool(options: PgConnectOptions, max_connections: u32) -> PgPool {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_lazy_with(options)
}

/// How long a one-shot command waits for its first connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects once, for a one-shot command to fail at once with the cause in words. The pool would
/// retry a refused connection until its timeout and then report only that it timed out.
pub async fn check_connection(options: &PgConnectOptions) -> Result<(), DatabaseError> {
    match tokio::time::timeout(CONNECT_TIMEOUT, options.connect()).await {
        Ok(Ok(connection)) => {
            // The check is done; a failure to say goodbye changes nothing.
            let _ = sqlx::Connection::close(connection).await;
            Ok(())
        }
        Ok(Err(err)) => Err(DatabaseError::new(err, options)),
        Err(_) => Err(DatabaseError::new(
            sqlx::Error::Io(std::io::ErrorKind::TimedOut.into()),
            options,
        )),
    }
}

/// Whether retrying the same statement may succeed: lost connections, pool exhaustion, and the
/// SQLSTATEs of serialization failure, deadlock, a lock wait that timed out (a function's
/// `lock_timeout`), admin shutdown and connection exceptions. A
/// failed TLS handshake (a certificate problem) is not: it fails the same way until someone fixes
/// the configuration.
pub fn is_transient(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Io(_) => error::rustls_error(err).is_none(),
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            matches!(
                code.as_ref(),
                "40001" | "40P01" | "57P01" | "57P02" | "57P03" | "53300" | "55P03"
            ) || code.starts_with("08")
        }),
        _ => false,
    }
}

/// Whether the database rejected the rows themselves (a data exception, an integrity constraint,
/// a row over a size limit), so that a smaller batch without the offending row would succeed.
/// Anything else (a missing privilege, a TLS or protocol failure) fails every part the same way.
pub fn rejects_rows(err: &sqlx::Error) -> bool {
    match err {
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            ["22", "23", "54"]
                .iter()
                .any(|class| code.starts_with(class))
        }),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_remote_host_without_sslmode_gets_verify_full() {
        assert!(matches!(
            imposed_ssl_mode(false, None, false),
            Ok(Some(PgSslMode::VerifyFull))
        ));
        // An empty PGSSLMODE counts as unset, as sqlx reads it.
        assert!(matches!(
            imposed_ssl_mode(false, Some(""), false),
            Ok(Some(PgSslMode::VerifyFull))
        ));
    }

    #[test]
    fn require_with_a_root_certificate_verifies_the_chain() {
        let options = connect_options(
            "postgres://u:p@db.example.com/etl?sslmode=require&sslrootcert=/ca.crt",
        )
        .unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyCa));
        assert!(matches!(
            connect_options("postgres://u:p@db.example.com/etl?sslmode=require&sslrootcert=system"),
            Err(ConnectOptionsError::WeakModeWithSystemRoots)
        ));
        let options = connect_options(
            "postgres://u:p@db.example.com/etl?sslmode=verify-full&sslrootcert=system",
        )
        .unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
    }

    #[test]
    fn an_explicit_sslmode_or_a_local_host_keeps_what_sqlx_chose() {
        for local in [false, true] {
            assert!(matches!(imposed_ssl_mode(true, None, local), Ok(None)));
            assert!(matches!(
                imposed_ssl_mode(true, Some("bogus"), local),
                Ok(None)
            ));
            assert!(matches!(
                imposed_ssl_mode(false, Some("disable"), local),
                Ok(None)
            ));
            assert!(matches!(
                imposed_ssl_mode(false, Some("verify-full"), local),
                Ok(None)
            ));
        }
        assert!(matches!(imposed_ssl_mode(false, None, true), Ok(None)));
    }

    #[test]
    fn an_invalid_pgsslmode_is_an_error_not_prefer() {
        assert!(matches!(
            imposed_ssl_mode(false, Some("verify_full"), false),
            Err(ConnectOptionsError::EnvSslMode)
        ));
    }

    #[test]
    fn loopback_and_sockets_are_local() {
        for host in [
            "127.0.0.1",
            "127.10.0.1",
            "::1",
            "[::1]",
            "::ffff:127.0.0.1",
            "localhost",
            "LocalHost",
            "/var/run/postgresql",
        ] {
            assert!(is_local_host(host), "{host}");
        }
        for host in [
            "10.0.0.5",
            "128.0.0.1",
            "[::2]",
            "0.0.0.0",
            "db.example.com",
            "localhost.example.com",
            "mydb.xxxx.eu-west-1.rds.amazonaws.com",
        ] {
            assert!(!is_local_host(host), "{host}");
        }
    }

    #[test]
    fn connect_options_apply_the_rule_to_the_url() {
        // sslmode in the URL wins over PGSSLMODE, so these hold whatever the environment says.
        let options = connect_options("postgres://u:p@db.example.com/etl?sslmode=disable").unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::Disable));
        let options =
            connect_options("postgres://u:p@db.example.com/etl?ssl-mode=verify-full").unwrap();
        assert!(matches!(options.get_ssl_mode(), PgSslMode::VerifyFull));
        let options = connect_options("postgres:///etl?host=/run/postgresql").unwrap();
        assert!(is_local(&options));
        assert!(!is_local(
            &connect_options("postgres://u:p@10.1.2.3:5432/etl").unwrap()
        ));
    }

    #[test]
    fn url_errors_do_not_echo_the_url() {
        let err = connect_options("postgres://u:hunter2@host:99999/etl").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }
}
