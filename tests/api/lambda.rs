//! `etl lambda` under the real Lambda Runtime API protocol: a loopback server speaks the API
//! (`/2018-06-01/runtime/invocation/next`, `.../{id}/response`, `.../{id}/error`) as the Lambda
//! service does, the real binary runs against it as a function's `bootstrap`, and each test feeds
//! it SQS events shaped like those of an event source mapping.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use etl::domain::LoginEvent;
use md5::{Digest, Md5};
use serde_json::{json, Value};
use tokio::io::AsyncBufReadExt;
use tokio::sync::{mpsc, oneshot};

use crate::helpers::{event, generated, sample_bodies, socket_addr_of, TcpProxy, TestApp};

/// What the function answered for one invocation.
#[derive(Debug)]
enum Answer {
    /// Posted to `/response`: the `SQSBatchResponse`.
    Response(Value),
    /// Posted to `/error`: `errorType` and `errorMessage`.
    Error(Value),
}

impl Answer {
    /// The ids in `batchItemFailures`, sorted; fails the test if the invocation failed.
    fn failed_ids(&self) -> Vec<String> {
        let Answer::Response(response) = self else {
            panic!("expected a batch response, got {self:?}");
        };
        let failures = response["batchItemFailures"]
            .as_array()
            .unwrap_or_else(|| panic!("not an SQSBatchResponse: {response}"));
        let mut ids: Vec<String> = failures
            .iter()
            .map(|f| f["itemIdentifier"].as_str().unwrap().to_owned())
            .collect();
        ids.sort();
        ids
    }
}

struct Invocation {
    request_id: String,
    payload: Vec<u8>,
    deadline_ms: u64,
    answer: oneshot::Sender<Answer>,
}

struct Shared {
    queued: tokio::sync::Mutex<mpsc::Receiver<Invocation>>,
    pending: Mutex<HashMap<String, oneshot::Sender<Answer>>>,
    first_next: OnceLock<Instant>,
}

/// The Lambda Runtime API on loopback: `/next` long-polls until the test invokes.
struct RuntimeApi {
    addr: SocketAddr,
    invocations: mpsc::Sender<Invocation>,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApi {
    async fn start() -> Self {
        let (invocations, queued) = mpsc::channel(1);
        let shared = Arc::new(Shared {
            queued: tokio::sync::Mutex::new(queued),
            pending: Mutex::new(HashMap::new()),
            first_next: OnceLock::new(),
        });
        let routes = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(|state: State<Arc<Shared>>, id: Path<String>, body: Bytes| {
                    answered(state, id, body, Answer::Response)
                }),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(|state: State<Arc<Shared>>, id: Path<String>, body: Bytes| {
                    answered(state, id, body, Answer::Error)
                }),
            )
            .with_state(Arc::clone(&shared));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, routes).await.unwrap();
        });
        Self {
            addr,
            invocations,
            shared,
            server,
        }
    }

    /// Hands `payload` to the function with a deadline `timeout` from now, and waits for its
    /// answer.
    async fn invoke(&self, payload: &Value, timeout: Duration) -> Answer {
        let (answer, answered) = oneshot::channel();
        let deadline = SystemTime::now() + timeout;
        let invocation = Invocation {
            request_id: uuid::Uuid::new_v4().to_string(),
            payload: serde_json::to_vec(payload).unwrap(),
            deadline_ms: deadline.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64,
            answer,
        };
        self.invocations.send(invocation).await.unwrap();
        tokio::time::timeout(timeout + Duration::from_secs(20), answered)
            .await
            .expect("the function did not answer the invocation")
            .expect("the invocation was dropped")
    }

    /// When the function first asked for an invocation: its cold start ended.
    fn first_next(&self) -> Option<Instant> {
        self.shared.first_next.get().copied()
    }
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn next(State(shared): State<Arc<Shared>>) -> (StatusCode, HeaderMap, Vec<u8>) {
    shared.first_next.get_or_init(Instant::now);
    let Some(invocation) = shared.queued.lock().await.recv().await else {
        return (
            StatusCode::INTERNAL_SERVER_ERROR,
            HeaderMap::new(),
            Vec::new(),
        );
    };
    let mut headers = HeaderMap::new();
    let header = |value: &str| HeaderValue::from_str(value).unwrap();
    headers.insert(
        "lambda-runtime-aws-request-id",
        header(&invocation.request_id),
    );
    headers.insert(
        "lambda-runtime-deadline-ms",
        header(&invocation.deadline_ms.to_string()),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        header("arn:aws:lambda:us-east-1:000000000000:function:etl-test"),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        header("Root=1-5759e988-bd862e3fe1be46a994272793;Parent=53995c3f42cd8ad8;Sampled=1"),
    );
    headers.insert("content-type", header("application/json"));
    shared
        .pending
        .lock()
        .unwrap()
        .insert(invocation.request_id, invocation.answer);
    (StatusCode::OK, headers, invocation.payload)
}

