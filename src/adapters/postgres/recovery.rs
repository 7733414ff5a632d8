//! The audited functions of the `recovery` schema (see the migrations): a client's request and
//! the collection of its sealed replies; the recovery service's claim, opening row, material and
//! replies; and the recovery policy.

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use crate::domain::PiiField;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestKind {
    /// Masks of one field.
    Recover(PiiField),
    /// Quarantined messages, by id.
    Quarantine,
}

/// Records a request (one audit row per subject) with the client's one-time public key, and
/// commits it, which wakes a recovery service; returns the request id.
pub async fn request(
    pool: &PgPool,
    kind: RequestKind,
    subjects: &[String],
    reason: &str,
    ticket: Option<&str>,
    public_key: &[u8],
    break_glass: bool,
) -> Result<i64, sqlx::Error> {
    let query = match kind {
        RequestKind::Recover(field) => {
            sqlx::query_scalar("SELECT recovery.request($1, $2, $3, $4, $5, $6)")
                .bind(field.as_str())
                .bind(subjects)
        }
        RequestKind::Quarantine => {
            sqlx::query_scalar("SELECT recovery.request_quarantine($1, $2, $3, $4, $5)")
                .bind(subjects)
        }
    };
    query
        .bind(reason)
        .bind(ticket)
        .bind(public_key)
        .bind(break_glass)
        .fetch_one(pool)
        .await
}

/// The channel a service notifies when it stored a request's replies (payload: the request id).
pub const REPLIES_CHANNEL: &str = "etl_recovery_replies";
/// The channel a committed request notifies (payload: the request id).
pub const REQUESTS_CHANNEL: &str = "etl_recovery_requests";

/// One subject's reply, sealed to the client's key where it opened.
#[derive(Clone, sqlx::FromRow)]
pub struct Reply {
    pub ord: i32,
    pub subject: String,
    /// `found`, `not_found`, `refused`, or `failed` (it did not open).
    pub outcome: String,
    /// Why a request was refused, or why a value did not open.
    pub detail: Option<String>,
    pub sealed: Option<Vec<u8>>,
}

/// The replies of a request, if a service stored them (row level security shows a database user
/// its own replies only). Empty while none are stored.
pub async fn replies(pool: &PgPool, request_id: i64) -> Result<Vec<Reply>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ord, subject, outcome, detail, sealed FROM recovery.replies \
         WHERE request_id = $1 ORDER BY ord",
    )
    .bind(request_id)
    .fetch_all(pool)
    .await
}

/// Deletes a request's replies once they are opened.
pub async fn discard_replies(pool: &PgPool, request_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM recovery.replies WHERE request_id = $1")
        .bind(request_id)
        .execute(pool)
        .await
        .map(drop)
}

/// Withdraws a request its client stopped waiting for: it is never opened afterwards.
pub async fn cancel(pool: &PgPool, request_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT recovery.cancel($1)")
        .bind(request_id)
        .execute(pool)
        .await
        .map(drop)
}

/// A request a service claimed: its row stays locked until the claiming transaction ends.
#[derive(Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: i64,
    /// `recover` or `quarantine_open`.
    pub kind: String,
    pub field: Option<String>,
    pub requester: String,
    pub public_key: Vec<u8>,
}

/// The oldest request not opened yet that no other service holds.
pub async fn claim_request(conn: &mut PgConnection) -> Result<Option<Claimed>, sqlx::Error> {
    sqlx::query_as("SELECT id, kind, field, requester, public_key FROM recovery.claim_request()")
        .fetch_optional(conn)
        .await
}

/// The audit row of an opening, committed (on `pool`, not in the claiming transaction) before
/// anything is decrypted. `false`: the request failed too often and is closed as failed instead.
pub async fn record_opening(pool: &PgPool, request_id: i64) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.record_opening($1)")
        .bind(request_id)
        .fetch_one(pool)
        .await
}

/// Closes a claimed request that failed too often (in the claiming transaction).
pub async fn close_failed(conn: &mut PgConnection, request_id: i64) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT recovery.close_failed($1)")
        .bind(request_id)
        .execute(conn)
        .await
        .map(drop)
}

/// What opens one subject of a claimed request.
#[derive(Clone, sqlx::FromRow)]
pub struct Material {
    pub ord: i32,
    pub subject: String,
    pub outcome: String,
    pub detail: Option<String>,
    /// The vault entry's ciphertext, or the quarantined body as sealed.
    pub sealed: Option<Vec<u8>>,
    pub key_purpose: Option<String>,
    pub key_version: Option<i32>,
    pub kms_key_id: Option<String>,
    pub wrapped_key: Option<Vec<u8>>,
}

pub async fn opening_material(
    conn: &mut PgConnection,
    request_id: i64,
) -> Result<Vec<Material>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ord, subject, outcome, detail, sealed, key_purpose, key_version, kms_key_id, \
         wrapped_key FROM recovery.opening_material($1)",
    )
    .bind(request_id)
    .fetch_all(conn)
    .await
}

/// One subject's reply as the service stores it: the outcome and detail where they differ from
/// the audit row's (a value that did not open), and the sealed value where one opened.
#[derive(Default)]
pub struct SealedReply {
    pub outcome: Option<String>,
    pub detail: Option<String>,
    pub sealed: Option<Vec<u8>>,
}

