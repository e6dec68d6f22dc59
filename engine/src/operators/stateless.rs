//! Runs a stateless DataFusion plan (filter, projection, scalar functions, unnest)
//! over each batch as it arrives.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::execution::TaskContext;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use futures::TryStreamExt;

use crate::error::Result;
use crate::feed::FeedHandle;
use crate::operator::{Emitter, Operator};

/// A DataFusion plan whose single leaf is a [`crate::feed::FeedExec`]; holds no state between
/// batches, so watermarks pass straight through.
pub struct StatelessOperator {
    plan: Arc<dyn ExecutionPlan>,
    feed: FeedHandle,
    task_ctx: Arc<TaskContext>,
}

impl StatelessOperator {
    /// `feed` must be the handle of the leaf of `plan`.
    pub fn new(plan: Arc<dyn ExecutionPlan>, feed: FeedHandle, task_ctx: Arc<TaskContext>) -> Self {
        StatelessOperator { plan, feed, task_ctx }
    }
}

#[async_trait]
impl Operator for StatelessOperator {
    fn name(&self) -> &'static str {
        "stateless"
    }

    fn describe(&self) -> String {
        let plan = displayable(self.plan.as_ref()).indent(false).to_string();
        let steps: Vec<&str> = plan.lines().map(str::trim).collect();
        format!("stateless: {}", steps.join(" <- "))
    }

    async fn on_batch(&mut self, batch: RecordBatch, out: &mut Emitter) -> Result<()> {
        self.feed.push(batch);
        let stream = self.plan.execute(0, Arc::clone(&self.task_ctx))?;
        let results: Vec<RecordBatch> = stream.try_collect().await?;
        for b in results {
            out.emit(b);
        }
        Ok(())
    }
}
