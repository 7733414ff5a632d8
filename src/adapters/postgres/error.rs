//! PostgreSQL failures in one line: the cause in words, the server and database by name, and what
//! to do. Never the URL (it may hold a password), never a value from a row.

use sqlx::postgres::PgConnectOptions;
use sqlx::PgPool;

use super::ssl_mode_name;

/// Where a connection or statement went: names only.
#[derive(Debug, Clone)]
struct Target {
    /// `host:port`, or `the socket in <dir>`.
    server: String,
    host: String,
    database: String,
    user: String,
    ssl_mode: &'static str,
    tcp: bool,
}

impl Target {
    fn of(options: &PgConnectOptions) -> Self {
        let host = options.get_host();
        let socket = match options.get_socket() {
            Some(dir) => Some(dir.display().to_string()),
            None => host.starts_with('/').then(|| host.to_owned()),
        };
        let user = options.get_username().to_owned();
        Self {
            server: match &socket {
                Some(dir) => format!("the socket in {dir}"),
                None => format!("{host}:{}", options.get_port()),
            },
            host: host.to_owned(),
            // PostgreSQL's default database is the user's name.
            database: options.get_database().unwrap_or(&user).to_owned(),
            user,
            ssl_mode: ssl_mode_name(options.get_ssl_mode()),
            tcp: socket.is_none(),
        }
    }
}

/// A PostgreSQL failure, classified. The sqlx error stays reachable as the source, for the debug
/// log.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(Some(&self.target), &self.source))]
pub struct DatabaseError {
    // Boxed: the error travels up through results of every database call.
    target: Box<Target>,
    #[source]
    source: sqlx::Error,
}

impl DatabaseError {
    /// A failure of a connection made with `options`.
    pub fn new(source: sqlx::Error, options: &PgConnectOptions) -> Self {
        Self {
            target: Box::new(Target::of(options)),
            source,
        }
    }

    /// The conversion for results of statements run on `pool`: `.map_err(DatabaseError::on(&pool))`.
    pub fn on(pool: &PgPool) -> impl Fn(sqlx::Error) -> Self + '_ {
        move |source| Self::new(source, &pool.connect_options())
    }

    /// Whether retrying may succeed (see [`super::is_transient`]).
    pub fn is_transient(&self) -> bool {
        super::is_transient(&self.source)
    }

    /// The server's SQLSTATE, where the server answered with an error.
    pub fn sqlstate(&self) -> Option<String> {
        sqlstate(&self.source)
    }
}

/// The server's SQLSTATE of a sqlx error, where the server answered with one.
pub fn sqlstate(err: &sqlx::Error) -> Option<String> {
    match err {
        sqlx::Error::Database(db) => db.code().map(|code| code.into_owned()),
        _ => None,
    }
}

/// A sqlx error whose connection is not known, in the same words.
pub fn describe_unlocated(err: &sqlx::Error) -> String {
    describe(None, err)
}

