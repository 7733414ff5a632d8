//! Opening values on record, with keys that never reach a person. A client (`etl recover`,
//! `etl export`, `etl quarantine show`) makes a one-time key pair in memory and commits a request
//! with its public half to the audit log (under the recovery policy, which the database
//! enforces); the recovery service ([`service`]), which alone may unwrap vault and quarantine
//! keys, commits an audit row of the opening, opens the values and seals each to that public
//! key; the client collects the sealed replies, which only its database user can read, and opens
//! them. The client needs no key and no KMS permission.

pub mod service;

use std::time::{Duration, Instant};

use serde::Serialize;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use zeroize::Zeroizing;

use crate::adapters::postgres::recovery::{self, Reply, RequestKind};
use crate::adapters::postgres::{self};
use crate::crypto::{ReplyKeyPair, SealError, REPLY_SEED_LEN};
use crate::domain::{Justification, PiiField};

/// What a quarantined body is called in a reply's associated data.
pub const BODY: &str = "body";

#[derive(Debug, thiserror::Error)]
pub enum RecoverError {
    #[error(
        "the database refused the recovery: your database user needs the etl_recoverer role \
         (an administrator runs: GRANT etl_recoverer TO <your user>)"
    )]
    NotRecoverer,
    #[error(
        "the audit log is held by another session's open transaction; try again, and ask an \
         administrator to look for idle transactions of recoverers"
    )]
    Busy,
    #[error("the recovery request was refused: {0} (recorded in the audit log)")]
    Refused(String),
    #[error("the subject access was refused: {0} (recorded in the audit log)")]
    SubjectRefused(String),
    #[error("{0}")]
    NoSubjectAccess(String),
    #[error("during recovery: {0}")]
    Database(#[source] postgres::DatabaseError),
    #[error(
        "no recovery service answered within {}; is `etl recovery-service` running?",
        crate::human::duration(*.0)
    )]
    NoService(Duration),
    #[error("{subject} did not open in the recovery service: {detail}")]
    Failed { subject: String, detail: String },
    #[error("the reply for {subject} does not open with this request's key: {source}")]
    Open { subject: String, source: SealError },
    #[error("the recovery service answered {got} subjects for {asked}")]
    Incomplete { got: usize, asked: usize },
    #[error("no recovery request {0} of yours exists (or it was collected)")]
    NoSuchRequest(i64),
    #[error("cannot keep the one-time key of request {request_id} in {}: {source}", path.display())]
    KeyFile {
        request_id: i64,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The conversion of the recovery functions' errors on `pool`.
pub fn database_error(pool: &PgPool) -> impl Fn(sqlx::Error) -> RecoverError + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.code().as_deref() == Some("42501") => {
            RecoverError::NotRecoverer
        }
        // A wait for the audit chain that timed out (another session holds it in an open
        // transaction).
        sqlx::Error::Database(db) if db.code().as_deref() == Some("55P03") => RecoverError::Busy,
        // `recovery.subject_rows` without a committed access of this user's.
        sqlx::Error::Database(db) if db.code().as_deref() == Some("ET002") => {
            RecoverError::NoSubjectAccess(db.message().to_owned())
        }
        _ => RecoverError::Database(postgres::DatabaseError::on(pool)(err)),
    }
}

/// The longest a client waits (`--wait` is judged against it by the commands).
pub const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A pool for a recovery client: one connection for the requests, one for the notifications.
pub const CLIENT_CONNECTIONS: u32 = 2;

/// What a request came to: its values, or a wait for approvals that outlasted the client's.
pub enum Answer<T> {
    Ready(T),
    /// The request is on record and waits for approvals; its one-time key waits in `key_file`
    /// for `etl recover collect`.
    Pending(PendingRequest),
}

/// A request of this client that waits for approvals.
#[derive(Debug, Serialize)]
pub struct PendingRequest {
    pub request_id: i64,
    pub approvals: i64,
    pub approvals_needed: i32,
    #[serde(skip)]
    pub key_file: std::path::PathBuf,
}

impl std::fmt::Display for PendingRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "recovery request {} is on record and waits for approval ({} of {}); run `etl recover \
             collect {}` once it is approved",
            self.request_id, self.approvals, self.approvals_needed, self.request_id
        )
    }
}

/// One requested mask and what came of it.
#[derive(Serialize)]
pub struct Recovered {
    pub field: &'static str,
    pub mask: String,
    pub outcome: String,
    pub value: Option<String>,
}

