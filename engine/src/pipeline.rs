//! A compiled continuous query: a source, a chain of operators and a sink.

use std::sync::Arc;

use datafusion::arrow::datatypes::SchemaRef;

use crate::metrics::JobMetrics;
use crate::operator::Operator;
use crate::sink::Sink;
use crate::source::Source;

/// Everything needed to run one continuous query. Built by the planner, run by
/// [`crate::runtime::Job::start`].
pub struct Pipeline {
    pub source: Box<dyn Source>,
    pub operators: Vec<Box<dyn Operator>>,
    pub sink: Box<dyn Sink>,
    /// Schema of the batches the sink receives.
    pub output_schema: SchemaRef,
    /// Counters shared with operators that report into them (late rows).
    pub metrics: Arc<JobMetrics>,
}

impl Pipeline {
    /// One line per step, source first, for EXPLAIN.
    pub fn describe(&self) -> Vec<String> {
        let mut lines = vec![format!("source: {}", self.source.describe())];
        lines.extend(self.operators.iter().map(|o| o.describe()));
        lines.push(format!("sink: {}", self.sink.describe()));
        lines
    }
}