fn describe(target: Option<&Target>, source: &sqlx::Error) -> String {
    let (server, database, user) = match target {
        Some(t) => (
            t.server.as_str(),
            format!("\"{}\" on {}", t.database, t.server),
            format!("\"{}\"", t.user),
        ),
        None => (
            "the database server",
            "of DATABASE_URL".to_owned(),
            "of DATABASE_URL".to_owned(),
        ),
    };
    if let Some(tls) = rustls_error(source) {
        let host = target.map_or("", |t| t.host.as_str());
        return format!(
            "TLS handshake with {server} failed: {}",
            describe_tls_error(tls, host)
        );
    }
    let ssl_mode = target.map_or("", |t| t.ssl_mode);
    let tcp = target.is_none_or(|t| t.tcp);
    match source {
        // sqlx's only words for the server's 'N' answer to the SSLRequest.
        sqlx::Error::Tls(inner) if inner.to_string() == "server does not support TLS" => {
            format!(
                "TLS with {server} failed: the server does not support TLS but \
                     sslmode={ssl_mode}"
            )
        }
        sqlx::Error::Tls(inner) => format!("TLS setup for {server} failed: {inner}"),
        sqlx::Error::Configuration(inner) => {
            format!("cannot connect to {server}: unusable TLS options: {inner}")
        }
        // Over TCP, only reading sslrootcert, sslcert or sslkey can find no file.
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::NotFound && tcp => {
            format!("cannot read sslrootcert, sslcert or sslkey: {io}")
        }
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
            "cannot connect to {server}: connection refused; check the host and port in \
                 DATABASE_URL and that PostgreSQL is running (etl doctor)"
        ),
        sqlx::Error::Io(io) if io.kind() == std::io::ErrorKind::TimedOut => format!(
            "cannot connect to {server}: timed out; check the host and port in DATABASE_URL \
                 and the network between (etl doctor)"
        ),
        sqlx::Error::PoolTimedOut => format!(
            "cannot connect to {server}: timed out (refused or unreachable); check the host \
                 and port in DATABASE_URL and that PostgreSQL is running (etl doctor)"
        ),
        sqlx::Error::Io(io) => format!("cannot connect to {server}: {io}"),
        sqlx::Error::Database(db) => {
            let message = db.message();
            match db.code().as_deref() {
                Some("3D000") => format!(
                    "database {database} does not exist: create it, or correct the \
                         database name in DATABASE_URL"
                ),
                Some("28P01") => format!(
                    "authentication failed for user {user} at {server}: check the user \
                         name and password in DATABASE_URL"
                ),
                Some("28000") => {
                    format!("{server} refused the connection: authentication failed: {message}")
                }
                Some("42P01" | "3F000" | "42883") => {
                    format!("database {database} is not migrated ({message}): run `etl migrate`")
                }
                Some("42501") => format!(
                    "{message}: the database user {user} lacks the role this command needs \
                         (see docs/roles.md and `etl doctor`)"
                ),
                Some(code) if quotes_values(code) => {
                    format!(
                        "database {database} rejected a value ({})",
                        redacted(source)
                    )
                }
                Some(code) => format!("database {database}: {message} (SQLSTATE {code})"),
                None => format!("database {database}: {message}"),
            }
        }
        other => format!("database {database}: {other}"),
    }
}

/// Data exceptions and integrity violations can quote a row's values in their message
/// (`invalid input syntax for type inet: "…"`).
fn quotes_values(code: &str) -> bool {
    code.starts_with("22") || code.starts_with("23")
}

/// What may be said of a database error where it could concern a row's values (the pipeline's
/// logs and quarantine details): SQLSTATE and constraint, never the server's message or detail,
/// which can quote values; and of other errors, their kind.
pub fn redacted(err: &sqlx::Error) -> String {
    match err {
        sqlx::Error::Database(db) => match (db.code(), db.constraint()) {
            (Some(code), Some(constraint)) => format!("SQLSTATE {code}, constraint {constraint}"),
            (Some(code), None) => format!("SQLSTATE {code}"),
            _ => "database error".to_owned(),
        },
        sqlx::Error::Io(io) => format!("database connection failed ({})", io.kind()),
        sqlx::Error::PoolTimedOut => "no database connection within the pool timeout".to_owned(),
        // These can carry a value that failed to encode or decode.
        sqlx::Error::Encode(_) | sqlx::Error::Decode(_) | sqlx::Error::ColumnDecode { .. } => {
            "a value could not be encoded or decoded".to_owned()
        }
        other => other.to_string(),
    }
}

/// The rustls error behind a failed handshake: sqlx passes it on inside an I/O error.
pub(super) fn rustls_error(err: &sqlx::Error) -> Option<&rustls::Error> {
    match err {
        sqlx::Error::Io(io) => io.get_ref()?.downcast_ref(),
        sqlx::Error::Tls(inner) => inner.downcast_ref(),
        _ => None,
    }
}