/// The audited recovery of masks of one field, through the recovery service. One result per
/// mask, in the order given.
pub async fn recover_masks(
    pool: &PgPool,
    field: PiiField,
    masks: &[String],
    why: &Justification,
    options: RequestOptions,
) -> Result<Answer<Vec<Recovered>>, RecoverError> {
    let sent = Request::new(RequestKind::Recover(field), masks, why, options.break_glass)
        .send(pool, options.wait)
        .await?;
    match sent {
        Answer::Ready(opened) => {
            let id = opened.id;
            let recovered = opened.recovered(field)?;
            discard(pool, id).await?;
            Ok(Answer::Ready(recovered))
        }
        Answer::Pending(pending) => Ok(Answer::Pending(pending)),
    }
}

/// Deletes replies once opened: they were sealed to a key that is about to be dropped.
async fn discard(pool: &PgPool, request_id: i64) -> Result<(), RecoverError> {
    recovery::discard_replies(pool, request_id)
        .await
        .map_err(database_error(pool))
}

/// How a client asks.
#[derive(Debug, Clone, Copy)]
pub struct RequestOptions {
    /// How long to wait for the service (and the approvals) before giving up or leaving the
    /// request pending.
    pub wait: Duration,
    /// Skip approvals, on record, for a later review.
    pub break_glass: bool,
}

/// A quarantined message as opened: `None` when no quarantined message has this id.
pub async fn open_quarantined(
    pool: &PgPool,
    message_id: &str,
    why: &Justification,
    options: RequestOptions,
) -> Result<Answer<Option<Zeroizing<Vec<u8>>>>, RecoverError> {
    let ids = [message_id.to_owned()];
    let sent = Request::new(RequestKind::Quarantine, &ids, why, options.break_glass)
        .send(pool, options.wait)
        .await?;
    match sent {
        Answer::Ready(opened) => {
            let id = opened.id;
            let body = opened.body()?;
            discard(pool, id).await?;
            Ok(Answer::Ready(body))
        }
        Answer::Pending(pending) => Ok(Answer::Pending(pending)),
    }
}

/// What a collected request held.
pub enum Collected {
    Values(Vec<Recovered>),
    Body {
        message_id: String,
        body: Option<Zeroizing<Vec<u8>>>,
    },
}

/// Collects a request made earlier by this client that waited for approvals: its one-time key
/// is read from where it was kept, and deleted once the replies are opened (or refused).
pub async fn collect(
    pool: &PgPool,
    request_id: i64,
    wait: Duration,
) -> Result<Answer<Collected>, RecoverError> {
    let convert = database_error(pool);
    let key_file = key_file(request_id);
    let Some(state) = recovery::request_state(pool, request_id)
        .await
        .map_err(&convert)?
    else {
        // Collected, or deleted after its TTL: the kept key has nothing left to open.
        let _ = std::fs::remove_file(&key_file);
        return Err(RecoverError::NoSuchRequest(request_id));
    };
    let keys = read_key(request_id, &key_file)?;
    let mut listener = listen(pool).await?;
    let replies = match wait_for_replies(pool, &mut listener, request_id, None, wait).await {
        Ok(Some(replies)) => replies,
        Ok(None) => match pending_or_no_service(pool, request_id, wait, key_file.clone()).await? {
            Answer::Ready(replies) => answered(replies, None)?,
            Answer::Pending(pending) => return Ok(Answer::Pending(pending)),
        },
        Err(err) => {
            if matches!(err, RecoverError::Refused(_)) {
                let _ = std::fs::remove_file(&key_file);
                let _ = recovery::discard_replies(pool, request_id).await;
            }
            return Err(err);
        }
    };
    let opened = Opened {
        id: request_id,
        keys,
        replies,
    };
    let collected = match (
        state.kind.as_str(),
        state.field.as_deref().and_then(PiiField::parse),
    ) {
        ("recover", Some(field)) => opened.recovered(field).map(Collected::Values),
        _ => {
            let message_id = opened
                .replies
                .first()
                .map(|r| r.subject.clone())
                .unwrap_or_default();
            opened
                .body()
                .map(|body| Collected::Body { message_id, body })
        }
    };
    // Opened: the replies and the key have nothing left to give.
    if collected.is_ok() {
        let _ = std::fs::remove_file(&key_file);
        recovery::discard_replies(pool, request_id)
            .await
            .map_err(&convert)?;
    }
    collected.map(Answer::Ready)
}

/// Where a waiting request's one-time key is kept: `ETL_REQUEST_KEY_DIR`, or the user's state
/// directory (`$XDG_STATE_HOME/etl/requests`, `~/.local/state/etl/requests`).
fn key_file(request_id: i64) -> std::path::PathBuf {
    let dir = std::env::var_os("ETL_REQUEST_KEY_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_STATE_HOME")
                .map(|d| std::path::Path::new(&d).join("etl/requests"))
        })
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|d| std::path::Path::new(&d).join(".local/state/etl/requests"))
        })
        .unwrap_or_else(|| std::path::PathBuf::from("."));
    dir.join(format!("request-{request_id}.key"))
}

