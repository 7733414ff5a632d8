//! Coalescing received messages into write batches: a batch goes to the writers when it holds
//! `max_messages` or `max_bytes`, or when its first message has waited `max_wait`, whichever
//! comes first. So a backlog is written in large transactions and a trickle still within
//! `max_wait`; and large bodies, which fill the byte budget long before `max_messages`, do not
//! wait for a batch that could never fill.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

/// What one receive hands the batcher: messages, and whatever travels with them (the SQS
/// source's share of its byte budget).
pub trait Group {
    /// How many messages it holds.
    fn messages(&self) -> usize;
    /// How many bytes of the source's budget it holds.
    fn bytes(&self) -> usize;
    /// Adds `other`'s messages after this group's.
    fn absorb(&mut self, other: Self);
}

#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub max_messages: usize,
    pub max_bytes: usize,
    pub max_wait: Duration,
}

/// Reads groups of messages (one receive each) until the channel closes, and hands batches to
/// `flush` in arrival order. A group is never split, so a batch may exceed `max_messages` by
/// less than one group. What is buffered when the channel closes is flushed.
pub async fn run<G, F, Fut>(mut groups: mpsc::Receiver<G>, limits: BatchLimits, mut flush: F)
where
    G: Group,
    F: FnMut(G) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    while let Some(first) = groups.recv().await {
        let deadline = Instant::now() + limits.max_wait;
        let mut batch = first;
        while batch.messages() < limits.max_messages && batch.bytes() < limits.max_bytes {
            tokio::select! {
                group = groups.recv() => match group {
                    Some(group) => batch.absorb(group),
                    None => break,
                },
                () = tokio::time::sleep_until(deadline) => break,
            }
        }
        flush(batch).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Message;

    impl Group for Vec<Message> {
        fn messages(&self) -> usize {
            self.len()
        }

        fn bytes(&self) -> usize {
            self.iter().map(|m| m.body.len()).sum()
        }

        fn absorb(&mut self, other: Self) {
            self.extend(other);
        }
    }

    fn group(ids: std::ops::Range<usize>) -> Vec<Message> {
        ids.map(|i| Message {
            id: format!("m-{i}"),
            body: String::new(),
            sent_timestamp: None,
            receive_count: None,
            line: None,
        })
        .collect()
    }

    async fn batches_of(
        limits: BatchLimits,
        feed: impl FnOnce(mpsc::Sender<Vec<Message>>) -> tokio::task::JoinHandle<()>,
    ) -> Vec<Vec<String>> {
        let (sender, receiver) = mpsc::channel(4);
        let feeding = feed(sender);
        let mut out = Vec::new();
        run(receiver, limits, |batch| {
            out.push(batch.into_iter().map(|m| m.id).collect::<Vec<_>>());
            async {}
        })
        .await;
        feeding.await.unwrap();
        out
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_a_partial_one_when_the_wait_passes() {
        let limits = BatchLimits {
            max_messages: 20,
            max_bytes: usize::MAX,
            max_wait: Duration::from_millis(500),
        };
        let batches = batches_of(limits, |sender| {
            tokio::spawn(async move {
                for start in [0, 10, 20] {
                    sender.send(group(start..start + 10)).await.unwrap();
                }
                // The third group waits alone until max_wait passes; then one more.
                tokio::time::sleep(Duration::from_secs(2)).await;
                sender.send(group(30..35)).await.unwrap();
            })
        })
        .await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(sizes, [20, 10, 5]);
        assert_eq!(batches[0][0], "m-0");
        assert_eq!(batches[2][4], "m-34");
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_holding_max_bytes_goes_at_once() {
        let limits = BatchLimits {
            max_messages: 1000,
            max_bytes: 25,
            max_wait: Duration::from_secs(3600),
        };
        let started = Instant::now();
        let batches = batches_of(limits, |sender| {
            tokio::spawn(async move {
                for start in [0, 10, 20, 30] {
                    let mut group = group(start..start + 10);
                    for message in &mut group {
                        message.body = "x".into();
                    }
                    sender.send(group).await.unwrap();
                }
            })
        })
        .await;
        let sizes: Vec<usize> = batches.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [30, 10],
            "10 bytes a group, a batch goes at 25 or more"
        );
        assert!(started.elapsed() < Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn what_is_buffered_when_the_sources_stop_is_flushed() {
        let limits = BatchLimits {
            max_messages: 1000,
            max_bytes: usize::MAX,
            max_wait: Duration::from_secs(3600),
        };
        let started = Instant::now();
        let batches = batches_of(limits, |sender| {
            tokio::spawn(async move {
                sender.send(group(0..3)).await.unwrap();
                sender.send(group(3..7)).await.unwrap();
            })
        })
        .await;
        assert_eq!(batches.iter().map(Vec::len).collect::<Vec<_>>(), [7]);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "did not wait for max_wait"
        );
    }
}
