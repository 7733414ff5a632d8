//! `etl ingest --from-file`: one JSON body per line (a dead-letter queue export, an archive, a
//! backfill) through the same validate → mask → seal → write path as SQS, with the same
//! quarantine and summary.
//!
//! Idempotency without a row per line: the input is known by its fingerprint (a keyed digest of
//! its first non-empty line), each line by its number, so a line's stable id is
//! `file:<fingerprint>:<line number>` (stored in `user_logins.message_id`). Each batch claims its
//! line range with a keyed digest of the lines' content in `etl.file_batches`, in its own
//! transaction.
//! A replay reads the committed ranges first, checks that the input's lines in each range have
//! the committed digest, and skips them; so replaying the same file, or a longer one that starts
//! with it (an export that grew, a run cut short), writes nothing twice. If the lines in a
//! committed range differ, the run stops with an error naming the range, before writing any
//! later line: another input that shares the first line is refused there (lines before that
//! range which no earlier run committed are written under its ids). One run per input at a time:
//! a session advisory lock on the fingerprint refuses a second; it lives on one connection, so a
//! cut connection lifts it.
//!
//! Lines have no SentTimestamp, so their `create_date` is the processing date. Bytes that are not
//! UTF-8 are replaced (U+FFFD) and the line is judged as text. Empty lines are skipped.
//!
//! A reader thread parses lines into batches and hands them over a bounded channel to `writers`
//! tasks, so reading, transforming and writing overlap and memory stays flat.

use std::borrow::Cow;
use std::fmt::Write;
use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use sqlx::{Connection, PgConnection};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{error, info};

use super::commit::Committer;
use super::{Stats, Summary};
use crate::adapters::sqs::ReceivedMessage;
use crate::crypto::{LineKey, LinesDigest};
use crate::domain::file_line::{message_id_prefix, FileLine, Fingerprint};

#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Messages per transaction.
    pub batch_size: usize,
    /// Concurrent transactions.
    pub writers: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error("cannot read the input: {0}")]
    Io(#[from] std::io::Error),
    #[error("cannot read the input's progress from the database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("another `etl ingest --from-file` is ingesting an input with this first line (fingerprint {0}); wait for it to end")]
    Busy(String),
    #[error("lines {first}-{last} differ from the lines committed from an input with the same first line (fingerprint {fingerprint}); no line from {first} on was written. Is this another file?")]
    Mismatch {
        fingerprint: String,
        first: i64,
        last: i64,
    },
    #[error("the input ends at line {end}, inside lines {first}-{last} committed from an input with the same first line (fingerprint {fingerprint}); is it a truncated copy? Nothing from line {first} on was written")]
    Truncated {
        fingerprint: String,
        first: i64,
        last: i64,
        end: u64,
    },
    #[error("the writers stopped before the input was read to its end: {0}")]
    Writers(String),
}

/// A range of lines an earlier run committed.
#[derive(Debug, Clone, sqlx::FromRow)]
struct CommittedRange {
    first_line: i64,
    last_line: i64,
    lines_digest: Vec<u8>,
}

/// Reads `input` to its end and commits every line not committed by an earlier run.
pub async fn run(
    input: Box<dyn BufRead + Send>,
    committer: Committer,
    options: FileOptions,
) -> Result<Summary, FileSourceError> {
    let started = Instant::now();
    let stats = Arc::clone(&committer.stats);
    let (mut input, first) = tokio::task::spawn_blocking(move || {
        let mut input = input;
        first_line(&mut input).map(|first| (input, first))
    })
    .await
    .map_err(std::io::Error::other)??;
    let Some((first_number, first_line)) = first else {
        return Ok(stats.summary(started.elapsed()));
    };
    let line_key = committer.transformer.masker().line_key().clone();
    let source = line_key.fingerprint(&first_line);
    // Held to the end of the run: closing it releases the lock.
    let lock = lock_source(&committer.pool, source).await?;
    let committed = committed_ranges(&committer.pool, source).await?;
    if !committed.is_empty() {
        info!(
            ranges = committed.len(),
            "input seen before: skipping its committed lines"
        );
    }

    // One batch waiting per writer keeps every writer busy; more would only hold memory.
    let (batches, receiver) = mpsc::channel::<Vec<ReceivedMessage>>(options.writers);
    let reader = Reader {
        line_key,
        source,
        id_prefix: message_id_prefix(source),
        batch_size: options.batch_size,
        committed,
        next_range: 0,
        checking: None,
        batch: Vec::with_capacity(options.batch_size),
        batches,
        stats: Arc::clone(&stats),
        last_number: 0,
    };
    let reading = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        reader.line(first_number, &first_line)?;
        reader.read_all(&mut input, first_number)
    });

    let committer = Arc::new(committer);
    // One receiver shared by the writers: whichever is free takes the next batch.
    let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
    let mut writers = JoinSet::new();
    for _ in 0..options.writers.max(1) {
        let (committer, receiver) = (Arc::clone(&committer), Arc::clone(&receiver));
        writers.spawn(async move {
            loop {
                let Some(batch) = receiver.lock().await.recv().await else {
                    return;
                };
                committer.stats.received(batch.len());
                let batch_started = Instant::now();
                if let Err(err) = committer.commit(&batch).await {
                    committer.stats.write_failed();
                    error!(error = %err, messages = batch.len(), "batch from file not committed");
                }
                committer
                    .stats
                    .batch_finished(batch.len(), batch_started.elapsed());
            }
        });
    }
    let mut writer_failure = None;
    while let Some(joined) = writers.join_next().await {
        if let Err(err) = joined {
            writer_failure = Some(FileSourceError::Writers(err.to_string()));
        }
    }
    let read = reading.await.map_err(std::io::Error::other)?;
    // The lock goes with the connection; a failed close only means the server already dropped it.
    let _ = lock.close().await;
    if let Some(failure) = writer_failure {
        return Err(failure);
    }
    read?;
    Ok(stats.summary(started.elapsed()))
}

