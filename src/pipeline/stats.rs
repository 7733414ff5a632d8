//! Counters shared by the pollers, the summary printed at the end of a run, and the Prometheus
//! metrics fed at the same points (names follow Prometheus conventions; labels never hold
//! personal data: only reason codes and stage names).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;

use crate::adapters::postgres::writer::WriteOutcome;

#[derive(Debug, Default)]
pub struct Stats {
    received: AtomicU64,
    written: AtomicU64,
    duplicates_skipped: AtomicU64,
    deleted: AtomicU64,
    delete_failed: AtomicU64,
    write_failures: AtomicU64,
    receive_errors: AtomicU64,
    quarantined: Mutex<BTreeMap<String, u64>>,
}

impl Stats {
    pub fn received(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("etl_messages_received_total").increment(n as u64);
        metrics::gauge!("etl_messages_in_flight").increment(n as f64);
    }

    /// A received batch is done with (committed and deleted, or given back to the queue).
    pub fn batch_finished(&self, n: usize, elapsed: Duration) {
        metrics::gauge!("etl_messages_in_flight").decrement(n as f64);
        metrics::histogram!("etl_batch_duration_seconds").record(elapsed.as_secs_f64());
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
    }

    pub fn committed(&self, outcome: &WriteOutcome) {
        self.written.fetch_add(outcome.written, Ordering::Relaxed);
        self.duplicates_skipped
            .fetch_add(outcome.duplicates_skipped, Ordering::Relaxed);
        let mut quarantined = self
            .quarantined
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        for (reason, n) in &outcome.quarantined {
            *quarantined.entry(reason.clone()).or_default() += n;
            metrics::counter!("etl_messages_quarantined_total", "reason" => reason.clone())
                .increment(*n);
        }
        metrics::counter!("etl_rows_written_total").increment(outcome.written);
        metrics::counter!("etl_redeliveries_skipped_total").increment(outcome.duplicates_skipped);
    }

    /// Lines of a file that an earlier run committed: counted as received and skipped.
    pub fn already_committed(&self, n: usize) {
        self.received.fetch_add(n as u64, Ordering::Relaxed);
        self.duplicates_skipped
            .fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("etl_messages_received_total").increment(n as u64);
        metrics::counter!("etl_redeliveries_skipped_total").increment(n as u64);
    }

    pub fn deleted(&self, n: usize) {
        self.deleted.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("etl_messages_deleted_total").increment(n as u64);
    }

    pub fn delete_failed(&self, n: usize) {
        self.delete_failed.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("etl_errors_total", "stage" => "delete").increment(n as u64);
    }

    pub fn write_failed(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("etl_errors_total", "stage" => "write").increment(1);
    }

    pub fn transform_failed(&self) {
        self.write_failures.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("etl_errors_total", "stage" => "transform").increment(1);
    }

    pub fn receive_failed(&self) {
        self.receive_errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("etl_errors_total", "stage" => "receive").increment(1);
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
            deleted: self.deleted.load(Ordering::Relaxed),
            delete_failed: self.delete_failed.load(Ordering::Relaxed),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            receive_errors: self.receive_errors.load(Ordering::Relaxed),
            elapsed_seconds,
            messages_per_second: if elapsed_seconds > 0.0 {
                (written + quarantined) as f64 / elapsed_seconds
            } else {
                0.0
            },
        }
    }
}

/// The figures of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub received: u64,
    pub written: u64,
    pub quarantined: u64,
    pub quarantined_by_reason: BTreeMap<String, u64>,
    /// Redeliveries of messages already committed: no new row, deleted again.
    pub duplicates_skipped: u64,
    pub deleted: u64,
    /// Receipts SQS would not delete (expired handles); those messages return and are skipped.
    pub delete_failed: u64,
    pub write_failures: u64,
    pub receive_errors: u64,
    pub elapsed_seconds: f64,
    /// Messages committed (written or quarantined) per second.
    pub messages_per_second: f64,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut lines: Vec<(String, String)> = vec![
            ("received".into(), self.received.to_string()),
            ("written".into(), self.written.to_string()),
            ("quarantined".into(), self.quarantined.to_string()),
        ];
        lines.extend(
            self.quarantined_by_reason
                .iter()
                .map(|(reason, n)| (format!("  {reason}"), n.to_string())),
        );
        lines.extend([
            (
                "redeliveries skipped".into(),
                self.duplicates_skipped.to_string(),
            ),
            ("deleted".into(), self.deleted.to_string()),
            ("delete failed".into(), self.delete_failed.to_string()),
            ("write failures".into(), self.write_failures.to_string()),
            ("receive errors".into(), self.receive_errors.to_string()),
            ("elapsed".into(), format!("{:.2} s", self.elapsed_seconds)),
            (
                "rate".into(),
                format!("{:.0} msg/s", self.messages_per_second),
            ),
        ]);
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
