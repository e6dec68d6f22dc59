//! Turns a source's rows into watermarks: `WATERMARK FOR ts AS <expr>`.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::physical_plan::PhysicalExpr;

use crate::error::Result;
use crate::message::Watermark;
use crate::operator::{Emitter, Operator};
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
}

impl WatermarkAssigner {
    /// `expr` is evaluated against the source schema and must yield a timestamp.
    pub fn new(expr: Arc<dyn PhysicalExpr>, expr_sql: impl Into<String>) -> Self {
        WatermarkAssigner { expr, expr_sql: expr_sql.into(), current: None, idle: false }
    }

    fn advance(&mut self, candidate: i64) -> Option<Watermark> {
        if self.current.is_none_or(|c| candidate > c) {
            self.current = Some(candidate);
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
        format!("watermark: {}", self.expr_sql)
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        let values = self.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
        let nanos = as_epoch_nanos(&values)?;
        let max = datafusion::arrow::compute::max(&nanos);
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

    async fn on_watermark(&mut self, wm: Watermark, _out: &mut Emitter) -> Result<Option<Watermark>> {
        match wm {
            Watermark::EventTime(t) => Ok(self.advance(t)),
            Watermark::Idle => {
                self.idle = true;
                Ok(Some(Watermark::Idle))
            }
        }
    }
}
