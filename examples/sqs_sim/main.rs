//! An in-memory Amazon SQS for benchmarks: the AWS JSON 1.0 protocol over HTTP on 127.0.0.1 for
//! the calls `etl` makes (plus CreateQueue, for scripts), a latency per call like in-region SQS,
//! and no throughput cap of its own, so `etl` runs through the real AWS SDK at rates LocalStack
//! cannot serve. Dev-only: correctness tests stay on LocalStack.
//!
//! `cargo run --release --example sqs_sim -- --port 0 --latency-ms 15 [--queue NAME]...`
//!
//! Prints `listening on http://127.0.0.1:PORT` once it accepts calls; queue URLs are
//! `http://127.0.0.1:PORT/000000000000/NAME`. Signatures are not checked. Exits on SIGINT/SIGTERM.
//! `GET /_stats` answers the number of calls per action so far, as one JSON object, so a
//! benchmark can report SQS requests per message by call.
//!
//! Not simulated: FIFO queues, delays, message attributes, dead-letter queues, retention, and the
//! single-message calls. Stricter than SQS on one point: a receipt handle deletes (or changes the
//! visibility of) its message only while that message is in flight and the handle is its latest,
//! so a consumer that deletes after its visibility timeout lapsed sees `ReceiptHandleIsInvalid`.
//! Visible messages come out oldest first, redeliveries behind them. Memory is about 430 bytes a
//! message with 170-byte bodies (a million queued: about 430 MB resident).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use clap::Parser;
use md5::{Digest, Md5};
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const ACCOUNT: &str = "000000000000";
const REGION: &str = "us-east-1";
const MAX_BATCH: usize = 10;
const MAX_VISIBILITY_SECONDS: u64 = 43_200;
const MAX_WAIT_SECONDS: u64 = 20;
/// The system attributes a receive can ask for, in the order `All` returns them.
const SYSTEM_ATTRIBUTES: [&str; 4] = [
    "SenderId",
    "SentTimestamp",
    "ApproximateReceiveCount",
    "ApproximateFirstReceiveTimestamp",
];

/// In-memory SQS (AWS JSON 1.0) for benchmarks.
#[derive(Parser, Debug)]
struct Args {
    /// Port on 127.0.0.1; 0 picks a free one (read it from the `listening on` line).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Latency added to every call, in milliseconds, with ±20 % uniform jitter; 0 for none.
    #[arg(long, default_value_t = 15)]
    latency_ms: u64,
    /// A queue to create at start (repeatable); CreateQueue works too.
    #[arg(long = "queue", value_name = "NAME")]
    queues: Vec<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = TcpListener::bind(("127.0.0.1", args.port)).await?;
    let shutdown = CancellationToken::new();
    let sim = Sim::new(
        listener.local_addr()?.port(),
        Duration::from_millis(args.latency_ms),
        shutdown.clone(),
    );
    for name in &args.queues {
        sim.create_queue(name, &HashMap::new())
            .map_err(|fault| anyhow::anyhow!("--queue {name}: {}", fault.message))?;
    }
    tokio::spawn(async move {
        // Without a SIGTERM handler (it cannot be installed), Ctrl-C still stops it.
        let terminate = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut term) => {
                    term.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = terminate => {}
        }
        shutdown.cancel();
    });
    // Stdout is line-buffered: a script reading this line gets it at once.
    println!("listening on {}", sim.base_url);
    serve(listener, sim).await?;
    Ok(())
}

