//! `FeedExec`: the leaf through which a pipeline pushes batches into a DataFusion plan.
//!
//! Stateless SQL (filters, projections, scalar functions, unnest) stays in DataFusion
//! `ExecutionPlan`s. The planner puts a `FeedExec` at the leaf of such a plan; at run
//! time each arriving batch goes through the plan on its own, so results come out
//! before the watermark that follows the batch: either the batch is queued into the
//! feed and the plan executed, or (filters and projections, see
//! [`crate::operators::StatelessOperator`]) the feed's [`FeedShape`] and the plan's
//! expressions are applied to it directly.

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatchOptions;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::TaskContext;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning,
    PlanProperties, ReplaceChildrenOptions, SendableRecordBatchStream,
};

/// Where batches are queued for a [`FeedExec`]; held by the operator that runs
/// the plan above it.
#[derive(Clone, Default)]
pub struct FeedHandle(Arc<Mutex<VecDeque<RecordBatch>>>);

impl FeedHandle {
    /// Queues a batch for the next execution of the plan above the feed.
    pub fn push(&self, batch: RecordBatch) {
        if let Ok(mut q) = self.0.lock() {
            q.push_back(batch);
        }
    }
}

/// How a batch queued into a feed becomes a batch of the feed's output: projected,
/// and stripped of schema metadata the plan does not declare (a Parquet file's
/// own metadata, say), so it has exactly the plan's schema.
#[derive(Clone, Debug)]
pub struct FeedShape {
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
}

impl FeedShape {
    /// The batch as the plan above the feed expects it.
    pub fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        let batch = match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        };
        if batch.schema().metadata().is_empty() {
            return Ok(batch);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), batch.columns().to_vec(), &options)?)
    }
}

/// A leaf plan node that yields the batches queued into it since its last execution.
pub struct FeedExec {
    /// What feeds this leaf: a table name or an upstream operator, for EXPLAIN.
    label: String,
    /// Schema of the batches queued into the feed (before `projection`).
    input_schema: SchemaRef,
    projection: Option<Vec<usize>>,
    schema: SchemaRef,
    queue: FeedHandle,
    cache: Arc<PlanProperties>,
}

impl FeedExec {
    /// A feed of batches with `input_schema`, projected to `projection` on the way out.
    pub fn try_new(
        label: impl Into<String>,
        input_schema: SchemaRef,
        projection: Option<Vec<usize>>,
    ) -> Result<Self> {
        let schema = match &projection {
            Some(p) => Arc::new(input_schema.project(p)?),
            None => Arc::clone(&input_schema),
        };
        let cache = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&schema)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            // Bounded: each execution yields only what was queued, and DataFusion
            // refuses to plan aggregations over unbounded inputs.
            Boundedness::Bounded,
        );
        Ok(FeedExec {
            label: label.into(),
            input_schema,
            projection,
            schema,
            queue: FeedHandle::default(),
            cache: Arc::new(cache),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// The input columns the feed passes on (`None`: all).
    pub fn projection(&self) -> Option<&[usize]> {
        self.projection.as_deref()
    }

    /// A new feed like this one, with a queue of its own (for another lane).
    pub fn fresh(&self) -> Result<FeedExec> {
        FeedExec::try_new(self.label.clone(), Arc::clone(&self.input_schema), self.projection.clone())
    }

    /// A new feed like this one whose input also carries the change kind as a
    /// last column, passed through to its output (an upsert table's source).
    pub fn with_change_kind(&self) -> Result<FeedExec> {
        let input_schema = crate::changelog::with_op_field(&self.input_schema);
        let op = input_schema.fields().len() - 1;
        let projection = self.projection.as_ref().map(|p| p.iter().copied().chain([op]).collect());
        FeedExec::try_new(self.label.clone(), input_schema, projection)
    }

    /// Schema of the batches that must be queued.
    pub fn input_schema(&self) -> &SchemaRef {
        &self.input_schema
    }

    /// The queue this leaf reads from.
    pub fn handle(&self) -> FeedHandle {
        self.queue.clone()
    }

    /// What is done to each queued batch on its way out.
    pub fn shape(&self) -> FeedShape {
        FeedShape { projection: self.projection.clone(), schema: Arc::clone(&self.schema) }
    }

    fn take_queued(&self) -> Result<Vec<RecordBatch>> {
        let mut q = self
            .queue
            .0
            .lock()
            .map_err(|_| DataFusionError::Internal("feed queue poisoned".into()))?;
        let shape = self.shape();
        q.drain(..).map(|b| shape.apply(b)).collect()
    }
}

impl fmt::Debug for FeedExec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FeedExec({})", self.label)
    }
}

impl DisplayAs for FeedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "FeedExec: {}", self.label)?;
        if let Some(p) = &self.projection {
            let names: Vec<&str> =
                p.iter().map(|i| self.input_schema.field(*i).name().as_str()).collect();
            write!(f, ", projection=[{}]", names.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for FeedExec {
    fn name(&self) -> &'static str {
        "FeedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.cache
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute),
        )
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let batches = self.take_queued()?;
        Ok(Box::pin(MemoryStream::try_new(batches, Arc::clone(&self.schema), None)?))
    }
}
