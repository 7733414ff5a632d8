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
//! A reader thread parses lines into batches (a batch is a range of lines, so it is the file
//! source's own batcher) and hands them to the pipeline's writers over a bounded channel, so
//! reading, transforming and writing overlap and memory stays flat.

use std::borrow::Cow;
use std::fmt::Write;
use std::io::BufRead;
use std::sync::Arc;

use sqlx::Connection;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::info;

use crate::adapters::postgres::file_batches::{self, CommittedRange};
use crate::crypto::{LineKey, LinesDigest};
use crate::domain::file_line::{message_id_prefix, FileLine, Fingerprint};
use crate::domain::Message;
use crate::pipeline::batch::ClaimKind;
use crate::pipeline::budget::Taken;
use crate::pipeline::{Committer, Stats, WriteJob};

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
    #[error("the writers stopped before the input was read to its end")]
    Writers,
}

/// Reads `input` to its end and sends every line not committed by an earlier run to `writers`
/// (through `jobs`), in batches of `batch_messages` lines. Returns when the writers are done.
pub async fn run(
    input: Box<dyn BufRead + Send>,
    committer: &Committer,
    jobs: mpsc::Sender<WriteJob>,
    mut writers: JoinSet<()>,
    batch_messages: usize,
) -> Result<(), FileSourceError> {
    let stats = Arc::clone(committer.stats());
    let (mut input, first) = tokio::task::spawn_blocking(move || {
        let mut input = input;
        first_line(&mut input).map(|first| (input, first))
    })
    .await
    .map_err(std::io::Error::other)??;
    let Some((first_number, first_line)) = first else {
        return Ok(());
    };
    // Claims are keyed by the user key version that made them and cannot be re-keyed: an input
    // claimed under an earlier version goes on under that version (no version is ever deleted),
    // a new one starts under the newest.
    let transformer = committer.keys().current();
    let mut chosen = None;
    for key in transformer.user_keys().all() {
        let fingerprint = key.line_key().fingerprint(&first_line);
        let committed = file_batches::committed_ranges(committer.pool(), fingerprint).await?;
        if chosen.is_none() || !committed.is_empty() {
            let found = !committed.is_empty();
            chosen = Some((key, fingerprint, committed));
            if found {
                break;
            }
        }
    }
    let Some((key, source, _)) = chosen else {
        return Ok(());
    };
    let (line_key, line_key_version) = (key.line_key().clone(), key.version());
    // Held to the end of the run: closing it releases the lock.
    let lock = file_batches::lock_source(committer.pool(), source)
        .await?
        .ok_or_else(|| FileSourceError::Busy(hex::encode(source)))?;
    // Read again under the lock: a run that held it may have committed more.
    let committed = file_batches::committed_ranges(committer.pool(), source).await?;
    if !committed.is_empty() {
        info!(
            ranges = committed.len(),
            "input seen before: skipping its committed lines"
        );
    }

    let reader = Reader {
        line_key,
        line_key_version,
        source,
        id_prefix: message_id_prefix(source),
        batch_size: batch_messages,
        committed,
        next_range: 0,
        checking: None,
        batch: Vec::with_capacity(batch_messages),
        jobs,
        stats,
        last_number: 0,
    };
    let read = tokio::task::spawn_blocking(move || {
        let mut reader = reader;
        reader.line(first_number, &first_line)?;
        reader.read_all(&mut input, first_number)
    })
    .await
    .map_err(std::io::Error::other)?;
    // The reader's end dropped `jobs`: the writers finish what is queued, then stop.
    let mut writers_failed = false;
    while let Some(joined) = writers.join_next().await {
        writers_failed |= joined.is_err();
    }
    // Held until the last batch is written. A failed close only means the server dropped it.
    let _ = lock.close().await;
    read?;
    if writers_failed {
        return Err(FileSourceError::Writers);
    }
    Ok(())
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

/// Turns lines into batches, skipping (after checking) the lines of committed ranges.
struct Reader {
    line_key: LineKey,
    /// The user key version of `line_key`, which the writers digest each batch's lines with.
    line_key_version: i32,
    source: Fingerprint,
    /// `file:<fingerprint>:`, so a line's id is one concatenation.
    id_prefix: String,
    batch_size: usize,
    committed: Vec<CommittedRange>,
    /// Index of the first committed range not yet passed.
    next_range: usize,
    /// The committed range being checked, with the digest of its lines read so far.
    checking: Option<(CommittedRange, LinesDigest, usize)>,
    batch: Vec<Message>,
    jobs: mpsc::Sender<WriteJob>,
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
        self.batch.push(Message {
            id: message_id,
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
        self.stats.received(full.len());
        // Failures are counted by the writers; the run's caller reports them.
        self.jobs
            .blocking_send(WriteJob {
                messages: full,
                claim: ClaimKind::FileLines {
                    line_key_version: self.line_key_version,
                },
                outcome: None,
                // Read lines wait in the bounded channel to the writers: a bound in batches.
                bytes: Taken::default(),
            })
            .map_err(|_| FileSourceError::Writers)
    }
}
