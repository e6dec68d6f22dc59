//! Runs a stateless DataFusion plan (filter, projection, scalar functions, unnest)
//! over each batch as it arrives, without keeping anything from one batch to the next.
//!
//! Executing a DataFusion plan is not free of state: every `execute` registers a
//! fresh set of metrics in each node's metrics set, and nothing ever removes them,
//! so a plan executed once per batch grows by a few kilobytes per batch for as
//! long as the query runs. A query that is meant to be left running cannot afford
//! that. So the plan is compiled, once, into the steps it stands for: a
//! `FilterExec` becomes its predicate (and projection), a `ProjectionExec` its
//! expressions, and the pass-through nodes (`CoalesceBatchesExec`,
//! `CooperativeExec`) vanish, as there is one batch at a time to pass through.
//! Each batch is then just evaluated. A plan with any other node (`UnnestExec`)
//! is still executed, but over a copy of its nodes made for that batch alone,
//! whose metrics are dropped with it.
//!
//! The plan itself is kept for EXPLAIN; it is never executed.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatchOptions};
use datafusion::arrow::compute::filter_record_batch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::cast::as_boolean_array;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{displayable, ExecutionPlan};
use futures::TryStreamExt;

use crate::error::Result;
use crate::feed::{FeedExec, FeedHandle, FeedShape};
use crate::operator::{Emitter, Operator};
use crate::row_error;

/// A DataFusion plan whose single leaf is a [`crate::feed::FeedExec`]; holds no state between
/// batches, so watermarks pass straight through.
pub struct StatelessOperator {
    /// The plan as planned, for EXPLAIN.
    plan: Arc<dyn ExecutionPlan>,
    run: Run,
}

/// How each batch goes through the plan.
enum Run {
    /// The plan compiled into steps, applied in order to each batch.
    Steps { feed: FeedShape, steps: Vec<Step> },
    /// The plan executed per batch, over a copy of its nodes (fresh metrics).
    Execute { feed: FeedHandle, task_ctx: Arc<TaskContext> },
}

/// One plan node, compiled.
enum Step {
    /// Keeps the rows for which `predicate` is true (not false or NULL), then
    /// keeps the columns of `projection`.
    Filter { predicate: Arc<dyn PhysicalExpr>, projection: Option<Vec<usize>> },
    /// Evaluates each expression into a column of a batch of `schema`.
    Project { exprs: Vec<Arc<dyn PhysicalExpr>>, schema: SchemaRef },
}

impl StatelessOperator {
    /// `feed` must be the handle of the leaf of `plan`.
    pub fn new(plan: Arc<dyn ExecutionPlan>, feed: FeedHandle, task_ctx: Arc<TaskContext>) -> Self {
        let run = match compile(&plan) {
            Some((feed, steps)) => Run::Steps { feed, steps },
            None => Run::Execute { feed, task_ctx },
        };
        StatelessOperator { plan, run }
    }

    /// True if batches are evaluated by compiled steps rather than by executing the plan.
    pub fn is_compiled(&self) -> bool {
        matches!(self.run, Run::Steps { .. })
    }
}

/// The steps `plan` stands for, from its leaf up, and the shape of its feed; `None`
/// if it holds a node that only executing the plan can apply.
fn compile(plan: &Arc<dyn ExecutionPlan>) -> Option<(FeedShape, Vec<Step>)> {
    if let Some(feed) = plan.downcast_ref::<FeedExec>() {
        return Some((feed.shape(), Vec::new()));
    }
    let [child] = plan.children()[..] else { return None };
    let step = if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        // A fetch limit counts rows across batches: that is state.
        if filter.fetch().is_some() {
            return None;
        }
        Some(Step::Filter {
            predicate: Arc::clone(filter.predicate()),
            projection: filter.projection().as_ref().map(|p| p.to_vec()),
        })
    } else if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        let exprs = projection.expr().iter().map(|e| Arc::clone(&e.expr)).collect();
        Some(Step::Project { exprs, schema: projection.schema() })
    } else {
        match plan.name() {
            // They regroup or yield between batches; one batch at a time needs neither.
            "CoalesceBatchesExec" | "CooperativeExec" => None,
            _ => return None,
        }
    };
    let (feed, mut steps) = compile(child)?;
    steps.extend(step);
    Some((feed, steps))
}

impl Step {
    /// The step as an error message names it.
    fn describe(&self) -> String {
        match self {
            Step::Filter { predicate, .. } => format!("filter {predicate}"),
            Step::Project { exprs, .. } => {
                let exprs: Vec<String> = exprs.iter().map(|e| e.to_string()).collect();
                format!("projection [{}]", exprs.join(", "))
            }
        }
    }

