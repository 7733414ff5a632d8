//! `etl ingest --from-file`: one JSON body per line (a dead-letter queue export, an archive, a
//! backfill) through the same validate → mask → seal → write path as SQS, with the same
//! idempotency, quarantine and summary.
//!
//! Each line gets the stable id `file:<first 32 hex of SHA-256(body)>:<line number>`. Replaying
//! the same file, or a longer one that starts with it, writes nothing twice; the hash keeps
//! another file's line N from passing for this one's. Lines have no SentTimestamp, so their
//! `create_date` is the processing date. Bytes that are not UTF-8 are replaced (U+FFFD) and the
//! line is judged as text. Empty lines are skipped.
//!
//! A reader thread parses lines into batches and hands them over a bounded channel to `writers`
//! tasks, so reading, transforming and writing overlap and memory stays flat.

use std::io::BufRead;
use std::sync::Arc;
use std::time::Instant;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::error;

use super::commit::Committer;
use super::Summary;
use crate::adapters::sqs::ReceivedMessage;

#[derive(Debug, Clone, Copy)]
pub struct FileOptions {
    /// Messages per transaction.
    pub batch_size: usize,
    /// Concurrent transactions.
    pub writers: usize,
}

/// Reads `input` to its end and commits every line.
pub async fn run(
    input: Box<dyn BufRead + Send>,
    committer: Committer,
    options: FileOptions,
) -> std::io::Result<Summary> {
    let started = Instant::now();
    let stats = Arc::clone(&committer.stats);
    let (batches, receiver) = mpsc::channel::<Vec<ReceivedMessage>>(options.writers * 2);
    let reader =
        tokio::task::spawn_blocking(move || read_batches(input, options.batch_size, &batches));

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
    while writers.join_next().await.is_some() {}
    reader.await.map_err(std::io::Error::other)??;
    Ok(stats.summary(started.elapsed()))
}

fn read_batches(
    mut input: Box<dyn BufRead + Send>,
    batch_size: usize,
    batches: &mpsc::Sender<Vec<ReceivedMessage>>,
) -> std::io::Result<()> {
    let mut batch = Vec::with_capacity(batch_size);
    let mut line = Vec::new();
    let mut number: u64 = 0;
    loop {
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.is_empty() {
            continue;
        }
        let digest = Sha256::digest(&line);
        batch.push(ReceivedMessage {
            message_id: format!("file:{}:{number}", hex::encode(&digest[..16])),
            receipt_handle: String::new(),
            body: String::from_utf8_lossy(&line).into_owned(),
            sent_timestamp: None,
            receive_count: None,
        });
        if batch.len() == batch_size {
            let full = std::mem::replace(&mut batch, Vec::with_capacity(batch_size));
            if batches.blocking_send(full).is_err() {
                return Ok(());
            }
        }
    }
    if !batch.is_empty() {
        let _ = batches.blocking_send(batch);
    }
    Ok(())
}