async fn answered(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: Bytes,
    answer: fn(Value) -> Answer,
) -> StatusCode {
    let Some(pending) = shared.pending.lock().unwrap().remove(&id) else {
        return StatusCode::BAD_REQUEST;
    };
    let value = serde_json::from_slice(&body).unwrap_or_else(|err| {
        panic!(
            "the function's answer is not JSON ({err}): {}",
            String::from_utf8_lossy(&body)
        )
    });
    let _ = pending.send(answer(value));
    StatusCode::ACCEPTED
}

/// The real binary, run as a custom runtime runs it: `bootstrap`, without arguments.
struct Function {
    child: tokio::process::Child,
    logs: Arc<Mutex<String>>,
    spawned: Instant,
    dir: PathBuf,
}

impl Function {
    async fn start(api: &RuntimeApi, database_url: &str, log_level: &str) -> Self {
        Self::start_with(api, ("DATABASE_URL", database_url), log_level).await
    }

    /// The function with the database given as `(variable, value)`: `DATABASE_URL` or
    /// `ETL_DATABASE_URL_SECRET`, and no other.
    async fn start_with(api: &RuntimeApi, database: (&str, &str), log_level: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("etl-lambda-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // ETL_LAMBDA_BIN: a release build, for the measurement below.
        let binary = std::env::var("ETL_LAMBDA_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|_| PathBuf::from(env!("CARGO_BIN_EXE_etl")));
        std::os::unix::fs::symlink(
            std::fs::canonicalize(binary).unwrap(),
            dir.join("bootstrap"),
        )
        .unwrap();
        let spawned = Instant::now();
        let mut child = tokio::process::Command::new(dir.join("bootstrap"))
            .env_remove("DATABASE_URL")
            .env(database.0, database.1)
            .env("AWS_LAMBDA_RUNTIME_API", api.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "etl-test")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "1024")
            .env("AWS_LAMBDA_LOG_GROUP_NAME", "/aws/lambda/etl-test")
            .env(
                "AWS_LAMBDA_LOG_STREAM_NAME",
                "2026/11/30/[$LATEST]0123456789abcdef",
            )
            .env("ETL_LOG", log_level)
            .env_remove("ETL_QUEUE_URL")
            .env_remove("ETL_DB_MAX_CONNECTIONS")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let logs = Arc::new(Mutex::new(String::new()));
        let mut lines = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
        let sink = Arc::clone(&logs);
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        Self {
            child,
            logs,
            spawned,
            dir,
        }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Function {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One SQS record as an event source mapping delivers it.
fn record(message_id: &str, body: &str, receive_count: u32) -> Value {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        .to_string();
    json!({
        "messageId": message_id,
        "receiptHandle": format!("AQEB{}", uuid::Uuid::new_v4().simple()),
        "body": body,
        "attributes": {
            "ApproximateReceiveCount": receive_count.to_string(),
            "SentTimestamp": now_ms,
            "SenderId": "AIDAIENQZJOLO23YVJ4VO",
            "ApproximateFirstReceiveTimestamp": now_ms,
        },
        "messageAttributes": {},
        "md5OfBody": hex::encode(Md5::digest(body.as_bytes())),
        "eventSource": "aws:sqs",
        "eventSourceARN": "arn:aws:sqs:us-east-1:000000000000:login-queue",
        "awsRegion": "us-east-1",
    })
}

/// An SQS event of `bodies`, each a new message received `receive_count` times; and its ids.
fn sqs_event(bodies: &[String], receive_count: u32) -> (Value, Vec<String>) {
    let ids: Vec<String> = bodies
        .iter()
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    (redelivered(&ids, bodies, receive_count), ids)
}

/// The same messages again, as SQS redelivers them.
fn redelivered(ids: &[String], bodies: &[String], receive_count: u32) -> Value {
    let records: Vec<Value> = ids
        .iter()
        .zip(bodies)
        .map(|(id, body)| record(id, body, receive_count))
        .collect();
    json!({ "Records": records })
}

/// Bodies a producer should never send: each must end in quarantine, never lost, never a panic.
fn hostile_bodies() -> Vec<String> {
    let valid = event("10.7.0.1", "700-00-0001");
    vec![
        "not json".into(),
        "[]".into(),
        "null".into(),
        "\u{feff}{}".into(),
        valid.replacen('{', "{\"device_id\": \"1\", ", 1),
        valid.replace("\"RU\"", "\"R\\u0000U\""),
        valid.replace("700-00-0001", &"9".repeat(300)),
        format!("{{\"a\": {}{}}}", "[".repeat(5000), "]".repeat(5000)),
    ]
}

async fn count(app: &TestApp, sql: &str) -> i64 {
    app.count(sql).await
}

#[tokio::test]
async fn an_event_of_the_sample_and_hostile_bodies_commits_once_with_no_failures() {
    let app = TestApp::spawn().await;
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, &app.database_url, "trace").await;
    let mut bodies = sample_bodies();
    let hostile = hostile_bodies();
    bodies.extend(hostile.iter().cloned());
    // A valid event with free text that looks like SQL, and one near 100 KiB.
    let valid = event("10.7.0.2", "700-00-0002");
    bodies.push(valid.replace("\"android\"", "\"'); DROP TABLE user_logins; --\""));
    bodies.push(valid.replacen(
        '{',
        &format!("{{\"padding\": \"{}\", ", "x".repeat(100 * 1024)),
        1,
    ));
    let valid_count = bodies
        .iter()
        .filter(|b| LoginEvent::parse(b).is_ok())
        .count() as i64;
    let invalid_count = bodies.len() as i64 - valid_count;
    assert!(invalid_count >= hostile.len() as i64);

    let (event, ids) = sqs_event(&bodies, 1);
    let answer = api.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        answer.failed_ids(),
        Vec::<String>::new(),
        "{}",
        function.logs()
    );
    let first_next = api.first_next().expect("the function asked for an event");
    eprintln!(
        "cold start (debug build): {} ms to the first /next",
        (first_next - function.spawned).as_millis()
    );

    let rows = count(&app, "SELECT count(*) FROM user_logins").await;
    assert_eq!(rows, valid_count);
    assert_eq!(
        count(&app, "SELECT count(DISTINCT message_id) FROM user_logins").await,
        valid_count
    );
    assert_eq!(
        count(&app, "SELECT count(*) FROM etl.quarantine").await,
        invalid_count
    );
    // Every message is claimed by its SQS id, the key of a redelivery.
    let claimed: Vec<String> =
        sqlx::query_scalar("SELECT message_id FROM etl.processed_messages ORDER BY 1")
            .fetch_all(&app.pool)
            .await
            .unwrap();
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(claimed, expected);

    // The same event again (SQS delivers at least once): nothing new, nothing failed.
    let answer = api
        .invoke(&redelivered(&ids, &bodies, 2), Duration::from_secs(60))
        .await;
    assert_eq!(answer.failed_ids(), Vec::<String>::new());
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, rows);
    assert_eq!(
        count(&app, "SELECT count(*) FROM etl.quarantine").await,
        invalid_count
    );

    // Nothing personal in the logs, at trace level (the runtime logs raw events at TRACE).
    let logs = function.logs();
    assert!(logs.contains("event committed"), "{logs}");
    assert!(!logs.contains("panicked"), "{logs}");
    for body in &bodies {
        assert!(!logs.contains(body.as_str()), "a body reached the logs");
        if let Ok(event) = LoginEvent::parse(body) {
            assert!(
                !logs.contains(&event.ip.canonical()),
                "an ip reached the logs"
            );
            assert!(
                !logs.contains(event.device_id.canonical()),
                "a device_id reached the logs"
            );
        }
    }
}

/// The database URL read from Secrets Manager at cold start, none in the environment: the
/// function commits as with DATABASE_URL.
#[tokio::test]
async fn the_database_url_can_come_from_secrets_manager() {
    let app = TestApp::spawn().await;
    let secret = format!("etl-test-{}", uuid::Uuid::new_v4().simple());
    aws_sdk_secretsmanager::Client::new(&app.sdk)
        .create_secret()
        .name(&secret)
        .secret_string(&app.database_url)
        .send()
        .await
        .unwrap();
    let api = RuntimeApi::start().await;
    let function = Function::start_with(&api, ("ETL_DATABASE_URL_SECRET", &secret), "info").await;
    let (event, _) = sqs_event(&[event("10.7.0.9", "700-00-0009")], 1);
    let answer = api.invoke(&event, Duration::from_secs(60)).await;
    assert_eq!(
        answer.failed_ids(),
        Vec::<String>::new(),
        "{}",
        function.logs()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, 1);
    assert!(
        !function.logs().contains(&app.database_url),
        "the URL reached the logs"
    );
}

#[tokio::test]
async fn a_database_outage_fails_exactly_the_events_messages_and_their_redelivery_commits() {
    let app = TestApp::spawn().await;
    let target = socket_addr_of(&app.database_url);
    let proxy = TcpProxy::start(target).await;
    // Without TLS, a cut connection is a lost connection (transient, retried); cut during the
    // TLS handshake it reads as a protocol error, which is not retried.
    let proxied = format!(
        "{}{}sslmode=disable",
        app.database_url.replace(
            &format!(":{}/", target.port()),
            &format!(":{}/", proxy.port),
        ),
        if app.database_url.contains('?') {
            '&'
        } else {
            '?'
        }
    );
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, &proxied, "info").await;

