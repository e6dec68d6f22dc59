//! Per-query counters, readable by front ends and exported through `metrics`.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Arc;

/// Live counters of one running pipeline; shared by its tasks.
#[derive(Debug, Default)]
pub struct JobMetrics {
    rows_in: AtomicU64,
    rows_out: AtomicU64,
    late_rows: AtomicU64,
    /// Last watermark seen by the sink, epoch nanos; `i64::MIN` before the first.
    watermark: AtomicI64,
}

/// A snapshot of [`JobMetrics`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MetricsSnapshot {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub watermark: Option<i64>,
}

impl JobMetrics {
    pub fn new() -> Arc<Self> {
        Arc::new(JobMetrics { watermark: AtomicI64::new(i64::MIN), ..Default::default() })
    }

    pub fn add_rows_in(&self, n: usize) {
        self.rows_in.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_rows_in_total").increment(n as u64);
    }

    pub fn add_rows_out(&self, n: usize) {
        self.rows_out.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_rows_out_total").increment(n as u64);
    }

    /// Counts rows dropped because their window had already been emitted.
    pub fn add_late_rows(&self, n: usize) {
        self.late_rows.fetch_add(n as u64, Ordering::Relaxed);
        metrics::counter!("sluice_late_rows_total").increment(n as u64);
    }

    pub fn set_watermark(&self, nanos: i64) {
        self.watermark.fetch_max(nanos, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> MetricsSnapshot {
        let wm = self.watermark.load(Ordering::Relaxed);
        MetricsSnapshot {
            rows_in: self.rows_in.load(Ordering::Relaxed),
            rows_out: self.rows_out.load(Ordering::Relaxed),
            late_rows: self.late_rows.load(Ordering::Relaxed),
            watermark: (wm != i64::MIN).then_some(wm),
        }
    }
}