/// Stores a claimed request's replies, in subject order, and marks it opened.
pub async fn store_replies(
    conn: &mut PgConnection,
    request_id: i64,
    replies: &[SealedReply],
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT recovery.store_replies($1, $2, $3, $4)")
        .bind(request_id)
        .bind(
            replies
                .iter()
                .map(|r| r.outcome.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|r| r.detail.as_deref())
                .collect::<Vec<_>>(),
        )
        .bind(
            replies
                .iter()
                .map(|r| r.sealed.as_deref())
                .collect::<Vec<_>>(),
        )
        .execute(conn)
        .await
        .map(drop)
}

/// Deletes replies not collected within `ttl` (and their requests); returns how many requests.
pub async fn expire_replies(pool: &PgPool, ttl: std::time::Duration) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.expire_replies(make_interval(secs => $1))")
        .bind(ttl.as_secs_f64())
        .fetch_one(pool)
        .await
}

/// The recovery policy as stored.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Policy {
    pub require_ticket: bool,
    /// Values one database user may open per UTC day; 0: no limit.
    pub daily_limit: i32,
    /// Distinct approvers (members of etl_approver, never the requester) a request needs.
    pub approvals: i32,
    /// How long a request waits for its approvals before it expires.
    pub approval_ttl_seconds: f64,
    pub updated_at: DateTime<Utc>,
    pub updated_by: String,
}

const POLICY_COLUMNS: &str = "require_ticket, daily_limit, approvals, \
    extract(epoch FROM approval_ttl)::float8 AS approval_ttl_seconds, updated_at, updated_by";

pub async fn policy(pool: &PgPool) -> Result<Policy, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM recovery.policy WHERE singleton"
    ))
    .fetch_one(pool)
    .await
}

/// Changes the given settings (the others stay) and records the change in the audit log.
pub async fn set_policy(
    pool: &PgPool,
    require_ticket: Option<bool>,
    daily_limit: Option<i32>,
    approvals: Option<i32>,
    approval_ttl: Option<std::time::Duration>,
) -> Result<Policy, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {POLICY_COLUMNS} FROM recovery.set_policy($1, $2, $3, make_interval(secs => $4))"
    ))
    .bind(require_ticket)
    .bind(daily_limit)
    .bind(approvals)
    .bind(approval_ttl.map(|ttl| ttl.as_secs_f64()))
    .fetch_one(pool)
    .await
}

/// A request waiting for approval, as approvers see it (never a value).
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Pending {
    pub id: i64,
    pub requester: String,
    pub kind: String,
    pub field: Option<String>,
    pub subjects: i64,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub created_at: DateTime<Utc>,
    pub approvals: i64,
    pub approvals_needed: i32,
    pub expires_at: Option<DateTime<Utc>>,
}

pub async fn pending(pool: &PgPool) -> Result<Vec<Pending>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, requester, kind, field, subjects, reason, ticket, created_at, approvals, \
         approvals_needed, expires_at FROM recovery.pending()",
    )
    .fetch_all(pool)
    .await
}

/// Approves a request; returns how many approvals it still needs.
pub async fn approve(pool: &PgPool, request_id: i64, reason: &str) -> Result<i32, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.approve($1, $2)")
        .bind(request_id)
        .bind(reason)
        .fetch_one(pool)
        .await
}

pub async fn deny(pool: &PgPool, request_id: i64, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT recovery.deny($1, $2)")
        .bind(request_id)
        .bind(reason)
        .execute(pool)
        .await
        .map(drop)
}

/// Where one of the caller's own requests stands.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RequestState {
    pub kind: String,
    pub field: Option<String>,
    pub approvals: i64,
    pub approvals_needed: i32,
    pub expires_at: Option<DateTime<Utc>>,
    pub opened: bool,
    pub closed: bool,
}

pub async fn request_state(
    pool: &PgPool,
    request_id: i64,
) -> Result<Option<RequestState>, sqlx::Error> {
    sqlx::query_as(
        "SELECT kind, field, approvals, approvals_needed, expires_at, opened, closed \
         FROM recovery.request_state($1)",
    )
    .bind(request_id)
    .fetch_optional(pool)
    .await
}

/// A break-glass opening not reviewed yet.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Unreviewed {
    pub id: i64,
    pub requester: String,
    pub kind: String,
    pub field: Option<String>,
    pub subjects: i64,
    pub reason: Option<String>,
    pub ticket: Option<String>,
    pub created_at: DateTime<Utc>,
    pub opened_at: Option<DateTime<Utc>>,
}

pub async fn unreviewed(pool: &PgPool) -> Result<Vec<Unreviewed>, sqlx::Error> {
    sqlx::query_as(
        "SELECT id, requester, kind, field, subjects, reason, ticket, created_at, opened_at \
         FROM recovery.unreviewed()",
    )
    .fetch_all(pool)
    .await
}

pub async fn review(pool: &PgPool, request_id: i64, reason: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT recovery.review($1, $2)")
        .bind(request_id)
        .bind(reason)
        .execute(pool)
        .await
        .map(drop)
}

/// Break-glass openings waiting for review (the service's gauge).
pub async fn unreviewed_count(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.unreviewed_count()")
        .fetch_one(pool)
        .await
}

/// Closes requests whose approvals did not come in time; returns how many.
pub async fn expire_pending(pool: &PgPool) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT recovery.expire_pending()")
        .fetch_one(pool)
        .await
}