    let (warm, _) = sqs_event(&[event("10.8.0.1", "800-00-0001")], 1);
    let answer = api.invoke(&warm, Duration::from_secs(30)).await;
    assert_eq!(
        answer.failed_ids(),
        Vec::<String>::new(),
        "{}",
        function.logs()
    );

    // PostgreSQL becomes unreachable: every connection is cut. The commit retries until the
    // invocation's deadline is near, then reports the whole event (one transaction) as failed.
    proxy.pause();
    let bodies: Vec<String> = (2..7)
        .map(|i| event(&format!("10.8.0.{i}"), &format!("800-00-000{i}")))
        .chain(["not json".to_owned()])
        .collect();
    let (failing, ids) = sqs_event(&bodies, 1);
    let started = Instant::now();
    let answer = api.invoke(&failing, Duration::from_secs(3)).await;
    let mut expected = ids.clone();
    expected.sort();
    assert_eq!(answer.failed_ids(), expected, "{}", function.logs());
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(2),
        "gave up before the deadline: {elapsed:?}"
    );
    assert!(
        elapsed < Duration::from_secs(3),
        "answered after the deadline: {elapsed:?}"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, 1);
    assert_eq!(count(&app, "SELECT count(*) FROM etl.quarantine").await, 0);
    let logs = function.logs();
    assert!(logs.contains("database write failed; retrying"), "{logs}");
    assert!(
        logs.contains("the invocation's deadline came before the commit"),
        "{logs}"
    );

    // SQS redelivers exactly those; the database is back.
    proxy.resume();
    let answer = api
        .invoke(&redelivered(&ids, &bodies, 2), Duration::from_secs(30))
        .await;
    assert_eq!(
        answer.failed_ids(),
        Vec::<String>::new(),
        "{}",
        function.logs()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, 6);
    assert_eq!(count(&app, "SELECT count(*) FROM etl.quarantine").await, 1);
}

