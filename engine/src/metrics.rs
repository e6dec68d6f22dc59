//! Per-query counters, readable by front ends and exported through `metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Progress of one source shard (one lane's source).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SourceProgress {
    pub rows_read: u64,
    pub lag: Option<crate::source::SourceLag>,
    /// Records it dropped or dead-lettered as undecodable.
    pub bad_records: u64,
}

/// Live counters of one running pipeline; shared by its tasks.
#[derive(Debug, Default)]
pub struct JobMetrics {
    /// Per lane, its source's progress.
    sources: std::sync::Mutex<Vec<SourceProgress>>,
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    /// Per sink (a statement set has several), the rows it received.
    sink_rows: std::sync::Mutex<Vec<u64>>,
    late_rows: AtomicU64,
    /// Bytes held by stateful operators (accumulators, group keys), all lanes.
    state_bytes: AtomicI64,
    /// The most `state_bytes` has been.
    state_peak: AtomicI64,
    /// Last watermark seen by the sink, epoch nanos; `i64::MIN` before the first.
    watermark: AtomicI64,
    /// Times the query was restarted after a failure, and the last failure.
    restarts: AtomicU64,
    last_failure: std::sync::Mutex<Option<String>>,
    /// The checkpoints taken so far.
    checkpoints: std::sync::Mutex<crate::checkpoint::CheckpointStats>,
    /// The `query` label of the exported counters, so one server's queries can
    /// be told apart in `/metrics`; `None`: unlabelled.
    query: Option<String>,
}

/// A snapshot of [`JobMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub state_bytes: u64,
    /// The most state the query has held at once.
    pub state_bytes_peak: u64,
    pub watermark: Option<i64>,
    /// Records the sources dropped or dead-lettered as undecodable.
    pub bad_records: u64,
}

