//! The writers: tasks that commit batches through the one commit path, whichever source made
//! them. A source sends [`WriteJob`]s into a bounded channel and, if it needs to act on the
//! outcome (the SQS source deletes or releases the messages), waits for it on the job's channel.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, Mutex};
use tokio::task::JoinSet;
use tracing::{error, info_span, Instrument};

use super::batch::ClaimKind;
use super::budget::Taken;
use super::commit::{CommitError, Committer};
use crate::domain::Message;

/// A batch to commit, how its messages are claimed, where to report how it went, and the share
/// of its source's byte budget its bodies hold, given back when the job is done with.
pub struct WriteJob {
    pub messages: Vec<Message>,
    pub claim: ClaimKind,
    pub outcome: Option<oneshot::Sender<Result<(), CommitError>>>,
    pub bytes: Taken,
}

/// Starts `writers` tasks taking jobs from one channel: whichever is free takes the next job.
/// They end when every sender of the channel is dropped and the channel is empty.
pub fn spawn(
    committer: Arc<Committer>,
    writers: usize,
    jobs: mpsc::Receiver<WriteJob>,
) -> JoinSet<()> {
    let jobs = Arc::new(Mutex::new(jobs));
    let mut tasks = JoinSet::new();
    for writer in 0..writers.max(1) {
        let (committer, jobs) = (Arc::clone(&committer), Arc::clone(&jobs));
        tasks.spawn(
            async move {
                loop {
                    // The lock is held only while waiting for the next job.
                    let Some(job) = jobs.lock().await.recv().await else {
                        return;
                    };
                    write(&committer, job).await;
                }
            }
            .instrument(info_span!("writer", writer)),
        );
    }
    tasks
}

async fn write(committer: &Committer, job: WriteJob) {
    let batch_id = uuid::Uuid::new_v4().simple().to_string();
    let span = info_span!("batch", batch_id = &batch_id[..12]);
    let started = Instant::now();
    let result = committer
        .commit(&job.messages, job.claim)
        .instrument(span.clone())
        .await
        .map(drop);
    let stats = committer.stats();
    stats.batch_finished(job.messages.len(), started.elapsed());
    if let Err(err) = &result {
        stats.write_failed();
        span.in_scope(
            || error!(error = %err, messages = job.messages.len(), "batch not committed"),
        );
    }
    if let Some(outcome) = job.outcome {
        // A source that stopped waiting has nothing left to do with the outcome.
        let _ = outcome.send(result);
    }
}
