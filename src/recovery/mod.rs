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
use crate::crypto::{ReplyKeyPair, SealError};
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
    #[error("the recovery policy refused the request: {0} (recorded in the audit log)")]
    Refused(String),
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
        _ => RecoverError::Database(postgres::DatabaseError::on(pool)(err)),
    }
}

/// A pool for a recovery client: one connection for the requests, one for the notifications.
pub const CLIENT_CONNECTIONS: u32 = 2;

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
    wait: Duration,
) -> Result<Vec<Recovered>, RecoverError> {
    let mut opened = Request::new(RequestKind::Recover(field), masks, why)
        .send(pool, wait)
        .await?;
    let mut results = Vec::with_capacity(opened.replies.len());
    for reply in std::mem::take(&mut opened.replies) {
        let value = opened
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

/// A quarantined message as opened: `None` when no quarantined message has this id.
pub async fn open_quarantined(
    pool: &PgPool,
    message_id: &str,
    why: &Justification,
    wait: Duration,
) -> Result<Option<Zeroizing<Vec<u8>>>, RecoverError> {
    let ids = [message_id.to_owned()];
    let mut opened = Request::new(RequestKind::Quarantine, &ids, why)
        .send(pool, wait)
        .await?;
    let replies = std::mem::take(&mut opened.replies);
    match replies.as_slice() {
        [reply] => opened.open(BODY, reply),
        _ => Err(RecoverError::Incomplete {
            got: replies.len(),
            asked: 1,
        }),
    }
}

/// A request about to be sent, with the key pair its replies will be sealed to.
struct Request<'a> {
    kind: RequestKind,
    subjects: &'a [String],
    why: &'a Justification,
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
    fn new(kind: RequestKind, subjects: &'a [String], why: &'a Justification) -> Self {
        Self {
            kind,
            subjects,
            why,
            keys: ReplyKeyPair::generate(),
        }
    }

    /// Commits the request, then waits up to `wait` for its replies: a service's notification
    /// wakes the client, a poll catches what a notification missed.
    async fn send(self, pool: &PgPool, wait: Duration) -> Result<Opened, RecoverError> {
        let convert = database_error(pool);
        // Listening before the request commits: its notification cannot come first.
        let mut listener = PgListener::connect_with(pool).await.map_err(&convert)?;
        listener
            .listen(recovery::REPLIES_CHANNEL)
            .await
            .map_err(&convert)?;
        let id = recovery::request(
            pool,
            self.kind,
            self.subjects,
            self.why.reason(),
            self.why.ticket(),
            self.keys.public_key(),
        )
        .await
        .map_err(&convert)?;
        let deadline = Instant::now() + wait;
        loop {
            let replies = recovery::collect(pool, id).await.map_err(&convert)?;
            if !replies.is_empty() {
                if replies.len() != self.subjects.len() {
                    return Err(RecoverError::Incomplete {
                        got: replies.len(),
                        asked: self.subjects.len(),
                    });
                }
                if let Some(refused) = replies.iter().find(|r| r.outcome == "refused") {
                    return Err(RecoverError::Refused(
                        refused.detail.clone().unwrap_or_default(),
                    ));
                }
                return Ok(Opened {
                    id,
                    keys: self.keys,
                    replies,
                });
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(RecoverError::NoService(wait));
            }
            // Woken by this request's notification, or after the poll interval.
            let _ = tokio::time::timeout(left.min(POLL), notified(&mut listener, id)).await;
        }
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

impl Opened {
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
            _ => Ok(None),
        }
    }
}
