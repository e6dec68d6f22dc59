//! A compiled continuous query: lanes of operators between a split source and one sink.
//!
//! A pipeline runs in P lanes. Each lane reads its share of the source and runs
//! its own copy of every operator. Stages are separated by exchanges that
//! hash-partition rows by the next stateful operator's key, so each lane owns a
//! disjoint set of keys; after the last stage every lane feeds the one sink.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::physical_plan::PhysicalExpr;

use crate::metrics::JobMetrics;
use crate::operator::Operator;
use crate::sink::Sink;
use crate::source::Source;

/// One lane: a share of the source and a copy of every stage.
pub struct Lane {
    pub source: Box<dyn Source>,
    /// Operators stage by stage; every lane has the same number of stages.
    pub stages: Vec<Vec<Box<dyn Operator>>>,
}

/// Everything needed to run one continuous query. Built by the planner, run by
/// [`crate::runtime::Job::start`].
pub struct Pipeline {
    pub lanes: Vec<Lane>,
    /// The key of the exchange in front of stage `i + 1`, evaluated on what stage
    /// `i` emits. One fewer than the stages.
    pub exchange_keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    pub sink: Box<dyn Sink>,
    /// Schema of the batches the sink receives.
    pub output_schema: SchemaRef,
    /// Counters shared with operators that report into them (late rows).
    pub metrics: Arc<JobMetrics>,
}

impl Pipeline {
    /// One line per step of a lane, source first, for EXPLAIN.
    pub fn describe(&self) -> Vec<String> {
        let Some(lane) = self.lanes.first() else { return vec!["empty pipeline".into()] };
        let p = self.lanes.len();
        let mut lines = vec![format!("source: {} ({p} lane{})", lane.source.describe(), if p == 1 { "" } else { "s" })];
        for (i, stage) in lane.stages.iter().enumerate() {
            if i > 0 && p > 1 {
                let keys: Vec<String> = self.exchange_keys[i - 1].iter().map(|k| k.to_string()).collect();
                lines.push(match keys.is_empty() {
                    true => "exchange: all rows to one lane".to_string(),
                    false => format!("exchange: hash by [{}] across {p} lanes", keys.join(", ")),
                });
            }
            lines.extend(stage.iter().map(|o| o.describe()));
        }
        lines.push(format!("sink: {}", self.sink.describe()));
        lines
    }
}
