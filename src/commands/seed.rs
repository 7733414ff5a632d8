use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::Context;
use tokio::task::JoinSet;

use crate::adapters::aws;
use crate::adapters::sqs::{SqsQueue, MAX_BATCH};
use crate::cli::{GenerateArgs, SeedArgs};
use crate::configuration::{synthetic_options, SeedSettings, SeedSource};
use crate::synthetic::Generator;

pub async fn run(args: &SeedArgs) -> anyhow::Result<()> {
    let settings = SeedSettings::try_from(args)?;
    let bodies = match &settings.source {
        SeedSource::File(path) => read_lines(path)?,
        SeedSource::Synthetic(options) => Generator::new(options.clone()).collect(),
    };
    let queue = SqsQueue::json(
        &aws::load_config(Duration::from_secs(30)).await,
        settings.queue_url.as_str(),
    );
    let mut sends = JoinSet::new();
    let mut refused = 0;
    for chunk in bodies.chunks(MAX_BATCH) {
        if sends.len() >= settings.concurrency {
            refused += joined(sends.join_next().await)?;
        }
        let (queue, chunk) = (queue.clone(), chunk.to_vec());
        sends.spawn(async move { queue.send_batch(&chunk).await });
    }
    while let Some(result) = sends.join_next().await {
        refused += joined(Some(result))?;
    }
    anyhow::ensure!(
        refused == 0,
        "SQS refused {refused} of {} messages",
        bodies.len()
    );
    println!("sent {} messages", bodies.len());
    Ok(())
}

fn joined(
    result: Option<Result<Result<usize, crate::adapters::sqs::SqsError>, tokio::task::JoinError>>,
) -> anyhow::Result<usize> {
    match result {
        Some(joined) => Ok(joined.context("send task failed")??),
        None => Ok(0),
    }
}

/// `etl dev generate`: synthetic bodies on stdout.
pub fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let options = synthetic_options(args.count, &args.shape)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for body in Generator::new(options) {
        writeln!(out, "{body}")?;
    }
    out.flush()?;
    Ok(())
}

/// One body per non-empty line, as written (SQS refuses empty bodies).
fn read_lines(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        Box::new(std::io::BufReader::new(file))
    };
    let mut bodies = Vec::new();
    for line in reader.lines() {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if !line.is_empty() {
            bodies.push(line);
        }
    }
    Ok(bodies)
}
