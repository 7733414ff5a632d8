//! TLS to PostgreSQL: the local stack's server speaks TLS with a throwaway CA (`ETL_PG_CA_FILE`) and
//! admits the login role etl_tls (password etl_tls) over TLS only.

use std::process::{Output, Stdio};

use sqlx::{Connection, PgConnection};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::helpers::{socket_addr_of, TestApp};

/// The first message of a TLS-asking client: length 8, then the SSLRequest code 80877103.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

fn ca_file() -> String {
    std::env::var("ETL_PG_CA_FILE")
        .expect("ETL_PG_CA_FILE is not set: run `eval \"$(scripts/stack up)\"` first")
}

/// `host:port` of the test server.
fn server(app: &TestApp) -> String {
    socket_addr_of(&app.database_url).to_string()
}

/// A URL to `app`'s database as etl_tls, which may connect to it.
async fn etl_tls_url(app: &TestApp, host: &str, password: &str, query: &str) -> String {
    let database = app.database_url.rsplit_once('/').unwrap().1;
    sqlx::query(&format!(
        r#"GRANT CONNECT ON DATABASE "{database}" TO etl_tls"#
    ))
    .execute(&app.pool)
    .await
    .unwrap();
    let port = socket_addr_of(&app.database_url).port();
    format!("postgres://etl_tls:{password}@{host}:{port}/{database}?{query}")
}

/// `etl` with `url` as DATABASE_URL and no PG* TLS variables from the caller's environment.
async fn etl_with_url(url: &str, args: &[&str]) -> Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_etl"))
        .args(args)
        .env("DATABASE_URL", url)
        .env_remove("PGSSLMODE")
        .env_remove("PGSSLROOTCERT")
        .env_remove("PGSSLCERT")
        .env_remove("PGSSLKEY")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

#[tokio::test]
async fn verify_full_with_the_stack_ca_connects_encrypted() {
    let app = TestApp::spawn_bare().await;
    let query = format!("sslmode=verify-full&sslrootcert={}", ca_file());
    // The certificate names both; the second checks a DNS name, the first an IP address.
    for host in ["127.0.0.1", "localhost"] {
        let url = etl_tls_url(&app, host, "etl_tls", &query).await;
        let options = etl::adapters::postgres::connect_options(&url).unwrap();
        let mut connection = PgConnection::connect_with(&options)
            .await
            .unwrap_or_else(|err| panic!("{host}: {err}"));
        let encrypted: bool =
            sqlx::query_scalar("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .fetch_one(&mut connection)
                .await
                .unwrap();
        assert!(encrypted, "{host}: the session is not encrypted");
    }
}

/// A CA certificate other than the stack's, in a directory of its own (removed by the caller).
async fn another_ca() -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("etl-tls-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca = dir.join("wrong-ca.crt");
    let made = tokio::process::Command::new("openssl")
        .args("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1".split(' '))
        .args(["-subj", "/CN=not the stack CA", "-keyout"])
        .arg(dir.join("wrong-ca.key"))
        .arg("-out")
        .arg(&ca)
        .output()
        .await
        .unwrap();
    assert!(made.status.success(), "openssl: {made:?}");
    (dir, ca)
}

/// As libpq: `require` with an `sslrootcert` verifies the chain, so a server whose certificate
/// another CA signed is refused under it as under `verify-ca`.
#[tokio::test]
async fn require_with_a_root_certificate_refuses_another_ca() {
    let app = TestApp::spawn_bare().await;
    let (dir, wrong_ca) = another_ca().await;
    for mode in ["require", "verify-ca"] {
        let query = format!("sslmode={mode}&sslrootcert={}", wrong_ca.display());
        let url = etl_tls_url(&app, "127.0.0.1", "etl_tls", &query).await;
        let output = etl_with_url(&url, &["migrate"]).await;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{mode}: {stderr}");
        assert!(stderr.contains("UnknownIssuer"), "{mode}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_wrong_ca_fails_naming_the_certificate_problem_without_the_url() {
    let app = TestApp::spawn_bare().await;
    let (dir, wrong_ca) = another_ca().await;

    let password = "hunter2-never-echoed";
    let query = format!("sslmode=verify-full&sslrootcert={}", wrong_ca.display());
    let url = etl_tls_url(&app, "127.0.0.1", password, &query).await;
    let output = etl_with_url(&url, &["migrate"]).await;
    std::fs::remove_dir_all(&dir).unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&format!("TLS handshake with {} failed", server(&app)))
            && stderr.contains("UnknownIssuer"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        !stderr.contains(password) && !stderr.contains("postgres://"),
        "{stderr}"
    );
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_clearly() {
    // A server that answers the SSLRequest with 'N', as PostgreSQL with ssl = off does.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let server = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await.unwrap();
        let mut request = [0; 8];
        socket.read_exact(&mut request).await.unwrap();
        socket.write_all(b"N").await.unwrap();
        request
    });

    let url = format!("postgres://etl_tls:hunter2@127.0.0.1:{port}/etl?sslmode=require");
    let output = etl_with_url(&url, &["migrate"]).await;
    assert_eq!(server.await.unwrap(), SSL_REQUEST);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("the server does not support TLS but sslmode=require"),
        "{stderr}"
    );
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

#[tokio::test]
async fn pg_hba_refuses_etl_tls_without_tls() {
    let app = TestApp::spawn_bare().await;
    let url = etl_tls_url(&app, "127.0.0.1", "etl_tls", "sslmode=disable").await;
    let output = etl_with_url(&url, &["migrate"]).await;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        // PostgreSQL 12 and later say "no encryption", 10 and 11 "SSL off".
        stderr.contains("pg_hba.conf rejects connection")
            && (stderr.contains("no encryption") || stderr.contains("SSL off")),
        "{stderr}"
    );
}

#[tokio::test]
async fn doctor_says_whether_the_connection_is_encrypted() {
    let app = TestApp::spawn_bare().await;
    let verified = format!("sslmode=verify-full&sslrootcert={}", ca_file());
    let cases = [
        (
            etl_tls_url(&app, "127.0.0.1", "etl_tls", &verified).await,
            "OK    database TLS: encrypted (TLSv1.3), server certificate and host name verified",
        ),
        (
            format!("{}?sslmode=require", app.database_url),
            "OK    database TLS: encrypted (TLSv1.3), server certificate not verified (sslmode=require)",
        ),
        (
            format!("{}?sslmode=disable", app.database_url),
            "OK    database TLS: not encrypted (this machine, sslmode=disable)",
        ),
    ];
    for (url, line) in cases {
        let output = etl_with_url(&url, &["doctor"]).await;
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            stdout.lines().any(|l| l == line),
            "expected {line:?} in:\n{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