impl JobMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(JobMetrics { watermark: AtomicI64::new(i64::MIN), ..Default::default() })
    }

    /// Counters exported with the label `query="<query>"`.
    pub fn with_label(query: Option<String>) -> Arc<Self> {
        Arc::new(JobMetrics { watermark: AtomicI64::new(i64::MIN), query, ..Default::default() })
    }

    fn labels(&self) -> Vec<metrics::Label> {
        self.query.iter().map(|q| metrics::Label::new("query", q.clone())).collect()
    }

    /// Tracks one operator's share of [`JobMetrics::add_state_bytes`].
    pub fn state_reporter(self: &Arc<Self>) -> StateReporter {
        StateReporter { metrics: Arc::clone(self), reported: 0 }
    }

    /// Records source `lane`'s progress.
    pub fn set_source_progress(&self, lane: usize, progress: SourceProgress) {
        if let Ok(mut sources) = self.sources.lock() {
            if sources.len() <= lane {
                sources.resize(lane + 1, SourceProgress::default());
            }
            let new_bad = progress.bad_records.saturating_sub(sources[lane].bad_records);
            if new_bad > 0 {
                metrics::counter!("sluice_query_bad_records_total", self.labels()).increment(new_bad);
            }
            sources[lane] = progress;
        }
    }

    /// Every lane's source progress.
    pub fn sources(&self) -> Vec<SourceProgress> {
        self.sources.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn add_rows_in(&self, n: usize) {
        self.rows_in.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_rows_in_total", self.labels()).increment(n as u64);
    }

    pub fn add_rows_out(&self, n: usize) {
        self.rows_out.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_rows_out_total", self.labels()).increment(n as u64);
    }

    /// Counts rows into sink `sink` (and into [`MetricsSnapshot::rows_out`]).
    pub fn add_sink_rows(&self, sink: usize, n: usize) {
        if let Ok(mut rows) = self.sink_rows.lock() {
            if rows.len() <= sink {
                rows.resize(sink + 1, 0);
            }
            rows[sink] += n as u64;
        }
        self.add_rows_out(n);
    }

    /// Per sink, in the order of the pipeline's outputs, the rows it received.
    pub fn rows_per_sink(&self) -> Vec<u64> {
        self.sink_rows.lock().map(|r| r.clone()).unwrap_or_default()
    }

    /// Counts rows dropped because their window had already been emitted.
    pub fn add_late_rows(&self, n: usize) {
        self.late_rows.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_late_rows_total", self.labels()).increment(n as u64);
    }

    /// Bytes of state held now, all operators and lanes.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed).max(0) as u64
    }

    /// Records that an operator's state grew (or, negative, shrank) by `delta` bytes.
    pub fn add_state_bytes(&self, delta: i64) {
        let total = self.state_bytes.fetch_add(delta, Ordering::Relaxed) + delta;
        self.state_peak.fetch_max(total, Ordering::Relaxed);
        metrics::gauge!("sluice_state_bytes", self.labels()).set(total as f64);
    }

    pub fn set_watermark(&self, nanos: i64) {
        self.watermark.fetch_max(nanos, Ordering::Relaxed);
    }

    /// Records that the query failed with `error` and is being restarted.
    pub fn query_restarted(&self, error: &str) {
        self.restarts.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("sluice_query_restarts_total", self.labels()).increment(1);
        if let Ok(mut last) = self.last_failure.lock() {
            *last = Some(error.to_string());
        }
    }

    /// Restarts after failures so far, and the last failure.
    pub fn restarts(&self) -> (u64, Option<String>) {
        let last = self.last_failure.lock().map(|l| l.clone()).unwrap_or_default();
        (self.restarts.load(Ordering::Relaxed), last)
    }

    /// Records a completed checkpoint.
    pub fn checkpoint_completed(&self, report: crate::checkpoint::CheckpointReport) {
        metrics::counter!("sluice_checkpoints_completed_total", self.labels()).increment(1);
        metrics::gauge!("sluice_checkpoint_last_id", self.labels()).set(report.id as f64);
        metrics::gauge!("sluice_checkpoint_last_duration_ms", self.labels()).set(report.duration_ms as f64);
        metrics::gauge!("sluice_checkpoint_last_bytes", self.labels()).set(report.bytes as f64);
        metrics::gauge!("sluice_checkpoint_last_alignment_ms", self.labels()).set(report.alignment_ms as f64);
        if let Ok(mut stats) = self.checkpoints.lock() {
            stats.completed += 1;
            stats.recent.push(report);
            let excess = stats.recent.len().saturating_sub(10);
            stats.recent.drain(..excess);
        }
    }

    /// Records a checkpoint that could not be completed.
    pub fn checkpoint_failed(&self) {
        metrics::counter!("sluice_checkpoints_failed_total", self.labels()).increment(1);
        if let Ok(mut stats) = self.checkpoints.lock() {
            stats.failed += 1;
        }
    }

    /// Records the checkpoint the query resumed from.
    pub fn checkpoint_restored(&self, id: u64) {
        if let Ok(mut stats) = self.checkpoints.lock() {
            stats.restored_from = Some(id);
        }
    }

    /// The checkpoints so far.
    pub fn checkpoints(&self) -> crate::checkpoint::CheckpointStats {
        self.checkpoints.lock().map(|s| s.clone()).unwrap_or_default()
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let wm = self.watermark.load(Ordering::Relaxed);
        MetricsSnapshot {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            late_rows: self.late_rows.load(Ordering::Relaxed),
            state_bytes: self.state_bytes.load(Ordering::Relaxed).max(0) as u64,
            state_bytes_peak: self.state_peak.load(Ordering::Relaxed).max(0) as u64,
            watermark: (wm != i64::MIN).then_some(wm),
            bad_records: self.sources().iter().map(|s| s.bad_records).sum(),
        }
    }
}

/// Reports one operator's state size as it changes; gives it back when dropped.
#[derive(Debug)]
pub struct StateReporter {
    metrics: Arc<JobMetrics>,
    reported: usize,
}

impl StateReporter {
    /// The operator now holds `bytes`.
    pub fn set(&mut self, bytes: usize) {
        if bytes != self.reported {
            self.metrics.add_state_bytes(bytes as i64 - self.reported as i64);
            self.reported = bytes;
        }
    }
}

impl Drop for StateReporter {
    fn drop(&mut self) {
        self.set(0);
    }
}

/// A byte count for people: `1.5 GB`, `512 MB`, `12 KB`, `100 B` (powers of 1024).
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