/// The first non-empty line and its number, or `None` for an input without one.
fn first_line(input: &mut dyn BufRead) -> std::io::Result<Option<(u64, Vec<u8>)>> {
    let mut line = Vec::new();
    let mut number = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            return Ok(None);
        }
        number += 1;
        trim_line_end(&mut line);
        if !line.is_empty() {
            return Ok(Some((number, line)));
        }
    }
}

fn trim_line_end(line: &mut Vec<u8>) {
    while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        line.pop();
    }
}

/// A session advisory lock on the fingerprint, on a connection of its own.
async fn lock_source(
    pool: &sqlx::PgPool,
    source: Fingerprint,
) -> Result<PgConnection, FileSourceError> {
    let mut conn = pool.acquire().await?.detach();
    let mut key = [0u8; 8];
    key.copy_from_slice(&source[..8]);
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(i64::from_be_bytes(key))
        .fetch_one(&mut conn)
        .await?;
    if !locked {
        let _ = conn.close().await;
        return Err(FileSourceError::Busy(hex::encode(source)));
    }
    Ok(conn)
}

async fn committed_ranges(
    pool: &sqlx::PgPool,
    source: Fingerprint,
) -> Result<Vec<CommittedRange>, sqlx::Error> {
    sqlx::query_as(
        "SELECT first_line, last_line, lines_digest FROM etl.file_batches
         WHERE source = $1 ORDER BY first_line",
    )
    .bind(source.as_slice())
    .fetch_all(pool)
    .await
}

/// Turns lines into batches, skipping (after checking) the lines of committed ranges.
struct Reader {
    line_key: LineKey,
    source: Fingerprint,
    /// `file:<fingerprint>:`, so a line's id is one concatenation.
    id_prefix: String,
    batch_size: usize,
    committed: Vec<CommittedRange>,
    /// Index of the first committed range not yet passed.
    next_range: usize,
    /// The committed range being checked, with the digest of its lines read so far.
    checking: Option<(CommittedRange, LinesDigest, usize)>,
    batch: Vec<ReceivedMessage>,
    batches: mpsc::Sender<Vec<ReceivedMessage>>,
    stats: Arc<Stats>,
    /// Number of the last non-empty line read.
    last_number: u64,
}

impl Reader {
    fn read_all(
        &mut self,
        input: &mut dyn BufRead,
        mut number: u64,
    ) -> Result<(), FileSourceError> {
        let mut line = Vec::new();
        loop {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            number += 1;
            trim_line_end(&mut line);
            if !line.is_empty() {
                self.line(number, &line)?;
            }
        }
        if let Some((range, _, _)) = &self.checking {
            let end = self.last_number;
            if i64::try_from(end).unwrap_or(i64::MAX) < range.last_line {
                return Err(FileSourceError::Truncated {
                    fingerprint: hex::encode(self.source),
                    first: range.first_line,
                    last: range.last_line,
                    end,
                });
            }
        }
        self.finish_check()?;
        self.flush()
    }

    /// Handles one non-empty line.
    fn line(&mut self, number: u64, line: &[u8]) -> Result<(), FileSourceError> {
        self.last_number = number;
        // Borrowed until it joins a batch: lines of committed ranges are only digested.
        let body = match std::str::from_utf8(line) {
            Ok(text) => Cow::Borrowed(text),
            Err(_) => String::from_utf8_lossy(line),
        };
        let position = i64::try_from(number).unwrap_or(i64::MAX);
        if self
            .checking
            .as_ref()
            .is_some_and(|(range, _, _)| position > range.last_line)
        {
            self.finish_check()?;
        }
        if self.checking.is_none() {
            let next = self.committed.get(self.next_range).cloned();
            if let Some(range) = next.filter(|range| position >= range.first_line) {
                // A batch never spans a committed range, so claimed ranges never overlap.
                self.flush()?;
                self.checking = Some((range, self.line_key.range(), 0));
                self.next_range += 1;
            }
        }
        if let Some((_, digest, lines)) = self.checking.as_mut() {
            digest.add(number, body.as_bytes());
            *lines += 1;
            return Ok(());
        }
        let line = FileLine {
            source: self.source,
            number,
        };
        let mut message_id = String::with_capacity(self.id_prefix.len() + 20);
        message_id.push_str(&self.id_prefix);
        // Writing into a String cannot fail.
        let _ = write!(message_id, "{number}");
        self.batch.push(ReceivedMessage {
            message_id,
            receipt_handle: String::new(),
            body: body.into_owned(),
            sent_timestamp: None,
            receive_count: None,
            line: Some(line),
        });
        if self.batch.len() >= self.batch_size {
            self.flush()?;
        }
        Ok(())
    }

    /// Compares the range being checked with what was committed.
    fn finish_check(&mut self) -> Result<(), FileSourceError> {
        let Some((range, digest, lines)) = self.checking.take() else {
            return Ok(());
        };
        if digest.finish().as_slice() != range.lines_digest.as_slice() {
            return Err(FileSourceError::Mismatch {
                fingerprint: hex::encode(self.source),
                first: range.first_line,
                last: range.last_line,
            });
        }
        self.stats.already_committed(lines);
        Ok(())
    }

    /// Sends the batch being built to the writers.
    fn flush(&mut self) -> Result<(), FileSourceError> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.batch, Vec::with_capacity(self.batch_size));
        self.batches
            .blocking_send(full)
            .map_err(|_| FileSourceError::Writers("they no longer take batches".to_owned()))
    }
}