    fn apply(&self, batch: RecordBatch) -> Result<RecordBatch> {
        match self {
            Step::Filter { predicate, projection } => {
                let mask = predicate.evaluate(&batch)?.into_array(batch.num_rows())?;
                let batch = match projection {
                    Some(p) => batch.project(p)?,
                    None => batch,
                };
                Ok(filter_record_batch(&batch, as_boolean_array(&mask)?)?)
            }
            Step::Project { exprs, schema } => {
                let columns = exprs
                    .iter()
                    .map(|e| e.evaluate(&batch).and_then(|v| v.into_array(batch.num_rows())))
                    .collect::<datafusion::error::Result<Vec<ArrayRef>>>()?;
                // The row count matters when no column is left (count(*)).
                let options = RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                Ok(RecordBatch::try_new_with_options(Arc::clone(schema), columns, &options)?)
            }
        }
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
        match &self.run {
            Run::Steps { feed, steps } => {
                let mut batch = feed.apply(batch)?;
                for step in steps {
                    if batch.num_rows() == 0 {
                        return Ok(());
                    }
                    batch = match step.apply(batch.clone()) {
                        Ok(next) => next,
                        // Name the step and the first row it fails on.
                        Err(e) => {
                            let located = row_error::locate(&step.describe(), &batch, e, |rows| step.apply(rows.clone()));
                            return Err(located.into());
                        }
                    };
                }
                out.emit(batch);
            }
            Run::Execute { feed, task_ctx } => {
                feed.push(batch);
                // A copy of the nodes for this batch alone: executing registers
                // metrics in each node, which would otherwise pile up.
                let plan = reset_plan_states(Arc::clone(&self.plan))?;
                let results: Vec<RecordBatch> = plan.execute(0, Arc::clone(task_ctx))?.try_collect().await?;
                for b in results {
                    out.emit(b);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use datafusion::arrow::array::{Int64Array, ListArray, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use datafusion::common::UnnestOptions;
    use datafusion::logical_expr::Operator as BinaryOp;
    use datafusion::physical_expr::expressions::{binary, col, lit};
    use datafusion::physical_expr::projection::ProjectionExpr;
    use datafusion::physical_plan::filter::FilterExecBuilder;
    use datafusion::physical_plan::unnest::{ListUnnest, UnnestExec};
    use datafusion::physical_plan::{collect, ExecutionPlan};

    use super::*;
    use crate::message::Message;

    type TestResult = std::result::Result<(), Box<dyn std::error::Error>>;

    fn input_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("a", DataType::Int64, true),
            Field::new("b", DataType::Utf8, true),
            Field::new("unused", DataType::Int64, true),
        ]))
    }

    /// Rows `(a, b, unused)`; the batch carries `metadata` in its schema, as a
    /// Parquet file's batches may.
    fn batch(a: Vec<Option<i64>>, metadata: &[(&str, &str)]) -> Result<RecordBatch> {
        let n = a.len();
        let b: Vec<Option<String>> = a.iter().map(|v| v.map(|v| format!("b{v}"))).collect();
        let metadata: HashMap<String, String> =
            metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let schema = Arc::new(input_schema().as_ref().clone().with_metadata(metadata));
        Ok(RecordBatch::try_new(
            schema,
            vec![Arc::new(Int64Array::from(a)), Arc::new(StringArray::from(b)), Arc::new(Int64Array::from(vec![0; n]))],
        )?)
    }

    /// `SELECT b, a + 10 AS a10 FROM t WHERE a % 2 = 0`, as DataFusion plans it:
    /// a projection over a filter (that also projects) over a projecting feed.
    fn filter_project_plan() -> Result<(Arc<dyn ExecutionPlan>, FeedHandle)> {
        let feed = FeedExec::try_new("t", input_schema(), Some(vec![0, 1]))?;
        let handle = feed.handle();
        let feed: Arc<dyn ExecutionPlan> = Arc::new(feed);
        let fs = feed.schema();
        let even = binary(
            binary(col("a", &fs)?, BinaryOp::Modulo, lit(2i64), &fs)?,
            BinaryOp::Eq,
            lit(0i64),
            &fs,
        )?;
        let filter: Arc<dyn ExecutionPlan> =
            Arc::new(FilterExecBuilder::new(even, feed).apply_projection(Some(vec![1, 0]))?.build()?);
        let s = filter.schema();
        let exprs = vec![
            ProjectionExpr::new(col("b", &s)?, "b"),
            ProjectionExpr::new(binary(col("a", &s)?, BinaryOp::Plus, lit(10i64), &s)?, "a10"),
        ];
        Ok((Arc::new(ProjectionExec::try_new(exprs, filter)?), handle))
    }

    /// `SELECT k, unnest(xs) FROM t`.
    fn unnest_plan() -> Result<(Arc<dyn ExecutionPlan>, FeedHandle, SchemaRef)> {
        let item = Arc::new(Field::new_list_field(DataType::Int64, true));
        let input = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("xs", DataType::List(item), true),
        ]));
        let feed = FeedExec::try_new("t", Arc::clone(&input), None)?;
        let handle = feed.handle();
        let output = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, true),
            Field::new("xs", DataType::Int64, true),
        ]));
        let unnest = UnnestExec::new(
            Arc::new(feed),
            vec![ListUnnest { index_in_input_schema: 1, depth: 1 }],
            vec![],
            output,
            UnnestOptions::default(),
        )?;
        Ok((Arc::new(unnest), handle, input))
    }

    fn unnest_batch(input: &SchemaRef, k: i64) -> Result<RecordBatch> {
        let xs = ListArray::from_iter_primitive::<Int64Type, _, _>(vec![Some(vec![Some(k), Some(k + 1)]), None]);
        Ok(RecordBatch::try_new(Arc::clone(input), vec![Arc::new(Int64Array::from(vec![k, k])), Arc::new(xs)])?)
    }

    /// Metrics entries held by the nodes of `plan`.
    fn retained_metrics(plan: &Arc<dyn ExecutionPlan>) -> usize {
        plan.metrics().map_or(0, |m| m.iter().count()) + plan.children().into_iter().map(retained_metrics).sum::<usize>()
    }

    async fn run(op: &mut StatelessOperator, batch: RecordBatch) -> Result<Vec<RecordBatch>> {
        let mut out = Emitter::default();
        op.on_batch(batch, &mut out).await?;
        Ok(out
            .drain()
            .into_iter()
            .filter_map(|m| match m {
                Message::Batch(b) => Some(b),
                _ => None,
            })
            .collect())
    }

    /// What the operator retains after `batches` batches.
    async fn retained_after(op: &mut StatelessOperator, batches: usize, next: impl Fn(usize) -> Result<RecordBatch>) -> Result<usize> {
        for i in 0..batches {
            run(op, next(i)?).await?;
        }
        Ok(retained_metrics(&op.plan))
    }

    #[tokio::test]
    async fn compiled_steps_give_what_executing_the_plan_gives() -> TestResult {
        let (plan, feed) = filter_project_plan()?;
        let ctx = Arc::new(TaskContext::default());
        let mut op = StatelessOperator::new(Arc::clone(&plan), feed.clone(), Arc::clone(&ctx));
        assert!(op.is_compiled());
        let inputs = [
            batch(vec![Some(1), Some(2), None, Some(4), Some(-6)], &[])?,
            // Tagged with metadata the plan does not declare.
            batch(vec![Some(8), None, Some(3)], &[("kafka.splits", "0:12")])?,
            // No row passes.
            batch(vec![Some(1), None], &[])?,
            batch(vec![], &[])?,
        ];
        for input in inputs {
            feed.push(input.clone());
            let expected: Vec<RecordBatch> =
                collect(Arc::clone(&plan), Arc::clone(&ctx)).await?.into_iter().filter(|b| b.num_rows() > 0).collect();
            let got = run(&mut op, input).await?;
            assert_eq!(got, expected);
            for b in &got {
                assert_eq!(b.schema(), plan.schema());
            }
        }
        Ok(())
    }

    #[tokio::test]
    async fn compiled_plan_retains_nothing_per_batch() -> TestResult {
        let (plan, feed) = filter_project_plan()?;
        let mut op = StatelessOperator::new(plan, feed, Arc::new(TaskContext::default()));
        let next = |i: usize| batch(vec![Some(i as i64), Some(2)], &[]);
        let after_10 = retained_after(&mut op, 10, next).await?;
        let after_1000 = retained_after(&mut op, 990, next).await?;
        assert_eq!(after_10, after_1000, "metrics pile up per batch");
        Ok(())
    }

    #[tokio::test]
    async fn executed_plan_retains_nothing_per_batch() -> TestResult {
        let (plan, feed, input) = unnest_plan()?;
        let mut op = StatelessOperator::new(plan, feed, Arc::new(TaskContext::default()));
        assert!(!op.is_compiled(), "unnest is executed, not compiled");
        let first = run(&mut op, unnest_batch(&input, 1)?).await?;
        let rows: usize = first.iter().map(RecordBatch::num_rows).sum();
        assert_eq!(rows, 3, "two items of the list and the NULL list: {first:?}");
        let next = |i: usize| unnest_batch(&input, i as i64);
        let after_10 = retained_after(&mut op, 10, next).await?;
        let after_1000 = retained_after(&mut op, 990, next).await?;
        assert_eq!(after_10, after_1000, "metrics pile up per batch");
        Ok(())
    }
}
