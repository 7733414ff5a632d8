//! Committing a set of messages: one transaction with retries of transient errors; a batch the
//! database rejects is split until the offending messages are isolated and quarantined, so one
//! bad row never costs good ones. Shared by the SQS and the file sources.

use std::sync::Arc;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable};
use sqlx::PgPool;
use tracing::{debug, warn};

use super::batch::{ClaimKind, WriteBatch, WriteOutcome, Written};
use super::transform::PrepareError;
use super::vault_state::VaultState;
use super::Stats;
use crate::adapters::postgres::{self, redacted, writer};
use crate::domain::{IpPrefix, Message, ReasonCode};
use crate::keys::{KeyLoadError, LiveKeys};

/// The one commit path of every source (SQS, file, Lambda) and of `etl quarantine replay`.
pub struct Committer {
    pool: PgPool,
    /// The keys in use, reloaded when the active versions change.
    keys: Arc<LiveKeys>,
    /// Masks committed to the vault and forgotten users, shared by all writers of the process.
    vault: VaultState,
    stats: Arc<Stats>,
    /// Receives after which a message that still cannot be written is quarantined.
    max_receives: i32,
    /// Whether rows carry their ip's network, and how long a prefix.
    ip_prefix: Option<IpPrefix>,
}

impl Committer {
    /// One committer per process, shared by its writers: one vault state for all of them.
    pub fn new(pool: PgPool, keys: Arc<LiveKeys>, stats: Arc<Stats>, max_receives: i32) -> Self {
        Self {
            pool,
            keys,
            vault: VaultState::default(),
            stats,
            max_receives,
            ip_prefix: None,
        }
    }