/// Answers calls until the simulator's shutdown token is cancelled; long polls then return empty,
/// so exit does not wait for them.
async fn serve(listener: TcpListener, sim: Arc<Sim>) -> std::io::Result<()> {
    let shutdown = sim.shutdown.clone();
    let app = Router::new()
        .route("/_stats", axum::routing::get(stats))
        .fallback(handle)
        .with_state(sim);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Calls per action since start.
async fn stats(State(sim): State<Arc<Sim>>) -> Response {
    let calls = sim
        .calls
        .lock()
        .unwrap_or_else(|poison| poison.into_inner());
    let body: Map<String, Value> = calls
        .iter()
        .map(|(action, count)| (action.clone(), json!(count)))
        .collect();
    reply(StatusCode::OK, &Value::Object(body))
}

/// Every call is `POST /` with `X-Amz-Target: AmazonSQS.<Action>` and a JSON body; the path and
/// any signature are ignored.
async fn handle(State(sim): State<Arc<Sim>>, headers: HeaderMap, body: Bytes) -> Response {
    // The latency comes first, like a network hop, and holds no lock: calls overlap freely.
    sim.delay().await;
    let target = headers
        .get("x-amz-target")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let action = target.strip_prefix("AmazonSQS.").unwrap_or(target);
    *sim.calls
        .lock()
        .unwrap_or_else(|poison| poison.into_inner())
        .entry(action.to_owned())
        .or_default() += 1;
    let result = match serde_json::from_slice::<Request>(&body) {
        Ok(request) => sim.call(action, request).await,
        Err(err) => Err(Fault::new(
            "com.amazon.coral.service#SerializationException",
            "SerializationException",
            err.to_string(),
        )),
    };
    match result {
        Ok(value) => reply(StatusCode::OK, &value),
        Err(fault) => fault.into_response(),
    }
}

fn reply(status: StatusCode, body: &Value) -> Response {
    let headers = [
        (
            header::CONTENT_TYPE,
            "application/x-amz-json-1.0".to_string(),
        ),
        (
            HeaderName::from_static("x-amzn-requestid"),
            Uuid::new_v4().to_string(),
        ),
    ];
    (status, headers, body.to_string()).into_response()
}

/// The fields of every simulated call's request, each defaulted when absent.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Request {
    queue_url: String,
    queue_name: String,
    attributes: HashMap<String, String>,
    attribute_names: Vec<String>,
    message_system_attribute_names: Vec<String>,
    max_number_of_messages: Option<i64>,
    wait_time_seconds: Option<i64>,
    visibility_timeout: Option<i64>,
    entries: Vec<Entry>,
}

/// An entry of SendMessageBatch, DeleteMessageBatch or ChangeMessageVisibilityBatch.
#[derive(Deserialize, Default)]
#[serde(rename_all = "PascalCase", default)]
struct Entry {
    id: String,
    message_body: String,
    receipt_handle: String,
    visibility_timeout: Option<i64>,
}

/// An error answer, shaped as real SQS sends it over AWS JSON.
struct Fault {
    /// `__type`: the Smithy shape.
    shape: String,
    /// The Query protocol's error code, in `x-amzn-query-error`: the SDK prefers it to `__type`.
    code: &'static str,
    message: String,
}

impl Fault {
    fn new(shape: impl Into<String>, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            shape: shape.into(),
            code,
            message: message.into(),
        }
    }

    fn sqs(shape: &str, code: &'static str, message: impl Into<String>) -> Self {
        Self::new(format!("com.amazonaws.sqs#{shape}"), code, message)
    }

    fn no_queue() -> Self {
        Self::sqs(
            "QueueDoesNotExist",
            "AWS.SimpleQueueService.NonExistentQueue",
            "The specified queue does not exist.",
        )
    }

    /// Not a modelled shape: the SDK takes the code from the header, as real SQS sends it.
    fn invalid(message: impl Into<String>) -> Self {
        Self::sqs("InvalidParameterValue", "InvalidParameterValue", message)
    }
}

impl IntoResponse for Fault {
    fn into_response(self) -> Response {
        let body = json!({"__type": self.shape, "message": self.message});
        let mut response = reply(StatusCode::BAD_REQUEST, &body);
        // The codes are ASCII constants, so the header is always valid.
        if let Ok(query_error) = HeaderValue::from_str(&format!("{};Sender", self.code)) {
            response
                .headers_mut()
                .insert("x-amzn-query-error", query_error);
        }
        response
    }
}

/// A batch entry's failure, as SQS reports it in `Failed`.
fn failure(id: &str, code: &str, message: String) -> Value {
    json!({"Id": id, "SenderFault": true, "Code": code, "Message": message})
}

fn invalid_handle(entry: &Entry) -> Value {
    let message = format!(
        "The input receipt handle \"{}\" is not a valid receipt handle.",
        entry.receipt_handle
    );
    failure(&entry.id, "ReceiptHandleIsInvalid", message)
}

