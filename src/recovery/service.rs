//! The recovery service: the one long-running principal, besides ingest, that unwraps vault and
//! quarantine keys. It takes its work from the database (a notification when a request commits,
//! a poll as the fallback), never from a network port of its own. For each request:
//!
//! 1. claim it, in a transaction that holds its row (`FOR UPDATE SKIP LOCKED`): another service
//!    skips it, and a service that dies releases it to the next;
//! 2. commit the audit row of this opening, in a transaction of its own, before anything is
//!    decrypted: no audit row, no value;
//! 3. read what opens each found subject, open it with a cached key (each key version unwrapped
//!    once, kept for a bounded time), and seal it to the client's one-time public key;
//! 4. store the sealed replies and mark the request opened, in the claiming transaction; the
//!    commit wakes the client.

use std::time::{Duration, Instant};

use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::BODY;
use crate::adapters::kms::Kms;
use crate::adapters::postgres::recovery::{self, Claimed, Material, SealedReply};
use crate::adapters::postgres::redacted;
use crate::crypto::{KeyPurpose, ReplySealer, SealError};
use crate::domain::PiiField;
use crate::keys::{KeyCache, Opener, StoredKeyRef};

/// How the service runs.
#[derive(Debug, Clone)]
pub struct ServiceSettings {
    /// Longest wait between two looks for requests when no notification comes.
    pub poll: Duration,
    /// How long an unwrapped key version is kept.
    pub key_ttl: Duration,
    /// How long sealed replies wait for their client.
    pub reply_ttl: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("the recovery service cannot listen for requests: {}", redacted(.0))]
    Listen(#[source] sqlx::Error),
}

/// Why one request was not opened this time (it stays waiting, and is tried again).
#[derive(Debug, thiserror::Error)]
enum OpenError {
    #[error("database: {}", redacted(.0))]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Unwrap(#[from] crate::adapters::kms::UnwrapError),
}

/// Opens requests until `shutdown`. `ready` is called once it listens.
pub async fn run(
    pool: PgPool,
    kms: Kms,
    settings: ServiceSettings,
    shutdown: CancellationToken,
    ready: impl FnOnce(),
) -> Result<(), ServiceError> {
    let mut listener = PgListener::connect_with(&pool)
        .await
        .map_err(ServiceError::Listen)?;
    listener
        .listen(recovery::REQUESTS_CHANNEL)
        .await
        .map_err(ServiceError::Listen)?;
    ready();
    let mut keys = KeyCache::new(kms, settings.key_ttl);
    let mut last_housekeeping: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        // Every waiting request, oldest first, until none is left, one fails (it waits its own
        // backoff in the database, so it cannot block the others), or shutdown.
        while !shutdown.is_cancelled() {
            if last_housekeeping.is_none_or(|at| at.elapsed() >= HOUSEKEEPING_INTERVAL) {
                housekeeping(&pool, &settings).await;
                last_housekeeping = Some(Instant::now());
            }
            match open_next(&pool, &mut keys).await {
                Ok(true) => {}
                Ok(false) => break,
                Err(err) => {
                    warn!(error = %err, "a recovery request was not opened; it is tried again later");
                    break;
                }
            }
        }
        keys.evict_expired();
        metrics::gauge!("etl_recovery_keys_held").set(keys.len() as f64);
        tokio::select! {
            () = shutdown.cancelled() => {}
            received = listener.recv() => {
                // A listener that lost its connection reconnects by itself; not in a busy loop.
                if received.is_err() {
                    tokio::time::sleep(settings.poll).await;
                }
            }
            () = tokio::time::sleep(settings.poll) => {}
        }
    }
    info!("recovery service stopped");
    Ok(())
}

/// Requests whose approvals did not come in time are refused; replies past their TTL deleted;
/// the break-glass openings waiting for review counted.
async fn housekeeping(pool: &PgPool, settings: &ServiceSettings) {
    match recovery::expire_pending(pool).await {
        Ok(0) => {}
        Ok(expired) => info!(expired, "requests expired before their approvals"),
        Err(err) => warn!(error = %redacted(&err), "cannot expire pending requests"),
    }
    match recovery::expire_replies(pool, settings.reply_ttl).await {
        Ok(0) => {}
        Ok(expired) => info!(expired, "uncollected recovery replies deleted"),
        Err(err) => warn!(error = %redacted(&err), "cannot delete expired replies"),
    }
    match recovery::unreviewed_count(pool).await {
        Ok(count) => metrics::gauge!("etl_recovery_break_glass_unreviewed").set(count as f64),
        Err(err) => warn!(error = %redacted(&err), "cannot count unreviewed break-glass openings"),
    }
}

/// How often the housekeeping runs.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(30);