    /// Rows also carry their ip's network (`--ip-prefix`).
    pub fn with_ip_prefix(mut self, ip_prefix: Option<IpPrefix>) -> Self {
        self.ip_prefix = ip_prefix;
        self
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keys(&self) -> &LiveKeys {
        &self.keys
    }

    /// Masks known to be committed to the vault, and the users forgotten, as of an epoch.
    pub fn vault(&self) -> &VaultState {
        &self.vault
    }

    /// The process's counters, which every commit adds to.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Writes messages claimed as `kind` says, with retries of transient errors, and returns
    /// what this call committed. When the database rejects the batch itself, it is split in
    /// halves until the offending messages are isolated; those are quarantined and the rest
    /// written, so one bad row never costs good ones.
    pub async fn commit(
        &self,
        messages: &[Message],
        kind: ClaimKind,
    ) -> Result<WriteOutcome, CommitError> {
        if self.vault.epoch().is_none() {
            self.refresh_vault_state().await?;
        }
        let mut committed = WriteOutcome::default();
        let mut pending: Vec<&[Message]> = vec![messages];
        while let Some(part) = pending.pop() {
            let transformer = self.keys.current();
            let batch =
                transformer.prepare(part, kind, chrono::Utc::now(), &self.vault, self.ip_prefix)?;
            match self.write(&batch).await {
                Ok(Some(outcome)) => committed.add(&outcome),
                // Prepared before an erasure, a vault deletion or a key change: again, with what
                // is now known.
                Ok(None) => {
                    self.refresh_vault_state().await?;
                    pending.push(part);
                }
                // Either the part's messages are all quarantined and the other parts go on, or
                // the whole batch fails: never success with a part left unwritten.
                Err(err) if postgres::is_transient(&err) => {
                    committed.add(&self.quarantine_exhausted(part, kind, err).await?);
                }
                // Not the rows' fault: splitting would fail every half the same way. The
                // messages stay on the queue (or in the file) for a later attempt.
                Err(err) if !postgres::rejects_rows(&err) => return Err(err.into()),
                Err(err) if part.len() > 1 => {
                    debug!(error = %redacted(&err), messages = part.len(), "batch rejected; splitting it");
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.extend([right, left]);
                }
                Err(err) => {
                    let [message] = part else { continue };
                    warn!(message_id = %message.id, error = %redacted(&err), "the database rejected this message; quarantining it");
                    let detail = format!("PostgreSQL rejected the row ({})", redacted(&err));
                    let reason = ReasonCode::DatabaseRejected;
                    committed.add(&self.quarantine(message, kind, reason, detail).await?);
                }
            }
        }
        Ok(committed)
    }

    /// What [`Self::commit`] would commit, prepared the same way (validation, masks, the
    /// suppression list) and tried against `user_logins` in transactions that are rolled back,
    /// split as `commit` splits a rejected batch: a dry run's figures, with nothing written.
    pub async fn preview(
        &self,
        messages: &[Message],
        kind: ClaimKind,
    ) -> Result<WriteOutcome, CommitError> {
        if self.vault.epoch().is_none() {
            self.refresh_vault_state().await?;
        }
        let mut outcome = WriteOutcome::default();
        let mut pending: Vec<&[Message]> = vec![messages];
        while let Some(part) = pending.pop() {
            let batch = self.keys.current().prepare(
                part,
                kind,
                chrono::Utc::now(),
                &self.vault,
                self.ip_prefix,
            )?;
            match writer::trial_logins(&self.pool, &batch).await {
                Ok(()) => {
                    outcome.written += batch.logins.len() as u64;
                    outcome.forgotten_skipped += batch.forgotten.len() as u64;
                    for row in &batch.quarantine {
                        *outcome
                            .quarantined
                            .entry(row.reason.as_str().to_owned())
                            .or_default() += 1;
                    }
                }
                Err(err) if postgres::rejects_rows(&err) && part.len() > 1 => {
                    let (left, right) = part.split_at(part.len() / 2);
                    pending.extend([right, left]);
                }
                Err(err) if postgres::rejects_rows(&err) => {
                    *outcome
                        .quarantined
                        .entry(ReasonCode::DatabaseRejected.as_str().to_owned())
                        .or_default() += 1;
                }
                Err(err) => return Err(err.into()),
            }
        }
        Ok(outcome)
    }

    /// After transient errors outlasted the retries: messages received too often are
    /// quarantined (if the database takes it) so a poison message cannot block the queue;
    /// the others stay on the queue.
    async fn quarantine_exhausted(
        &self,
        part: &[Message],
        kind: ClaimKind,
        err: sqlx::Error,
    ) -> Result<WriteOutcome, CommitError> {
        let limit = self.max_receives;
        let (poisoned, others): (Vec<&Message>, Vec<&Message>) = part
            .iter()
            .partition(|m| m.receive_count.is_some_and(|count| count >= limit));
        if poisoned.is_empty() {
            return Err(err.into());
        }
        // The exhausted ones go to quarantine even when fresh messages share their batch, so a
        // message that keeps failing its batches cannot hold them back; the others fail with
        // the batch and come back.
        let mut committed = WriteOutcome::default();
        for message in poisoned {
            warn!(message_id = %message.id, "received too many times; quarantining it");
            let detail = format!(
                "not written after {} receives ({})",
                message.receive_count.unwrap_or(limit),
                redacted(&err)
            );
            let reason = ReasonCode::MaxReceivesExceeded;
            committed.add(&self.quarantine(message, kind, reason, detail).await?);
        }
        if others.is_empty() {
            Ok(committed)
        } else {
            Err(err.into())
        }
    }

    /// Quarantines one message whatever its content.
    async fn quarantine(
        &self,
        message: &Message,
        kind: ClaimKind,
        reason: ReasonCode,
        detail: String,
    ) -> Result<WriteOutcome, CommitError> {
        loop {
            let batch = self.keys.current().prepare_quarantine(
                message,
                kind,
                reason,
                detail.clone(),
                &self.vault,
            )?;
            if let Some(outcome) = self.write(&batch).await? {
                return Ok(outcome);
            }
            self.refresh_vault_state().await?;
        }
    }

    /// One batch write, retrying transient errors with backoff; counts what it committed.
    /// `None` when the batch was prepared under an older vault epoch or with keys no longer
    /// active: nothing was committed; the caller refreshes the vault state (and the keys) and
    /// prepares the batch again.
    async fn write(&self, batch: &WriteBatch) -> Result<Option<WriteOutcome>, sqlx::Error> {
        let written = (|| writer::write_batch(&self.pool, batch))
            .retry(backoff())
            .when(postgres::is_transient)
            .notify(|err, delay| {
                warn!(error = %redacted(err), retry_in_ms = delay.as_millis() as u64, "database write failed; retrying");
            })
            .await?;
        let outcome = match written {
            Written::Committed(outcome) => outcome,
            Written::Stale { epoch } => {
                debug!(epoch, "the vault epoch moved on; preparing the batch again");
                return Ok(None);
            }
            Written::KeysChanged => {
                debug!("the active key versions changed; reloading the keys");
                return Ok(None);
            }
        };
        debug!(written = outcome.written, quarantined = ?outcome.quarantined,
               duplicates_skipped = outcome.duplicates_skipped,
               forgotten_skipped = outcome.forgotten_skipped, "batch committed");
        self.stats.committed(&outcome);
        if let Some(epoch) = batch.vault_epoch {
            self.vault.insert_committed(
                epoch,
                batch.vault.iter().map(|entry| (entry.field, entry.mask)),
            );
        }
        Ok(Some(outcome))
    }

    /// Reads the vault epoch and the active key versions, reloads the keys if they changed,
    /// then takes the users forgotten since the last read. The keys are reloaded before the
    /// epoch is taken, so a batch prepared under that epoch uses the keys active at it.
    async fn refresh_vault_state(&self) -> Result<(), CommitError> {
        let upto = self.vault.forgotten_upto();
        let (state, forgotten) = (|| postgres::lifecycle::vault_state_since(&self.pool, upto))
            .retry(backoff())
            .when(postgres::is_transient)
            .await?;
        if !self.keys.matches(&state) {
            (|| self.keys.reload(&self.pool))
                .retry(backoff())
                .when(KeyLoadError::is_transient)
                .await?;
        }
        self.vault.advance(state.epoch, forgotten);
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("cannot prepare the batch: {0}")]
    Prepare(#[from] PrepareError),
    #[error("cannot load the keys now active: {0}")]
    Keys(#[from] KeyLoadError),
    // PostgreSQL messages can quote row values, so only SQLSTATE and constraint are shown.
    #[error("database: {}", redacted(.0))]
    Database(#[from] sqlx::Error),
}

/// Exponential backoff with jitter: 100 ms doubling to 10 s, eight tries.
pub fn backoff() -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(10))
        .with_max_times(8)
}
