//! The benchmark's SQS ceiling: a minimal consumer that only receives (10 per call) and deletes,
//! with `concurrency` loops, until the queue is empty. Prints one JSON object.
//!
//! `cargo run --release --example raw_drain -- <queue-url> <concurrency>`

use std::time::{Duration, Instant};

use etl::adapters::sqs::{Receipt, SqsQueue};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: raw_drain <queue-url> <concurrency>"))?;
    let concurrency: usize = args.next().as_deref().unwrap_or("4").parse()?;
    let config = etl::adapters::aws::load_config(Duration::from_secs(30)).await;
    let queue = SqsQueue::json(&config, url);
    let started = Instant::now();
    let mut loops = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let queue = queue.clone();
        loops.spawn(async move {
            let mut drained = 0u64;
            loop {
                let messages = queue
                    .receive(10, Duration::from_secs(1), Duration::from_secs(30))
                    .await?;
                if messages.is_empty() {
                    if queue.depth().await?.is_empty() {
                        return anyhow::Ok(drained);
                    }
                    continue;
                }
                let receipts = Receipt::of_all(&messages);
                queue.delete_batch(&receipts).await?;
                drained += receipts.len() as u64;
            }
        });
    }
    let mut total = 0;
    while let Some(joined) = loops.join_next().await {
        total += joined??;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        r#"{{"drained": {total}, "elapsed_seconds": {seconds:.3}, "messages_per_second": {:.1}}}"#,
        total as f64 / seconds
    );
    Ok(())
}
