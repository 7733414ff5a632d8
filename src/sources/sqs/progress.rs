//! Progress of a drain: a bar with rate and remaining messages on a terminal, a periodic log line
//! elsewhere. Remaining is read from the queue's approximate depth.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::{ProgressState, ProgressStyle};
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, Instrument};
use tracing_indicatif::span_ext::IndicatifSpanExt;

use crate::adapters::sqs::SqsQueue;
use crate::human;
use crate::pipeline::Stats;

const BAR_INTERVAL: Duration = Duration::from_millis(500);
const LINE_INTERVAL: Duration = Duration::from_secs(10);

/// Reports until `done` is cancelled.
pub async fn report(stats: Arc<Stats>, queue: SqsQueue, done: CancellationToken) {
    let on_terminal = std::io::stderr().is_terminal();
    let span = info_span!("drain", indicatif.pb_show = tracing::field::Empty);
    if on_terminal {
        if let Ok(style) = ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} messages, {rate}, eta {left}",
        ) {
            span.pb_set_style(
                &style
                    .with_key(
                        "rate",
                        |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                            let _ = out.write_str(&human::rate(state.per_sec()));
                        },
                    )
                    .with_key(
                        "left",
                        |state: &ProgressState, out: &mut dyn std::fmt::Write| {
                            let _ = out.write_str(&human::duration(state.eta()));
                        },
                    ),
            );
        }
    }
    let started = Instant::now();
    let interval = if on_terminal {
        BAR_INTERVAL
    } else {
        LINE_INTERVAL
    };
    let reporter = async {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + interval, interval);
        loop {
            tokio::select! {
                () = done.cancelled() => return,
                _ = ticks.tick() => {}
            }
            let settled = stats.settled();
            let remaining = queue.depth().await.map(|d| d.visible + d.in_flight).ok();
            if on_terminal {
                let span = tracing::Span::current();
                span.pb_set_length(settled + remaining.unwrap_or(0));
                span.pb_set_position(settled);
            } else {
                let rate = settled as f64 / started.elapsed().as_secs_f64().max(0.001);
                info!(settled, remaining = ?remaining, rate = human::rate(rate), "progress");
            }
        }
    };
    reporter.instrument(span).await;
}