#[tokio::test]
async fn an_event_that_cannot_be_answered_per_message_fails_whole_and_the_function_goes_on() {
    let app = TestApp::spawn().await;
    let api = RuntimeApi::start().await;
    let function = Function::start(&api, &app.database_url, "info").await;

    // Not an SQS event (a body that is a number): refused before the handler, never quoted.
    let payload = json!({"Records": [{"messageId": "m-1", "body": 987654321}]});
    let Answer::Error(error) = api.invoke(&payload, Duration::from_secs(30)).await else {
        panic!("expected an invocation error");
    };
    let message = error["errorMessage"].as_str().unwrap();
    assert!(
        message.contains("the payload is not an SQS event"),
        "{error}"
    );
    assert!(!message.contains("987654321"), "{error}");

    // A record without a messageId cannot be listed in batchItemFailures: the event fails.
    let mut records = vec![record("m-2", &event("10.9.0.1", "900-00-0001"), 1)];
    let mut anonymous = record("m-3", "{}", 1);
    anonymous.as_object_mut().unwrap().remove("messageId");
    records.push(anonymous);
    let Answer::Error(error) = api
        .invoke(&json!({ "Records": records }), Duration::from_secs(30))
        .await
    else {
        panic!("expected an invocation error");
    };
    assert_eq!(error["errorType"], "InvalidSqsEvent");
    assert_eq!(
        error["errorMessage"],
        "record 1 of the SQS event has no messageId"
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, 0);

    // The function is still there for the next event.
    let (valid, _) = sqs_event(&[event("10.9.0.2", "900-00-0002")], 1);
    let answer = api.invoke(&valid, Duration::from_secs(30)).await;
    assert_eq!(
        answer.failed_ids(),
        Vec::<String>::new(),
        "{}",
        function.logs()
    );
    assert_eq!(count(&app, "SELECT count(*) FROM user_logins").await, 1);
    assert!(!function.logs().contains("panicked"));
}