/// SQS's checks on a batch as a whole.
fn check_batch(entries: &[Entry]) -> Result<(), Fault> {
    let mut ids = HashSet::new();
    if entries.is_empty() {
        Err(Fault::sqs(
            "EmptyBatchRequest",
            "AWS.SimpleQueueService.EmptyBatchRequest",
            "There should be at least one entry in the request.",
        ))
    } else if entries.len() > MAX_BATCH {
        Err(Fault::sqs(
            "TooManyEntriesInBatchRequest",
            "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
            format!("Maximum number of entries per request are {MAX_BATCH}."),
        ))
    } else if !entries.iter().all(|entry| ids.insert(entry.id.as_str())) {
        Err(Fault::sqs(
            "BatchEntryIdsNotDistinct",
            "AWS.SimpleQueueService.BatchEntryIdsNotDistinct",
            "Two or more batch entries in the request have the same Id.",
        ))
    } else {
        Ok(())
    }
}

/// `value` if it lies in `0..=max`, else the error SQS gives for `name`.
fn in_range(name: &str, value: i64, max: u64) -> Result<u64, Fault> {
    u64::try_from(value)
        .ok()
        .filter(|v| *v <= max)
        .ok_or_else(|| {
            Fault::invalid(format!(
                "Value {value} for parameter {name} is invalid. Reason: Must be between 0 and {max}."
            ))
        })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| {
            u64::try_from(since.as_millis()).unwrap_or(u64::MAX)
        })
}

/// Receipt numbers are unique across all queues, so a handle never matches another queue's message.
static RECEIPTS: AtomicU64 = AtomicU64::new(1);

/// `<message seq>.<receipt number>`, both hexadecimal.
fn receipt_handle(seq: u64, receipt: u64) -> String {
    format!("{seq:x}.{receipt:x}")
}

fn parse_receipt_handle(handle: &str) -> Option<(u64, u64)> {
    let (seq, receipt) = handle.split_once('.')?;
    Some((
        u64::from_str_radix(seq, 16).ok()?,
        u64::from_str_radix(receipt, 16).ok()?,
    ))
}

struct Sim {
    base_url: String,
    latency: Duration,
    queues: RwLock<HashMap<String, Arc<Queue>>>,
    /// Calls per action, for `/_stats`.
    calls: Mutex<HashMap<String, u64>>,
    shutdown: CancellationToken,
}

impl Sim {
    fn new(port: u16, latency: Duration, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            base_url: format!("http://127.0.0.1:{port}"),
            latency,
            queues: RwLock::default(),
            calls: Mutex::default(),
            shutdown,
        })
    }

    async fn delay(&self) {
        if self.latency.is_zero() {
            return;
        }
        // Computed in its own statement: the thread-local RNG must not live across the await.
        let latency = self.latency.mul_f64(rand::rng().random_range(0.8..=1.2));
        tokio::time::sleep(latency).await;
    }

    async fn call(&self, action: &str, request: Request) -> Result<Value, Fault> {
        match action {
            "CreateQueue" => self
                .create_queue(&request.queue_name, &request.attributes)
                .map(|queue| json!({"QueueUrl": queue.url})),
            "GetQueueUrl" => self
                .queue_named(&request.queue_name)
                .map(|queue| json!({"QueueUrl": queue.url})),
            "GetQueueAttributes" => Ok(self
                .queue(&request.queue_url)?
                .attributes(&request.attribute_names)),
            "SendMessageBatch" => self.queue(&request.queue_url)?.send_batch(request.entries),
            "ReceiveMessage" => {
                let queue = self.queue(&request.queue_url)?;
                queue.receive(&request, &self.shutdown).await
            }
            "DeleteMessageBatch" => self
                .queue(&request.queue_url)?
                .delete_batch(&request.entries),
            "ChangeMessageVisibilityBatch" => self
                .queue(&request.queue_url)?
                .change_visibility_batch(&request.entries),
            _ => Err(Fault::new(
                "com.amazon.coral.service#UnknownOperationException",
                "InvalidAction",
                format!("The action {action:?} is not valid for this endpoint (or not simulated)."),
            )),
        }
    }

    /// Creates the queue, or returns it if it exists (attributes then ignored).
    fn create_queue(
        &self,
        name: &str,
        attributes: &HashMap<String, String>,
    ) -> Result<Arc<Queue>, Fault> {
        let valid = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '_';
        if name.is_empty() || name.len() > 80 || !name.chars().all(valid) {
            return Err(Fault::invalid(
                "Queue names are 1 to 80 alphanumeric characters, hyphens or underscores \
                 (FIFO queues are not simulated).",
            ));
        }
        let seconds = |key: &str, default: u64, max: u64| match attributes.get(key) {
            None => Ok(default),
            Some(value) => value
                .parse()
                .map_err(|_| Fault::invalid(format!("Invalid value for {key}: {value}")))
                .and_then(|value| in_range(key, value, max)),
        };
        let visibility = seconds("VisibilityTimeout", 30, MAX_VISIBILITY_SECONDS)?;
        let wait = seconds("ReceiveMessageWaitTimeSeconds", 0, MAX_WAIT_SECONDS)?;
        let mut queues = self
            .queues
            .write()
            .unwrap_or_else(|poison| poison.into_inner());
        let queue = queues.entry(name.to_string()).or_insert_with(|| {
            Arc::new(Queue {
                name: name.to_string(),
                url: format!("{}/{ACCOUNT}/{name}", self.base_url),
                created: now_ms() / 1000,
                visibility: Duration::from_secs(visibility),
                wait_seconds: wait,
                state: Mutex::default(),
                arrived: Notify::new(),
            })
        });
        Ok(Arc::clone(queue))
    }

    fn queue_named(&self, name: &str) -> Result<Arc<Queue>, Fault> {
        let queues = self
            .queues
            .read()
            .unwrap_or_else(|poison| poison.into_inner());
        queues.get(name).cloned().ok_or_else(Fault::no_queue)
    }

    /// The queue a URL names, by its last path segment (whatever host the client used).
    fn queue(&self, url: &str) -> Result<Arc<Queue>, Fault> {
        self.queue_named(url.rsplit('/').next().unwrap_or_default())
    }
}

