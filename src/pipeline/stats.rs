//! Counters shared by the sources and the writers, the summary printed at the end of a run, and
//! the Prometheus metrics fed at the same points. Each count has one name ([`Count`]): the
//! summary's JSON key, its text label, and the metric `etl_<name>_total`. Labels never hold
//! personal data: only reason codes.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::batch::WriteOutcome;

/// The counts of a run, each under one name everywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Count {
    Received,
    Written,
    Quarantined,
    DuplicatesSkipped,
    ForgottenSkipped,
    Deleted,
    DeleteFailed,
    WriteFailures,
    ReceiveErrors,
}

impl Count {
    pub const ALL: [Count; 9] = [
        Count::Received,
        Count::Written,
        Count::Quarantined,
        Count::DuplicatesSkipped,
        Count::ForgottenSkipped,
        Count::Deleted,
        Count::DeleteFailed,
        Count::WriteFailures,
        Count::ReceiveErrors,
    ];

    /// The summary's key (and, with spaces, its text label).
    pub const fn name(self) -> &'static str {
        match self {
            Count::Received => "received",
            Count::Written => "written",
            Count::Quarantined => "quarantined",
            Count::DuplicatesSkipped => "duplicates_skipped",
            Count::ForgottenSkipped => "forgotten_skipped",
            Count::Deleted => "deleted",
            Count::DeleteFailed => "delete_failed",
            Count::WriteFailures => "write_failures",
            Count::ReceiveErrors => "receive_errors",
        }
    }

    /// The Prometheus counter: `etl_<name>_total`.
    pub const fn metric(self) -> &'static str {
        match self {
            Count::Received => "etl_received_total",
            Count::Written => "etl_written_total",
            Count::Quarantined => "etl_quarantined_total",
            Count::DuplicatesSkipped => "etl_duplicates_skipped_total",
            Count::ForgottenSkipped => "etl_forgotten_skipped_total",
            Count::Deleted => "etl_deleted_total",
            Count::DeleteFailed => "etl_delete_failed_total",
            Count::WriteFailures => "etl_write_failures_total",
            Count::ReceiveErrors => "etl_receive_errors_total",
        }
    }

    fn increment(self, n: u64) {
        metrics::counter!(self.metric()).increment(n);
    }
}

/// Messages received and not yet committed or given back.
pub const IN_FLIGHT_GAUGE: &str = "etl_messages_in_flight";
/// Bytes taken from the byte budget: room for receives, bodies until written, ids and receipts
/// until deleted.
pub const IN_FLIGHT_BYTES_GAUGE: &str = "etl_inflight_bytes";
/// Time from a batch reaching a writer to its commit (or failure).
pub const BATCH_DURATION_HISTOGRAM: &str = "etl_batch_duration_seconds";

#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    written: AtomicU64,
    duplicates_skipped: AtomicU64,
    forgotten_skipped: AtomicU64,
    deleted: AtomicU64,
    delete_failed: AtomicU64,
    write_failures: AtomicU64,
    receive_errors: AtomicU64,
    peak_inflight_bytes: AtomicU64,
    quarantined: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        Count::Received.increment(n as u64);
        metrics::gauge!(IN_FLIGHT_GAUGE).increment(n as f64);
    }

    /// A batch is done with by the writers (committed, or not).
    pub fn batch_finished(&self, n: usize, elapsed: Duration) {
        metrics::gauge!(IN_FLIGHT_GAUGE).decrement(n as f64);
        metrics::histogram!(BATCH_DURATION_HISTOGRAM).record(elapsed.as_secs_f64());
    }

    /// Messages committed so far (written, quarantined, or skipped as redeliveries).
    pub fn settled(&self) -> u64 {
        let quarantined: u64 = self
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .values()
            .sum();
        self.written.load(Ordering::Relaxed)
            + quarantined
            + self.duplicates_skipped.load(Ordering::Relaxed)
            + self.forgotten_skipped.load(Ordering::Relaxed)
    }

    pub fn committed(&self, outcome: &WriteOutcome) {
        self.written.fetch_add(outcome.written, Ordering::Relaxed);
        self.duplicates_skipped
            .fetch_add(outcome.duplicates_skipped, Ordering::Relaxed);
        self.forgotten_skipped
            .fetch_add(outcome.forgotten_skipped, Ordering::Relaxed);
        let mut quarantined = self
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for (reason, n) in &outcome.quarantined {
            *quarantined.entry(reason.clone()).or_default() += n;
            metrics::counter!(Count::Quarantined.metric(), "reason" => reason.clone())
                .increment(*n);
        }
        Count::Written.increment(outcome.written);
        Count::DuplicatesSkipped.increment(outcome.duplicates_skipped);
        Count::ForgottenSkipped.increment(outcome.forgotten_skipped);
    }

    /// Lines of a file that an earlier run committed: counted as received and skipped.
    pub fn already_committed(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        self.duplicates_skipped
            .fetch_add(n as u64, Ordering::Relaxed);
        Count::Received.increment(n as u64);
        Count::DuplicatesSkipped.increment(n as u64);
    }

    pub fn deleted(&self, n: usize) {
        self.deleted.fetch_add(n as u64, Ordering::Relaxed);
        Count::Deleted.increment(n as u64);
    }

    pub fn delete_failed(&self, n: usize) {
        self.delete_failed.fetch_add(n as u64, Ordering::Relaxed);
        Count::DeleteFailed.increment(n as u64);
    }

    /// A batch not committed (its sealing or its write failed).
    pub fn write_failed(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        Count::WriteFailures.increment(1);
    }

    /// The most bytes a source held at once (see `budget`).
    pub fn inflight_peak(&self, bytes: usize) {
        self.peak_inflight_bytes
            .fetch_max(u64::try_from(bytes).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub fn receive_failed(&self) {
        self.receive_errors.fetch_add(1, Ordering::Relaxed);
        Count::ReceiveErrors.increment(1);
    }

    pub fn summary(&self, elapsed: Duration) -> Summary {
        let quarantined_by_reason = self
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone();
        let written = self.written.load(Ordering::Relaxed);
        let quarantined = quarantined_by_reason.values().sum::<u64>();
        let elapsed_seconds = elapsed.as_secs_f64();
        Summary {
            received: self.received.load(Ordering::Relaxed),
            written,
            quarantined,
            quarantined_by_reason,
            duplicates_skipped: self.duplicates_skipped.load(Ordering::Relaxed),
            forgotten_skipped: self.forgotten_skipped.load(Ordering::Relaxed),
            deleted: self.deleted.load(Ordering::Relaxed),
            delete_failed: self.delete_failed.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            receive_errors: self.receive_errors.load(Ordering::Relaxed),
            peak_inflight_bytes: self.peak_inflight_bytes.load(Ordering::Relaxed),
            elapsed_seconds,
            messages_per_second: if elapsed_seconds > 0.0 {
                (written + quarantined) as f64 / elapsed_seconds
            } else {
                0.0
            },
        }
    }
}

/// Shortest run whose rate the text summary shows. A shorter one is mostly fixed waits (the
/// batch wait, the last empty receive), so its rate would describe them, not the pipeline; the
/// JSON summary keeps `messages_per_second` for every run.
const MIN_RATE_SECONDS: f64 = 10.0;

/// The figures of one run (`--summary-json` prints it, and tests read it back).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Summary {
    pub received: u64,
    pub written: u64,
    pub quarantined: u64,
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Redeliveries of messages already committed: no new row, deleted again.
    pub duplicates_skipped: u64,
    /// Messages of users erased with `etl forget`: dropped before any write.
    pub forgotten_skipped: u64,
    pub deleted: u64,
    /// Receipts SQS would not delete (expired handles); those messages return and are skipped.
    pub delete_failed: u64,
    pub write_failures: u64,
    pub receive_errors: u64,
    /// The most bytes taken from the byte budget at once (`--max-inflight-bytes`): room taken for
    /// receives and what received messages hold; 0 for sources that hold no budget.
    #[serde(default)]
    pub peak_inflight_bytes: u64,
    pub elapsed_seconds: f64,
    /// Messages committed (written or quarantined) per second.
    pub messages_per_second: f64,
}

