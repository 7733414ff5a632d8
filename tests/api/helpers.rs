//! `TestApp`: a fresh database, queue and KMS key per test, and the `etl` binary to drive them.

use std::path::PathBuf;
use std::process::{Output, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_sqs::types::QueueAttributeName;
use sqlx::{Connection, Executor, PgConnection, PgPool};

use etl::adapters::aws;
use etl::adapters::kms::Kms;
use etl::adapters::sqs::SqsQueue;
use etl::pipeline::{Summary, Transformer};

/// The admin URL of the test server, from `scripts/stack up`.
fn admin_database_url() -> String {
    std::env::var("ETL_TEST_DATABASE_URL")
        .or_else(|_| std::env::var("DATABASE_URL"))
        .unwrap_or_else(|_| {
            panic!("DATABASE_URL is not set: run `scripts/test`, or `eval \"$(scripts/stack up)\"` first")
        })
}

pub struct TestApp {
    pub database_url: String,
    pub pool: PgPool,
    pub queue_url: String,
    pub kms_key_id: String,
    pub sqs: aws_sdk_sqs::Client,
    pub sdk: aws_config::SdkConfig,
    /// Recovery services started for this app, killed when it is dropped.
    services: std::sync::Mutex<Vec<tokio::process::Child>>,
}

impl TestApp {
    /// A migrated database with data keys, an empty queue and a KMS key.
    pub async fn spawn() -> Self {
        let app = Self::spawn_bare().await;
        app.etl_ok(&["migrate"]).await;
        app.etl_ok(&["keys", "init", "--kms-key-id", &app.kms_key_id])
            .await;
        app
    }

    /// A new, empty database (no migrations, no keys), queue and KMS key.
    pub async fn spawn_bare() -> Self {
        let admin_url = admin_database_url();
        let name = format!("etl_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(&admin_url)
            .await
            .unwrap_or_else(|err| panic!("cannot reach the test PostgreSQL server: {err}"));
        admin
            .execute(format!(r#"CREATE DATABASE "{name}""#).as_str())
            .await
            .unwrap();
        let database_url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{name}"),
            None => panic!("DATABASE_URL has no database name"),
        };
        let pool = PgPool::connect(&database_url).await.unwrap();

        let sdk = aws::load_config(Duration::from_secs(30)).await;
        let sqs = aws_sdk_sqs::Client::new(&sdk);
        let kms = aws_sdk_kms::Client::new(&sdk);
        let queue_url = sqs
            .create_queue()
            .queue_name(format!("etl-test-{}", uuid::Uuid::new_v4().simple()))
            .send()
            .await
            .unwrap_or_else(|err| panic!("cannot reach SQS at AWS_ENDPOINT_URL: {err:?}"))
            .queue_url
            .unwrap();
        let kms_key_id = create_kms_key(&kms).await;
        Self {
            database_url,
            pool,
            queue_url,
            kms_key_id,
            sqs,
            sdk,
            services: std::sync::Mutex::default(),
        }
    }

    /// The `etl` binary with this app's database and queue in its environment.
    pub fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_etl"));
        command
            .args(args)
            .env("DATABASE_URL", &self.database_url)
            .env("ETL_QUEUE_URL", &self.queue_url)
            .env_remove("ETL_KMS_KEY_ID")
            .env("ETL_METRICS_ADDR", "127.0.0.1:0")
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    pub async fn etl(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// Runs `etl` connected as another database user (a login role's URL).
    pub async fn etl_as(&self, database_url: &str, args: &[&str]) -> Output {
        self.command(args)
            .env("DATABASE_URL", database_url)
            .output()
            .await
            .unwrap()
    }

    /// Starts `etl recovery-service` on this app's database, as the schema owner; it runs until
    /// the app is dropped. (A test of the opener role starts one as its login with
    /// [`Self::recovery_service_as`].)
    pub fn start_recovery_service(&self) {
        let service = self.recovery_service_as(&self.database_url);
        self.services
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .push(service);
    }

    /// `etl recovery-service` as another database user; it stops when the handle is dropped.
    pub fn recovery_service_as(&self, database_url: &str) -> tokio::process::Child {
        self.command(&["recovery-service", "--poll", "200ms"])
            .env("DATABASE_URL", database_url)
            .stdout(Stdio::null())
            .spawn()
            .unwrap()
    }

    /// Holds `user_logins` locked, so no batch can commit until the transaction ends.
    pub async fn lock_user_logins(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut blocker = self.pool.begin().await.unwrap();
        sqlx::query("LOCK TABLE user_logins IN ACCESS EXCLUSIVE MODE")
            .execute(&mut *blocker)
            .await
            .unwrap();
        blocker
    }

    /// Runs `etl` and fails the test unless it exits 0; returns stdout.
    pub async fn etl_ok(&self, args: &[&str]) -> String {
        let output = self.etl(args).await;
        assert!(
            output.status.success(),
            "etl {args:?} failed with {}:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    }

    /// `etl ingest --drain --summary-json`, returning the summary and the log output.
    pub async fn drain(&self, extra: &[&str]) -> (Summary, String) {
        let mut args = vec!["ingest", "--drain", "--summary-json"];
        args.extend_from_slice(extra);
        let output = self.etl(&args).await;
        let logs = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "drain failed with {}:\n{logs}",
            output.status
        );
        let summary = serde_json::from_slice(&output.stdout).unwrap_or_else(|err| {
            panic!(
                "summary is not the summary's JSON ({err}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        });
        (summary, logs)
    }

    pub async fn send(&self, bodies: &[String]) {
        let queue = self.queue();
        for chunk in bodies.chunks(10) {
            assert_eq!(
                queue.send_batch(chunk).await.unwrap(),
                0,
                "SQS refused messages"
            );
        }
    }

    pub fn queue(&self) -> SqsQueue {
        SqsQueue::json(&self.sdk, &self.queue_url)
    }

    /// Visible plus in-flight messages.
    pub async fn queue_depth(&self) -> u64 {
        let attributes = self
            .sqs
            .get_queue_attributes()
            .queue_url(&self.queue_url)
            .attribute_names(QueueAttributeName::All)
            .send()
            .await
            .unwrap()
            .attributes
            .unwrap_or_default();
        let count = |name| {
            attributes
                .get(&name)
                .map_or(0, |v: &String| v.parse::<u64>().unwrap())
        };
        count(QueueAttributeName::ApproximateNumberOfMessages)
            + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
    }

    /// The unwrapped keys, as `etl ingest` holds them.
    pub async fn transformer(&self) -> Transformer {
        etl::keys::load_transformer(&self.pool, &Kms::new(&self.sdk))
            .await
            .unwrap()
    }

    /// A new login user in `group` (etl_ingest, etl_analyst or etl_recoverer): its name and a
    /// URL to this app's database as that user. Made as docs/roles.md asks an administrator to:
    /// a transaction it leaves idle ends after a minute.
    pub async fn login_user(&self, group: &str) -> (String, String) {
        let name = format!("u_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
        for sql in [
            format!("CREATE ROLE {name} LOGIN PASSWORD 'pw' IN ROLE {group}"),
            format!("ALTER ROLE {name} SET idle_in_transaction_session_timeout = '1min'"),
        ] {
            sqlx::query(&sql).execute(&self.pool).await.unwrap();
        }
        let (_, after_scheme) = self.database_url.split_once("://").unwrap();
        let (_, host_and_db) = after_scheme.split_once('@').unwrap();
        (name.clone(), format!("postgres://{name}:pw@{host_and_db}"))
    }

    /// Sends `bodies` and drains them as the admin user.
    pub async fn ingest(&self, bodies: &[String]) -> Summary {
        self.send(bodies).await;
        self.drain(&[]).await.0
    }

    pub async fn count(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql).fetch_one(&self.pool).await.unwrap()
    }
}

/// A new symmetric KMS key; returns its id.
pub async fn create_kms_key(kms: &aws_sdk_kms::Client) -> String {
    kms.create_key()
        .send()
        .await
        .unwrap()
        .key_metadata
        .unwrap()
        .key_id
}

/// Polls `condition` every 50 ms until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The real queue content, when this checkout sits in the workspace that has it.
pub fn real_sample_path() -> Option<PathBuf> {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/data/login-queue-sample.jsonl");
    path.exists().then_some(path)
}

/// The real sample's bodies, or 100 generated ones of the same shape where it is absent.
pub fn sample_bodies() -> Vec<String> {
    match real_sample_path() {
        Some(path) => std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .filter(|line| !line.is_empty())
            .map(str::to_owned)
            .collect(),
        None => etl::synthetic::Generator::new(etl::synthetic::SyntheticOptions {
            count: 100,
            seed: Some(100),
            duplicate_share: 0.0,
            malformed_share: 0.02,
            ..Default::default()
        })
        .collect(),
    }
}

/// A valid body with the given ip and device_id.
pub fn event(ip: &str, device_id: &str) -> String {
    serde_json::json!({
        "user_id": uuid::Uuid::new_v4().to_string(),
        "app_version": "2.3.0",
        "device_type": "android",
        "ip": ip,
        "locale": "RU",
        "device_id": device_id,
    })
    .to_string()
}

/// A TCP forwarder on loopback that can be cut: while paused it closes every open connection and
/// every new one at once, as a crashed or unreachable server would. Each test gets its own, so a
/// test can take "PostgreSQL" or "SQS" down without touching the shared servers.
pub struct TcpProxy {
    pub port: u16,
    paused: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpProxy {
    pub async fn start(target: std::net::SocketAddr) -> Self {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let paused = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (paused_flag, live) = (paused.clone(), connections.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if paused_flag.load(Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                live.lock().unwrap().push(task.abort_handle());
            }
        });
        Self {
            port,
            paused,
            connections,
            accept,
        }
    }

    /// The target's outage begins: open connections are cut, new ones closed at once.
    pub fn pause(&self) {
        self.paused.store(true, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().unwrap().drain(..) {
            connection.abort();
        }
    }

    pub fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.accept.abort();
        self.pause();
    }
}

/// Host and port of a URL like `scheme://user:pass@host:port/path`.
pub fn socket_addr_of(url: &str) -> std::net::SocketAddr {
    let after_scheme = url.split_once("://").unwrap().1;
    let authority = after_scheme.split('/').next().unwrap();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    std::net::ToSocketAddrs::to_socket_addrs(host_port)
        .unwrap()
        .next()
        .unwrap()
}

/// Generated bodies: `count` messages with a share of malformed ones; returns them with the
/// number of valid events among them.
pub fn generated(count: usize, seed: u64) -> (Vec<String>, usize) {
    let bodies: Vec<String> = etl::synthetic::Generator::new(etl::synthetic::SyntheticOptions {
        count,
        seed: Some(seed),
        malformed_share: 0.02,
        ..Default::default()
    })
    .collect();
    let valid = bodies
        .iter()
        .filter(|b| etl::domain::LoginEvent::parse(b).is_ok())
        .count();
    (bodies, valid)
}

impl TestApp {
    /// Sends many bodies quickly, with concurrent batch sends.
    pub async fn send_many(&self, bodies: &[String]) {
        let mut sends = tokio::task::JoinSet::new();
        for chunk in bodies.chunks(100) {
            let (queue, chunk) = (self.queue(), chunk.to_vec());
            sends.spawn(async move {
                for batch in chunk.chunks(10) {
                    assert_eq!(queue.send_batch(batch).await.unwrap(), 0);
                }
            });
            if sends.len() >= 8 {
                sends.join_next().await.unwrap().unwrap();
            }
        }
        while let Some(joined) = sends.join_next().await {
            joined.unwrap();
        }
    }

    /// Exactly one row per valid message, one quarantine entry per invalid one, an empty queue.
    pub async fn assert_exactly_once(&self, valid: usize, invalid: usize) {
        assert_eq!(
            self.count("SELECT count(*) FROM user_logins").await,
            valid as i64,
            "rows"
        );
        assert_eq!(
            self.count("SELECT count(DISTINCT message_id) FROM user_logins")
                .await,
            valid as i64,
            "a message made two rows"
        );
        assert_eq!(
            self.count("SELECT count(*) FROM etl.quarantine").await,
            invalid as i64,
            "quarantine"
        );
        assert_eq!(self.queue_depth().await, 0, "queue not empty");
    }
}

/// Fails the test, showing stderr, unless the command exited with `code`.
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A plain HTTP/1.1 GET of `path` on `addr`: the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, body)| body.to_owned());
    Ok((status, body))
}