fn describe_tls_error(err: &rustls::Error, host: &str) -> String {
    use rustls::{AlertDescription as Alert, CertificateError as Cert};
    match err {
        rustls::Error::InvalidCertificate(cert) => match cert {
            Cert::UnknownIssuer => "the server certificate is not signed by a CA in sslrootcert \
                or the built-in roots (UnknownIssuer)"
                .to_owned(),
            Cert::NotValidForName | Cert::NotValidForNameContext { .. } => format!(
                "the server certificate is not valid for the host name {host} (NotValidForName)"
            ),
            Cert::Expired | Cert::ExpiredContext { .. } => {
                "the server certificate has expired (Expired)".to_owned()
            }
            Cert::NotValidYet | Cert::NotValidYetContext { .. } => {
                "the server certificate is not valid yet (NotValidYet)".to_owned()
            }
            Cert::Revoked => "the server certificate has been revoked (Revoked)".to_owned(),
            other => format!("the server certificate was rejected: {other}"),
        },
        rustls::Error::AlertReceived(
            alert @ (Alert::BadCertificate
            | Alert::UnsupportedCertificate
            | Alert::CertificateRevoked
            | Alert::CertificateExpired
            | Alert::CertificateUnknown
            | Alert::UnknownCA
            | Alert::CertificateRequired),
        ) => format!("the server rejected the client certificate of sslcert/sslkey ({alert:?})"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::connect_options;
    use super::*;

    fn tls_failure(err: rustls::Error) -> sqlx::Error {
        sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::InvalidData, err))
    }

    fn url_options(query: &str) -> PgConnectOptions {
        connect_options(&format!("postgres://u:hunter2@127.0.0.1:5432/etl?{query}")).unwrap()
    }

    #[test]
    fn certificate_problems_are_named_without_the_url() {
        let options = url_options("sslmode=verify-full");
        let cases = [
            (
                rustls::CertificateError::UnknownIssuer,
                "not signed by a CA in sslrootcert",
            ),
            (
                rustls::CertificateError::NotValidForName,
                "not valid for the host name 127.0.0.1",
            ),
            (rustls::CertificateError::Expired, "has expired (Expired)"),
            (rustls::CertificateError::NotValidYet, "not valid yet"),
        ];
        for (problem, words) in cases {
            let text = DatabaseError::new(
                tls_failure(rustls::Error::InvalidCertificate(problem)),
                &options,
            )
            .to_string();
            assert!(
                text.starts_with("TLS handshake with 127.0.0.1:5432 failed: "),
                "{text}"
            );
            assert!(text.contains(words), "{text}");
            assert!(
                !text.contains("hunter2") && !text.contains("postgres://"),
                "{text}"
            );
        }
    }

    #[test]
    fn a_server_without_tls_is_named_with_the_mode() {
        let text = DatabaseError::new(
            sqlx::Error::Tls("server does not support TLS".into()),
            &url_options("sslmode=require"),
        )
        .to_string();
        assert_eq!(
            text,
            "TLS with 127.0.0.1:5432 failed: the server does not support TLS but sslmode=require"
        );
    }

    #[test]
    fn connection_failures_say_what_to_check() {
        let options = url_options("sslmode=disable");
        let refused = DatabaseError::new(
            sqlx::Error::Io(std::io::ErrorKind::ConnectionRefused.into()),
            &options,
        );
        assert!(refused
            .to_string()
            .starts_with("cannot connect to 127.0.0.1:5432: connection refused; check"));
        assert!(refused.is_transient());
        let timed_out = DatabaseError::new(sqlx::Error::PoolTimedOut, &options).to_string();
        assert!(timed_out.contains("timed out"), "{timed_out}");
        let unlocated = describe_unlocated(&sqlx::Error::PoolTimedOut);
        assert!(
            unlocated.starts_with("cannot connect to the database server"),
            "{unlocated}"
        );
    }
}
