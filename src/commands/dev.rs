//! `etl dev seed` and `etl dev generate`: synthetic login events (or a file's lines) for
//! development and benchmarks.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Subcommand};
use tokio::task::JoinSet;

use super::Outcome;
use crate::adapters::aws;
use crate::adapters::sqs::{SqsQueue, MAX_BATCH};
use crate::configuration::ConfigError;
use crate::domain::QueueUrl;
use crate::error::StdoutError;
use crate::synthetic::{Generator, SyntheticOptions};

#[derive(Debug, Subcommand)]
pub enum DevCommand {
    /// Send synthetic login events (or the lines of a file) to a queue with SendMessageBatch.
    Seed(SeedArgs),
    /// Print synthetic login events on stdout, one JSON body per line (for `ingest --from-file`
    /// and benchmarks).
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Number of bodies.
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    #[command(flatten)]
    pub shape: ShapeArgs,
}

/// The shape of synthetic events.
#[derive(Debug, Args)]
pub struct ShapeArgs {
    /// Share of synthetic events with `"locale": null`.
    #[arg(long, default_value_t = 0.29)]
    pub null_locale_share: f64,

    /// Share of synthetic events that reuse an ip and a device_id already sent.
    #[arg(long, default_value_t = 0.2)]
    pub duplicate_share: f64,

    /// Share of synthetic messages that are malformed.
    #[arg(long, default_value_t = 0.01)]
    pub malformed_share: f64,

    /// Random seed, for a reproducible set of messages.
    #[arg(long)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct SeedArgs {
    /// URL of the SQS queue to fill.
    #[arg(long, env = "ETL_QUEUE_URL")]
    pub queue_url: String,

    /// Number of synthetic messages to send (ignored with --from-file).
    #[arg(long, default_value_t = 100)]
    pub count: usize,

    /// Send each line of this file as one message body, byte for byte, instead of synthetic
    /// events (`-` reads stdin).
    #[arg(long)]
    pub from_file: Option<PathBuf>,

    #[command(flatten)]
    pub shape: ShapeArgs,

    /// Concurrent SendMessageBatch calls.
    #[arg(long, default_value_t = 8)]
    pub concurrency: usize,
}

/// What `etl dev seed` sends.
#[derive(Debug, Clone)]
pub struct SeedSettings {
    pub queue_url: QueueUrl,
    pub source: SeedSource,
    pub concurrency: usize,
}

#[derive(Debug, Clone)]
pub enum SeedSource {
    File(PathBuf),
    Synthetic(SyntheticOptions),
}

impl TryFrom<&SeedArgs> for SeedSettings {
    type Error = ConfigError;

    fn try_from(args: &SeedArgs) -> Result<Self, ConfigError> {
        let source = match &args.from_file {
            Some(path) => SeedSource::File(path.clone()),
            None => SeedSource::Synthetic(synthetic_options(args.count, &args.shape)?),
        };
        if args.concurrency == 0 {
            return Err(ConfigError::OutOfRange {
                flag: "--concurrency",
                expected: "at least 1",
            });
        }
        Ok(Self {
            queue_url: QueueUrl::parse(&args.queue_url)?,
            source,
            concurrency: args.concurrency,
        })
    }
}

/// Validated synthetic-event options.
fn synthetic_options(count: usize, shape: &ShapeArgs) -> Result<SyntheticOptions, ConfigError> {
    let share = |value: f64, flag: &'static str| {
        ConfigError::check_range(flag, value, 0.0, 1.0, "between 0 and 1").map(|()| value)
    };
    Ok(SyntheticOptions {
        count,
        null_locale_share: share(shape.null_locale_share, "--null-locale-share")?,
        duplicate_share: share(shape.duplicate_share, "--duplicate-share")?,
        malformed_share: share(shape.malformed_share, "--malformed-share")?,
        seed: shape.seed,
    })
}

pub async fn run(command: DevCommand) -> anyhow::Result<Outcome> {
    match command {
        DevCommand::Seed(args) => seed(&args).await,
        DevCommand::Generate(args) => generate(&args),
    }
    .map(|()| Outcome::Success)
}

/// `etl dev seed`: bodies to the queue.
async fn seed(args: &SeedArgs) -> anyhow::Result<()> {
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
    outln!(
        "sent {}",
        crate::human::count(bodies.len() as i64, "message")
    )?;
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
fn generate(args: &GenerateArgs) -> anyhow::Result<()> {
    let options = synthetic_options(args.count, &args.shape)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    for body in Generator::new(options) {
        writeln!(out, "{body}").map_err(StdoutError)?;
    }
    out.flush().map_err(StdoutError)?;
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
