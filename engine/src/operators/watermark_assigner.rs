//! Turns a source's rows into watermarks: `WATERMARK FOR ts AS <expr>`.
//!
//! A source that reads several splits in one lane (a Kafka consumer assigned
//! several partitions) sends each batch with a [`SplitTag`]: its split, the
//! lane's splits and their idle time. The watermark is then the minimum over
//! the splits, so a partition read ahead of another does not make the other's
//! rows late; a split without rows for the idle time stops holding the others
//! back, as in Flink.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::PhysicalExpr;

use crate::error::Result;
use crate::message::Watermark;
use crate::operator::{Emitter, Operator};
use crate::source::SplitTag;
use crate::time::as_epoch_nanos;

/// Evaluates the watermark expression on every batch and emits the running maximum
/// after the batch. Watermarks only move forward; the source's final maximal
/// watermark is forwarded as is.
pub struct WatermarkAssigner {
    expr: Arc<dyn PhysicalExpr>,
    expr_sql: String,
    current: Option<i64>,
    /// The source went idle: the next batch re-announces the current watermark.
    idle: bool,
    /// Per split of the lane: its highest candidate and when it last had rows.
    splits: HashMap<String, SplitState>,
    /// With watermark alignment: this source's place among the query's sources.
    alignment: Option<crate::alignment::AlignmentMember>,
}


struct SplitState {
    max: Option<i64>,
    seen: Instant,
}

impl WatermarkAssigner {
    /// `expr` is evaluated against the source schema and must yield a timestamp.
    pub fn new(expr: Arc<dyn PhysicalExpr>, expr_sql: impl Into<String>) -> Self {
        WatermarkAssigner {
            expr,
            expr_sql: expr_sql.into(),
            current: None,
            idle: false,
            splits: HashMap::new(),
            alignment: None,
        }
    }

    /// Keeps this source within the group's drift of the query's other sources.
    pub fn aligned(mut self, group: &Arc<crate::alignment::AlignmentGroup>) -> Self {
        self.alignment = Some(group.join());
        self
    }

    /// Records a split's batch; the lane's candidate is the minimum over its
    /// active splits (`None` while an active split has had no rows yet).
    fn split_candidate(&mut self, tag: SplitTag, max: Option<i64>) -> Option<i64> {
        let now = Instant::now();
        // The lane's splits are learnt from the first batch of each new split.
        if !self.splits.contains_key(&tag.split) {
            for s in tag.splits.iter() {
                self.splits.entry(s.clone()).or_insert(SplitState { max: None, seen: now });
            }
        }
        let state = self.splits.entry(tag.split).or_insert(SplitState { max: None, seen: now });
        state.seen = now;
        if let Some(m) = max {
            state.max = Some(state.max.map_or(m, |c| c.max(m)));
        }
        let idle = tag.idle_after;
        let mut candidate: Option<i64> = None;
        for s in self.splits.values() {
            if idle.is_some_and(|d| now.duration_since(s.seen) > d) {
                continue;
            }
            let m = s.max?;
            candidate = Some(candidate.map_or(m, |c| c.min(m)));
        }
        candidate
    }

    /// A batch of the source, of one split of the lane if `split` says so.
    async fn on_rows(&mut self, split: Option<SplitTag>, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        if let Some(a) = &self.alignment {
            if self.idle {
                a.set_active(true);
            }
            // Ahead of the slowest source by more than the drift: wait for it
            // (this holds the source back too).
            a.wait_aligned().await;
        }
        let values = self.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let nanos = as_epoch_nanos(&values)?;
        let mut max = datafusion::arrow::compute::max(&nanos);
        if let Some(split) = split {
            max = self.split_candidate(split, max);
        }
        out.emit(batch);
        match max.and_then(|m| self.advance(m)) {
            Some(wm) => out.emit_watermark(wm),
            None if self.idle => {
                if let Some(current) = self.current {
                    out.emit_watermark(Watermark::EventTime(current));
                }
            }
            None => {}
        }
        self.idle = false;
        Ok(())
    }


    fn advance(&mut self, candidate: i64) -> Option<Watermark> {
        if self.current.is_none_or(|c| candidate > c) {
            self.current = Some(candidate);
            if let Some(a) = &self.alignment {
                a.report(candidate);
            }
            Some(Watermark::EventTime(candidate))
        } else {
            None
        }
    }
}

#[async_trait]
impl Operator for WatermarkAssigner {
    fn name(&self) -> &'static str {
        "watermark"
    }

    fn describe(&self) -> String {
        match &self.alignment {
            None => format!("watermark: {}", self.expr_sql),
            Some(a) => format!(
                "watermark: {} (aligned: at most {} ahead of the query's slowest source)",
                self.expr_sql,
                crate::time::format_duration_nanos(a.max_drift())
            ),
        }
    }

    async fn on_end(&mut self, _out: &mut Emitter) -> Result<()> {
        if let Some(a) = &self.alignment {
            a.set_active(false);
        }
        Ok(())
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_rows(None, batch, out).await
    }

    async fn on_split_batch(&mut self, split: SplitTag, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.on_rows(Some(split), batch, out).await
    }

    async fn on_watermark(&mut self, wm: Watermark, out: &mut Emitter) -> Result<Option<Watermark>> {
        match wm {
            Watermark::EventTime(t) => Ok(self.advance(t)),
            Watermark::Idle => {
                // Every split is quiet: none holds the others back any more,
                // so time moves to what the furthest one has seen.
                let furthest = self.splits.values().filter_map(|s| s.max).max();
                if let Some(wm) = furthest.and_then(|m| self.advance(m)) {
                    out.emit_watermark(wm);
                }
                self.idle = true;
                if let Some(a) = &self.alignment {
                    a.set_active(false);
                }
                Ok(Some(Watermark::Idle))
            }
        }
    }
}