/// Keeps the seed, readable by this user alone (0600, in a 0700 directory).
fn keep_key(
    request_id: i64,
    path: &std::path::Path,
    keys: &ReplyKeyPair,
) -> Result<(), RecoverError> {
    use std::io::Write;
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    let failed = |source| RecoverError::KeyFile {
        request_id,
        path: path.to_owned(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(failed)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(failed)?;
    file.write_all(keys.seed()).map_err(failed)
}

fn read_key(request_id: i64, path: &std::path::Path) -> Result<ReplyKeyPair, RecoverError> {
    let failed = |source| RecoverError::KeyFile {
        request_id,
        path: path.to_owned(),
        source,
    };
    let bytes = Zeroizing::new(std::fs::read(path).map_err(failed)?);
    let seed: [u8; REPLY_SEED_LEN] = bytes.as_slice().try_into().map_err(|_| {
        failed(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "not a key this client kept",
        ))
    })?;
    Ok(ReplyKeyPair::from_seed(Zeroizing::new(seed)))
}

/// After a wait without replies: the replies if they came meanwhile, pending approvals (the key
/// stays kept), or no service.
async fn pending_or_no_service(
    pool: &PgPool,
    request_id: i64,
    wait: Duration,
    key_file: std::path::PathBuf,
) -> Result<Answer<Vec<Reply>>, RecoverError> {
    let convert = database_error(pool);
    let state = recovery::request_state(pool, request_id)
        .await
        .map_err(&convert)?;
    let Some(state) = state else {
        return Err(RecoverError::NoService(wait));
    };
    if state.opened || state.closed {
        let replies = recovery::replies(pool, request_id)
            .await
            .map_err(&convert)?;
        if !replies.is_empty() {
            return Ok(Answer::Ready(replies));
        }
        return Err(RecoverError::NoSuchRequest(request_id));
    }
    if state.approvals >= i64::from(state.approvals_needed) {
        return Err(RecoverError::NoService(wait));
    }
    if state.expires_at.is_some_and(|at| at <= chrono::Utc::now()) {
        return Err(RecoverError::Refused(
            "the request expired before its approvals".to_owned(),
        ));
    }
    Ok(Answer::Pending(PendingRequest {
        request_id,
        approvals: state.approvals,
        approvals_needed: state.approvals_needed,
        key_file,
    }))
}

/// A request about to be sent, with the key pair its replies will be sealed to.
struct Request<'a> {
    kind: RequestKind,
    subjects: &'a [String],
    why: &'a Justification,
    break_glass: bool,
    keys: ReplyKeyPair,
}

/// A request whose replies arrived: they open with its key pair, and nothing else does.
struct Opened {
    id: i64,
    keys: ReplyKeyPair,
    replies: Vec<Reply>,
}

/// Longest wait between two looks for replies when no notification comes (a listener that lost
/// its connection, a notification that was missed).
const POLL: Duration = Duration::from_secs(1);

impl<'a> Request<'a> {
    fn new(
        kind: RequestKind,
        subjects: &'a [String],
        why: &'a Justification,
        break_glass: bool,
    ) -> Self {
        Self {
            kind,
            subjects,
            why,
            break_glass,
            keys: ReplyKeyPair::generate(),
        }
    }

    /// Commits the request, then waits up to `wait` for its replies. A request still waiting
    /// for approvals then keeps its key for `etl recover collect`.
    async fn send(self, pool: &PgPool, wait: Duration) -> Result<Answer<Opened>, RecoverError> {
        let convert = database_error(pool);
        // Listening before the request commits: its notification cannot come first.
        let mut listener = listen(pool).await?;
        let id = recovery::request(
            pool,
            self.kind,
            self.subjects,
            self.why.reason(),
            self.why.ticket(),
            self.keys.public_key(),
            self.break_glass,
        )
        .await
        .map_err(&convert)?;
        match wait_for_replies(pool, &mut listener, id, Some(self.subjects), wait).await? {
            Some(replies) => Ok(Answer::Ready(Opened {
                id,
                keys: self.keys,
                replies,
            })),
            None => {
                let key_file = key_file(id);
                match pending_or_no_service(pool, id, wait, key_file.clone()).await {
                    Ok(Answer::Pending(pending)) => {
                        keep_key(id, &key_file, &self.keys)?;
                        Ok(Answer::Pending(pending))
                    }
                    Ok(Answer::Ready(replies)) => Ok(Answer::Ready(Opened {
                        id,
                        keys: self.keys,
                        replies: answered(replies, Some(self.subjects))?,
                    })),
                    Err(err) => {
                        // Withdrawn, so no service opens it for nobody later.
                        if let Err(cancel) = recovery::cancel(pool, id).await {
                            tracing::debug!(error = %postgres::redacted(&cancel), "cannot withdraw the request");
                        }
                        Err(err)
                    }
                }
            }
        }
    }
}