/// Opens the oldest waiting request; `false` when none waits.
async fn open_next(pool: &PgPool, keys: &mut KeyCache) -> Result<bool, OpenError> {
    let started = Instant::now();
    let mut claim = pool.begin().await?;
    let Some(request) = recovery::claim_request(&mut claim).await? else {
        claim.commit().await?;
        return Ok(false);
    };
    // Committed on another connection while this one holds the request.
    if !recovery::record_opening(pool, request.id).await? {
        warn!(
            request_id = request.id,
            "a recovery request failed too often; closed as failed"
        );
        recovery::close_failed(&mut claim, request.id).await?;
        claim.commit().await?;
        return Ok(true);
    }
    let material = recovery::opening_material(&mut claim, request.id).await?;
    let replies = seal_replies(&request, &material, keys).await?;
    recovery::store_replies(&mut claim, request.id, &replies).await?;
    claim.commit().await?;
    let opened = replies.iter().filter(|r| r.sealed.is_some()).count();
    metrics::counter!("etl_recovery_requests_opened_total").increment(1);
    metrics::counter!("etl_recovery_values_opened_total").increment(opened as u64);
    metrics::histogram!("etl_recovery_open_seconds").record(started.elapsed().as_secs_f64());
    debug!(
        request_id = request.id,
        subjects = material.len(),
        opened,
        "recovery request opened"
    );
    Ok(true)
}

/// One reply per subject, in order: the sealed value where it opened; `failed` with the reason
/// where it did not (a value that does not open, a key KMS refuses), so the client gets an answer
/// rather than a wait. A transient KMS failure fails the whole request, which is tried again.
async fn seal_replies(
    request: &Claimed,
    material: &[Material],
    keys: &mut KeyCache,
) -> Result<Vec<SealedReply>, OpenError> {
    let sealer = ReplySealer::new(request.id, &request.public_key);
    let field = request.field.as_deref().and_then(PiiField::parse);
    let mut replies = Vec::with_capacity(material.len());
    for subject in material {
        if subject.outcome != "found" {
            replies.push(SealedReply::default());
            continue;
        }
        let sealed = match (&sealer, open(request, field, subject, keys).await) {
            (Ok(sealer), Ok(value)) => {
                let what = field.map_or(BODY, PiiField::as_str);
                sealer
                    .seal(what, &subject.subject, &value)
                    .map_err(Failure::Seal)
            }
            (Err(err), _) => Err(Failure::Seal(err.clone())),
            (_, Err(Failure::Unwrap(err))) if err.is_transient() => return Err(err.into()),
            (_, Err(failure)) => Err(failure),
        };
        replies.push(match sealed {
            Ok(sealed) => SealedReply {
                sealed: Some(sealed),
                ..SealedReply::default()
            },
            Err(failure) => {
                warn!(request_id = request.id, error = %failure, "a requested value did not open");
                SealedReply {
                    outcome: Some("failed".to_owned()),
                    detail: Some(failure.to_string()),
                    sealed: None,
                }
            }
        });
    }
    Ok(replies)
}

/// Why one found subject has no value. Names keys and subjects (masks, message ids), never a value.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("{0}")]
    Unwrap(crate::adapters::kms::UnwrapError),
    #[error("no key on record for it")]
    MissingKey,
    #[error("it does not open: {0}")]
    Open(SealError),
    #[error("its reply cannot be sealed: {0}")]
    Seal(SealError),
}

/// The plaintext of one found subject.
async fn open(
    request: &Claimed,
    field: Option<PiiField>,
    subject: &Material,
    keys: &mut KeyCache,
) -> Result<zeroize::Zeroizing<Vec<u8>>, Failure> {
    let (Some(sealed), Some(purpose), Some(version), Some(kms_key_id), Some(wrapped_key)) = (
        &subject.sealed,
        subject.key_purpose.as_deref().and_then(KeyPurpose::parse),
        subject.key_version,
        &subject.kms_key_id,
        &subject.wrapped_key,
    ) else {
        return Err(Failure::MissingKey);
    };
    let key = StoredKeyRef {
        purpose,
        version,
        kms_key_id,
        wrapped_key,
    };
    let opener = keys.opener(key).await.map_err(Failure::Unwrap)?;
    let opened = match (opener, request.kind.as_str(), field) {
        (Opener::Vault(sealer), "recover", Some(field)) => sealer
            .open_value(field, &subject.subject, sealed)
            .map(|value| zeroize::Zeroizing::new(value.as_bytes().to_vec())),
        (Opener::Vault(sealer), _, _) => sealer.open_body(&subject.subject, sealed),
        (Opener::Quarantine(opener), _, _) => opener.open(&subject.subject, sealed),
    };
    opened.map_err(Failure::Open)
}