struct Queue {
    name: String,
    url: String,
    /// Creation time in seconds, as SQS reports it.
    created: u64,
    /// The queue's default visibility timeout and long-poll wait.
    visibility: Duration,
    wait_seconds: u64,
    /// Held only for in-memory work, never across an await.
    state: Mutex<Backlog>,
    /// Wakes long polls when messages are sent or made visible by a visibility change.
    arrived: Notify,
}

/// Every operation is O(1) per message, or O(log n) for the deadline heap, so a backlog of a
/// million messages costs no more per call than ten.
#[derive(Default)]
struct Backlog {
    /// Every message not yet deleted, by sequence number.
    messages: HashMap<u64, Message>,
    /// The visible messages, oldest first. A message is here exactly when it is not in flight.
    visible: VecDeque<u64>,
    /// Visibility deadlines of in-flight messages: (deadline, seq, receipt). An entry whose
    /// message was deleted, or whose deadline was changed since, is skipped when it comes up.
    deadlines: BinaryHeap<Reverse<(Instant, u64, u64)>>,
    next_seq: u64,
}

struct Message {
    id: Uuid,
    body: String,
    md5: [u8; 16],
    sent_ms: u64,
    receive_count: u64,
    first_receive_ms: u64,
    /// The receipt number of the latest receive; only its handle acts on the message.
    receipt: u64,
    /// Some while in flight.
    deadline: Option<Instant>,
}

impl Backlog {
    /// Makes visible again the in-flight messages whose deadline has passed. Called at the start
    /// of every call that looks at the queue, so no timer task is needed.
    fn requeue_expired(&mut self, now: Instant) {
        while let Some(&Reverse((deadline, seq, receipt))) = self.deadlines.peek() {
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if let Some(message) = self.messages.get_mut(&seq) {
                if message.receipt == receipt && message.deadline == Some(deadline) {
                    message.deadline = None;
                    self.visible.push_back(seq);
                }
            }
        }
    }

    /// The sequence number of the in-flight message `handle` is the latest handle of.
    fn in_flight(&self, handle: &str) -> Option<u64> {
        let (seq, receipt) = parse_receipt_handle(handle)?;
        let message = self.messages.get(&seq)?;
        (message.receipt == receipt && message.deadline.is_some()).then_some(seq)
    }

    fn take(
        &mut self,
        max: usize,
        now: Instant,
        visibility: Duration,
        wanted: &[&str],
    ) -> Vec<Value> {
        let mut taken = Vec::new();
        while taken.len() < max {
            let Some(seq) = self.visible.pop_front() else {
                break;
            };
            // A deleted message's sequence number can still be queued: skip it.
            let Some(message) = self.messages.get_mut(&seq) else {
                continue;
            };
            let receipt = RECEIPTS.fetch_add(1, Ordering::Relaxed);
            let deadline = now + visibility;
            message.receive_count += 1;
            if message.receive_count == 1 {
                message.first_receive_ms = now_ms();
            }
            message.receipt = receipt;
            message.deadline = Some(deadline);
            self.deadlines.push(Reverse((deadline, seq, receipt)));
            taken.push(message.to_json(receipt_handle(seq, receipt), wanted));
        }
        taken
    }
}