async fn listen(pool: &PgPool) -> Result<PgListener, RecoverError> {
    let convert = database_error(pool);
    let mut listener = PgListener::connect_with(pool).await.map_err(&convert)?;
    listener
        .listen(recovery::REPLIES_CHANNEL)
        .await
        .map_err(&convert)?;
    Ok(listener)
}

/// The replies of a request once stored (`None` if `wait` passes first): a service's
/// notification wakes the client, a poll catches what a notification missed. A refusal is an
/// error, with its reason.
async fn wait_for_replies(
    pool: &PgPool,
    listener: &mut PgListener,
    id: i64,
    asked: Option<&[String]>,
    wait: Duration,
) -> Result<Option<Vec<Reply>>, RecoverError> {
    let convert = database_error(pool);
    let deadline = Instant::now() + wait.min(MAX_WAIT);
    loop {
        let replies = recovery::replies(pool, id).await.map_err(&convert)?;
        if !replies.is_empty() {
            return answered(replies, asked).map(Some);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        // Woken by this request's notification, or after the poll interval.
        let _ = tokio::time::timeout(left.min(POLL), notified(listener, id)).await;
    }
}

/// Returns when `request_id`'s replies are announced; after a pause if the listener fails (it
/// reconnects by itself), so a lost connection does not turn the wait into a busy loop.
async fn notified(listener: &mut PgListener, request_id: i64) {
    let ours = request_id.to_string();
    loop {
        match listener.recv().await {
            Ok(notification) if notification.payload() == ours => return,
            Ok(_) => {}
            Err(_) => {
                tokio::time::sleep(POLL).await;
                return;
            }
        }
    }
}

/// The replies, checked against what was asked (their subjects, in order); a refusal is an
/// error with its reason.
fn answered(replies: Vec<Reply>, asked: Option<&[String]>) -> Result<Vec<Reply>, RecoverError> {
    if let Some(asked) = asked {
        let matches = replies.len() == asked.len()
            && replies
                .iter()
                .zip(asked)
                .all(|(reply, subject)| reply.subject == *subject);
        if !matches {
            return Err(RecoverError::Incomplete {
                got: replies.len(),
                asked: asked.len(),
            });
        }
    }
    if let Some(refused) = replies.iter().find(|r| r.outcome == "refused") {
        return Err(RecoverError::Refused(
            refused.detail.clone().unwrap_or_default(),
        ));
    }
    Ok(replies)
}

impl Opened {
    /// The values of a recovery request, one per mask in order.
    fn recovered(mut self, field: PiiField) -> Result<Vec<Recovered>, RecoverError> {
        let mut results = Vec::with_capacity(self.replies.len());
        for reply in std::mem::take(&mut self.replies) {
            let value = self
                .open(field.as_str(), &reply)?
                .map(|plain| String::from_utf8_lossy(&plain).into_owned());
            results.push(Recovered {
                field: field.as_str(),
                mask: reply.subject,
                outcome: reply.outcome,
                value,
            });
        }
        Ok(results)
    }

    /// The body of a one-message quarantine request (`None`: no such message).
    fn body(mut self) -> Result<Option<Zeroizing<Vec<u8>>>, RecoverError> {
        let replies = std::mem::take(&mut self.replies);
        match replies.as_slice() {
            [reply] => self.open(BODY, reply),
            _ => Err(RecoverError::Incomplete {
                got: replies.len(),
                asked: 1,
            }),
        }
    }

    /// The value of a found reply (`None` for any other outcome).
    fn open(
        &mut self,
        what: &str,
        reply: &Reply,
    ) -> Result<Option<Zeroizing<Vec<u8>>>, RecoverError> {
        match (reply.outcome.as_str(), &reply.sealed) {
            ("found", Some(sealed)) => self
                .keys
                .open(self.id, what, &reply.subject, sealed)
                .map(Some)
                .map_err(|source| RecoverError::Open {
                    subject: reply.subject.clone(),
                    source,
                }),
            ("failed", _) => Err(RecoverError::Failed {
                subject: reply.subject.clone(),
                detail: reply.detail.clone().unwrap_or_default(),
            }),
            ("found", None) => Err(RecoverError::Failed {
                subject: reply.subject.clone(),
                detail: "the reply holds no value".to_owned(),
            }),
            _ => Ok(None),
        }
    }
}