impl Summary {
    fn count(&self, count: Count) -> u64 {
        match count {
            Count::Received => self.received,
            Count::Written => self.written,
            Count::Quarantined => self.quarantined,
            Count::DuplicatesSkipped => self.duplicates_skipped,
            Count::ForgottenSkipped => self.forgotten_skipped,
            Count::Deleted => self.deleted,
            Count::DeleteFailed => self.delete_failed,
            Count::WriteFailures => self.write_failures,
            Count::ReceiveErrors => self.receive_errors,
        }
    }
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut lines: Vec<(String, String)> = Vec::new();
        for count in Count::ALL {
            lines.push((
                count.name().replace('_', " "),
                self.count(count).to_string(),
            ));
            if count == Count::Quarantined {
                lines.extend(
                    self.quarantined_by_reason
                        .iter()
                        .map(|(reason, n)| (format!("  {reason}"), n.to_string())),
                );
            }
        }
        if self.peak_inflight_bytes > 0 {
            lines.push((
                "peak in flight".into(),
                bytesize::ByteSize::b(self.peak_inflight_bytes)
                    .display()
                    .iec()
                    .to_string(),
            ));
        }
        lines.push((
            "elapsed".into(),
            crate::human::duration(Duration::from_secs_f64(self.elapsed_seconds.max(0.0))),
        ));
        if self.elapsed_seconds >= MIN_RATE_SECONDS {
            lines.push((
                "rate".into(),
                format!("{:.0} msg/s", self.messages_per_second),
            ));
        }
        let width = lines
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        for (label, value) in lines {
            writeln!(f, "{label:<width$}  {value:>10}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_count_has_one_name_in_the_summary_and_the_metrics() {
        let summary =
            serde_json::to_value(Stats::default().summary(Duration::from_secs(1))).unwrap();
        for count in Count::ALL {
            assert!(summary.get(count.name()).is_some(), "{}", count.name());
            assert_eq!(count.metric(), format!("etl_{}_total", count.name()));
        }
        let text = Stats::default().summary(Duration::from_secs(1)).to_string();
        assert!(text.contains("duplicates skipped"), "{text}");
    }

    /// Operators script against these keys (`--summary-json`): a renamed field fails here.
    #[test]
    fn the_json_summary_has_exactly_its_documented_keys() {
        let summary =
            serde_json::to_value(Stats::default().summary(Duration::from_secs(1))).unwrap();
        let mut keys: Vec<&str> = summary
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "delete_failed",
                "deleted",
                "duplicates_skipped",
                "elapsed_seconds",
                "forgotten_skipped",
                "messages_per_second",
                "peak_inflight_bytes",
                "quarantined",
                "quarantined_by_reason",
                "receive_errors",
                "received",
                "write_failures",
                "written",
            ]
        );
    }

    #[test]
    fn the_text_summary_shows_a_rate_only_for_a_run_long_enough_to_measure() {
        let stats = Stats::default();
        stats.committed(&WriteOutcome {
            written: 100,
            ..WriteOutcome::default()
        });
        let short = stats.summary(Duration::from_millis(1150)).to_string();
        assert!(!short.contains("rate"), "{short}");
        let long = stats.summary(Duration::from_secs(20)).to_string();
        assert!(long.contains("5 msg/s"), "{long}");
    }
}