impl Message {
    fn to_json(&self, receipt_handle: String, wanted: &[&str]) -> Value {
        let mut value = json!({
            "MessageId": self.id.to_string(),
            "ReceiptHandle": receipt_handle,
            "MD5OfBody": hex::encode(self.md5),
            "Body": self.body,
        });
        if !wanted.is_empty() {
            let attribute = |name: &str| match name {
                "SenderId" => ACCOUNT.to_string(),
                "SentTimestamp" => self.sent_ms.to_string(),
                "ApproximateReceiveCount" => self.receive_count.to_string(),
                _ => self.first_receive_ms.to_string(),
            };
            let attributes: Map<String, Value> = wanted
                .iter()
                .map(|name| (name.to_string(), Value::String(attribute(name))))
                .collect();
            value["Attributes"] = Value::Object(attributes);
        }
        value
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, Backlog> {
        self.state
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn attributes(&self, names: &[String]) -> Value {
        let (visible, in_flight) = {
            let mut state = self.lock();
            state.requeue_expired(Instant::now());
            (
                state.visible.len(),
                state.messages.len() - state.visible.len(),
            )
        };
        let all = [
            ("ApproximateNumberOfMessages", visible.to_string()),
            (
                "ApproximateNumberOfMessagesNotVisible",
                in_flight.to_string(),
            ),
            ("ApproximateNumberOfMessagesDelayed", "0".to_string()),
            ("VisibilityTimeout", self.visibility.as_secs().to_string()),
            (
                "ReceiveMessageWaitTimeSeconds",
                self.wait_seconds.to_string(),
            ),
            ("DelaySeconds", "0".to_string()),
            ("MaximumMessageSize", "262144".to_string()),
            ("MessageRetentionPeriod", "345600".to_string()),
            ("CreatedTimestamp", self.created.to_string()),
            ("LastModifiedTimestamp", self.created.to_string()),
            (
                "QueueArn",
                format!("arn:aws:sqs:{REGION}:{ACCOUNT}:{}", self.name),
            ),
        ];
        // Names asked for that are not simulated are left out rather than refused.
        let attributes: Map<String, Value> = all
            .into_iter()
            .filter(|(name, _)| names.iter().any(|asked| asked == "All" || asked == name))
            .map(|(name, value)| (name.to_string(), Value::String(value)))
            .collect();
        json!({"Attributes": attributes})
    }

    fn send_batch(&self, entries: Vec<Entry>) -> Result<Value, Fault> {
        check_batch(&entries)?;
        let sent_ms = now_ms();
        let (mut successful, mut failed, mut messages) = (Vec::new(), Vec::new(), Vec::new());
        // Digests and ids are made before taking the lock.
        for entry in entries {
            if entry.message_body.is_empty() {
                let message = "The request must contain the parameter MessageBody.".to_string();
                failed.push(failure(&entry.id, "MissingParameter", message));
                continue;
            }
            let md5: [u8; 16] = Md5::digest(entry.message_body.as_bytes()).into();
            let id = Uuid::new_v4();
            successful.push(json!({
                "Id": entry.id,
                "MessageId": id.to_string(),
                "MD5OfMessageBody": hex::encode(md5),
            }));
            messages.push(Message {
                id,
                body: entry.message_body,
                md5,
                sent_ms,
                receive_count: 0,
                first_receive_ms: 0,
                receipt: 0,
                deadline: None,
            });
        }
        {
            let mut state = self.lock();
            for message in messages {
                let seq = state.next_seq;
                state.next_seq += 1;
                state.messages.insert(seq, message);
                state.visible.push_back(seq);
            }
        }
        self.arrived.notify_waiters();
        Ok(json!({"Successful": successful, "Failed": failed}))
    }

    /// One receive: returns as soon as a message is visible, or empty when the wait is over.
    async fn receive(
        &self,
        request: &Request,
        shutdown: &CancellationToken,
    ) -> Result<Value, Fault> {
        let max = request.max_number_of_messages.unwrap_or(1);
        let max = usize::try_from(max)
            .ok()
            .filter(|max| (1..=MAX_BATCH).contains(max))
            .ok_or_else(|| {
                Fault::invalid(format!(
                    "Value {max} for parameter MaxNumberOfMessages is invalid. \
                     Reason: Must be between 1 and 10, if provided."
                ))
            })?;
        let wait = match request.wait_time_seconds {
            Some(seconds) => in_range("WaitTimeSeconds", seconds, MAX_WAIT_SECONDS)?,
            None => self.wait_seconds,
        };
        let visibility = match request.visibility_timeout {
            Some(seconds) => Duration::from_secs(in_range(
                "VisibilityTimeout",
                seconds,
                MAX_VISIBILITY_SECONDS,
            )?),
            None => self.visibility,
        };
        let asked: Vec<&String> = request
            .attribute_names
            .iter()
            .chain(&request.message_system_attribute_names)
            .collect();
        let wanted: Vec<&str> = SYSTEM_ATTRIBUTES
            .into_iter()
            .filter(|name| asked.iter().any(|a| *a == "All" || a == name))
            .collect();
        let end = Instant::now() + Duration::from_secs(wait);
        loop {
            // Registered before looking, so a send between the look and the wait still wakes it.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            let now = Instant::now();
            let next_expiry = {
                let mut state = self.lock();
                state.requeue_expired(now);
                let messages = state.take(max, now, visibility, &wanted);
                if !messages.is_empty() {
                    return Ok(json!({"Messages": messages}));
                }
                state
                    .deadlines
                    .peek()
                    .map(|Reverse((deadline, ..))| *deadline)
            };
            if now >= end {
                return Ok(json!({}));
            }
            // Also wakes when an in-flight message's deadline passes (it may become visible).
            let wake = next_expiry.map_or(end, |deadline| deadline.min(end));
            tokio::select! {
                () = &mut arrived => {}
                () = tokio::time::sleep_until(wake) => {}
                () = shutdown.cancelled() => return Ok(json!({})),
            }
        }
    }

    fn delete_batch(&self, entries: &[Entry]) -> Result<Value, Fault> {
        check_batch(entries)?;
        let (mut successful, mut failed) = (Vec::new(), Vec::new());
        let mut state = self.lock();
        state.requeue_expired(Instant::now());
        for entry in entries {
            match state.in_flight(&entry.receipt_handle) {
                Some(seq) => {
                    state.messages.remove(&seq);
                    successful.push(json!({"Id": entry.id}));
                }
                None => failed.push(invalid_handle(entry)),
            }
        }
        Ok(json!({"Successful": successful, "Failed": failed}))
    }

    fn change_visibility_batch(&self, entries: &[Entry]) -> Result<Value, Fault> {
        check_batch(entries)?;
        let (mut successful, mut failed) = (Vec::new(), Vec::new());
        let now = Instant::now();
        let mut made_visible = false;
        {
            let mut state = self.lock();
            state.requeue_expired(now);
            for entry in entries {
                let seconds = entry.visibility_timeout.unwrap_or(-1);
                let Ok(seconds) = in_range("VisibilityTimeout", seconds, MAX_VISIBILITY_SECONDS)
                else {
                    let message =
                        format!("Invalid VisibilityTimeout {seconds} in entry {}.", entry.id);
                    failed.push(failure(&entry.id, "InvalidParameterValue", message));
                    continue;
                };
                let Some(seq) = state.in_flight(&entry.receipt_handle) else {
                    failed.push(invalid_handle(entry));
                    continue;
                };
                // `in_flight` found it, so the message exists.
                let Some(message) = state.messages.get_mut(&seq) else {
                    failed.push(invalid_handle(entry));
                    continue;
                };
                if seconds == 0 {
                    message.deadline = None;
                    state.visible.push_back(seq);
                    made_visible = true;
                } else {
                    let deadline = now + Duration::from_secs(seconds);
                    message.deadline = Some(deadline);
                    let receipt = message.receipt;
                    state.deadlines.push(Reverse((deadline, seq, receipt)));
                }
                successful.push(json!({"Id": entry.id}));
            }
        }
        if made_visible {
            self.arrived.notify_waiters();
        }
        Ok(json!({"Successful": successful, "Failed": failed}))
    }
}

#[cfg(test)]
mod tests;