/// Cold start and messages per second by batch size, for BENCHMARKS.md; a measurement, not a
/// test. With a release build:
/// `cargo build --release && ETL_LAMBDA_BIN=target/release/etl cargo nextest run --test api
/// lambda_measure --run-ignored only --no-capture`
#[tokio::test]
#[ignore = "a measurement for BENCHMARKS.md"]
async fn lambda_measure_cold_start_and_throughput() {
    const RUNS: usize = 3;
    let app = TestApp::spawn().await;
    let mut to_next = Vec::new();
    let mut to_response = Vec::new();
    for _ in 0..RUNS {
        let api = RuntimeApi::start().await;
        let function = Function::start(&api, &app.database_url, "info").await;
        let (event, _) = sqs_event(&generated(10, rand::random()).0, 1);
        let answer = api.invoke(&event, Duration::from_secs(30)).await;
        assert_eq!(answer.failed_ids(), Vec::<String>::new());
        to_response.push(function.spawned.elapsed().as_millis());
        to_next.push((api.first_next().unwrap() - function.spawned).as_millis());
    }
    to_next.sort();
    to_response.sort();
    eprintln!(
        "cold start: process start to first /next {to_next:?} ms (median {}); to the first \
         response of 10 messages {to_response:?} ms (median {})",
        to_next[RUNS / 2],
        to_response[RUNS / 2]
    );

    let api = RuntimeApi::start().await;
    let _function = Function::start(&api, &app.database_url, "info").await;
    for batch in [10, 100, 1000, 10_000] {
        let mut rates = Vec::new();
        for _ in 0..RUNS {
            let (bodies, _) = generated(batch, rand::random());
            let (event, _) = sqs_event(&bodies, 1);
            let started = Instant::now();
            let answer = api.invoke(&event, Duration::from_secs(120)).await;
            let elapsed = started.elapsed().as_secs_f64();
            assert_eq!(answer.failed_ids(), Vec::<String>::new());
            rates.push((batch as f64 / elapsed).round() as u64);
        }
        rates.sort();
        eprintln!(
            "batch {batch}: {rates:?} messages/s per invocation (median {})",
            rates[RUNS / 2]
        );
    }
}
