//! Lowers a DataFusion physical plan into the operators of a pipeline.
//!
//! The plan is walked from its leaf (a [`FeedExec`] scanning a stream table) up:
//! consecutive stateless nodes (projection, filter, unnest) stay one DataFusion
//! plan run per batch by a [`StatelessOperator`]; a windowed `AggregateExec`
//! becomes a [`WindowAggregate`] or [`SessionAggregate`]; anything that would need
//! the whole input (sorts, limits, plain GROUP BY, joins) is rejected with a
//! message saying so.

use std::sync::Arc;

use datafusion::execution::TaskContext;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, PhysicalExpr, ReplaceChildrenOptions};
use sluice_engine::feed::{FeedExec, FeedHandle};
use sluice_engine::metrics::JobMetrics;
use sluice_engine::operators::window_aggregate::AggregateSpec;
use sluice_engine::operators::{SessionAggregate, StatelessOperator, WindowAggregate};
use sluice_engine::Operator;

use crate::error::{plan_err, Result};
use crate::window_tvf::WindowTvfs;

/// Plan nodes that are applied to each batch on its own.
const STATELESS: [&str; 5] =
    ["ProjectionExec", "FilterExec", "UnnestExec", "CoalesceBatchesExec", "CooperativeExec"];

/// The operators of one lane of a continuous query, reading from one stream table.
pub struct LoweredQuery {
    pub source_table: String,
    /// Operators stage by stage; a new stage starts at each stateful operator.
    pub stages: Vec<Vec<Box<dyn Operator>>>,
    /// The key rows are partitioned by in front of stage `i + 1`.
    pub exchange_keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
}

/// A stateless plan being grown node by node, fed by `feed`.
struct Segment {
    root: Arc<dyn ExecutionPlan>,
    feed: FeedHandle,
}

struct Chain {
    source_table: String,
    /// Stages before the current one.
    stages: Vec<Vec<Box<dyn Operator>>>,
    exchange_keys: Vec<Vec<Arc<dyn PhysicalExpr>>>,
    /// The current stage.
    operators: Vec<Box<dyn Operator>>,
    segment: Option<Segment>,
    /// Aggregations below this point.
    aggregates: usize,
}

struct Lowering<'a> {
    windows: &'a WindowTvfs,
    task_ctx: Arc<TaskContext>,
    metrics: Arc<JobMetrics>,
}

/// True if the plan reads a stream table (otherwise it is a plain batch query).
pub fn reads_stream(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<FeedExec>().is_some() || plan.children().iter().any(|c| reads_stream(c))
}

/// Lowers `plan` into the operators of one lane (call once per lane: every call
/// builds operators and feeds of its own).
pub fn lower(
    plan: &Arc<dyn ExecutionPlan>,
    windows: &WindowTvfs,
    task_ctx: Arc<TaskContext>,
    metrics: Arc<JobMetrics>,
) -> Result<LoweredQuery> {
    let cx = Lowering { windows, task_ctx, metrics };
    let mut chain = cx.lower(plan)?;
    if windows.has_session() && chain.aggregates == 0 {
        return plan_err(
            "SESSION windows exist only through aggregation: GROUP BY window_start, window_end (and keys)",
        );
    }
    cx.close_segment(&mut chain);
    let mut stages = chain.stages;
    stages.push(chain.operators);
    Ok(LoweredQuery { source_table: chain.source_table, stages, exchange_keys: chain.exchange_keys })
}

impl Lowering<'_> {
    fn close_segment(&self, chain: &mut Chain) {
        if let Some(seg) = chain.segment.take() {
            chain.operators.push(Box::new(StatelessOperator::new(seg.root, seg.feed, Arc::clone(&self.task_ctx))));
        }
    }

    fn lower(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Chain> {
        if let Some(feed) = plan.downcast_ref::<FeedExec>() {
            let fresh = feed.fresh()?;
            let handle = fresh.handle();
            return Ok(Chain {
                source_table: feed.label().to_string(),
                stages: Vec::new(),
                exchange_keys: Vec::new(),
                operators: Vec::new(),
                segment: Some(Segment { root: Arc::new(fresh), feed: handle }),
                aggregates: 0,
            });
        }
        if let Some(agg) = plan.downcast_ref::<AggregateExec>() {
            return self.lower_aggregate(plan, agg);
        }
        let name = plan.name();
        if STATELESS.contains(&name) {
            let children = plan.children();
            let [child] = children.as_slice() else {
                return plan_err(format!("internal: {name} with {} inputs", children.len()));
            };
            let mut chain = self.lower(child)?;
            let root = match chain.segment.take() {
                Some(seg) => {
                    let root = Arc::clone(plan).replace_children(vec![seg.root], recompute())?;
                    Segment { root, feed: seg.feed }
                }
                None => {
                    let feed = FeedExec::try_new(format!("stage {} output", chain.stages.len()), child.schema(), None)?;
                    let handle = feed.handle();
                    let root = Arc::clone(plan).replace_children(vec![Arc::new(feed)], recompute())?;
                    Segment { root, feed: handle }
                }
            };
            chain.segment = Some(root);
            return Ok(chain);
        }
        unsupported(name)
    }

    fn lower_aggregate(&self, plan: &Arc<dyn ExecutionPlan>, agg: &AggregateExec) -> Result<Chain> {
        if !matches!(agg.mode(), AggregateMode::Single | AggregateMode::SinglePartitioned) {
            return plan_err(format!("internal: unexpected aggregation mode {:?}", agg.mode()));
        }
        let group = agg.group_expr();
        if !group.is_single() {
            return plan_err("GROUPING SETS, ROLLUP and CUBE are not supported on streams");
        }
        let group_exprs = group.expr().to_vec();
        let position = |col: &str| group_exprs.iter().position(|(_, n)| n == col);
        let (window_start, window_end) = match (position("window_start"), position("window_end")) {
            (Some(s), Some(e)) => (s, e),
            (None, None) => {
                return plan_err(
                    "GROUP BY without a window is not supported on streams yet: aggregate over \
                     TABLE(TUMBLE(...)), HOP(...) or SESSION(...) and GROUP BY window_start, window_end",
                )
            }
            _ => return plan_err("a windowed GROUP BY must include both window_start and window_end"),
        };
        let mut chain = self.lower(agg.input())?;
        self.close_segment(&mut chain);
        // A new stage, behind an exchange on the keys other than the window bounds.
        let finished = std::mem::take(&mut chain.operators);
        chain.stages.push(finished);
        chain.exchange_keys.push(
            group_exprs
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != window_start && *i != window_end)
                .map(|(_, (e, _))| Arc::clone(e))
                .collect(),
        );
        let spec = AggregateSpec {
            group_exprs,
            window_start,
            window_end,
            aggregates: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
            output_schema: plan.schema(),
        };
        let metrics = Arc::clone(&self.metrics);
        let session_gap = match chain.aggregates {
            0 => self.windows.innermost_session_gap()?,
            _ => None,
        };
        let op: Box<dyn Operator> = match session_gap {
            Some(gap) => Box::new(SessionAggregate::try_new(spec, gap, metrics)?),
            None => Box::new(WindowAggregate::try_new(spec, metrics)?),
        };
        chain.operators.push(op);
        chain.aggregates += 1;
        Ok(chain)
    }
}

fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

fn unsupported<T>(node: &str) -> Result<T> {
    let why = match node {
        "SortExec" | "SortPreservingMergeExec" | "PartialSortExec" => {
            "ORDER BY is not supported on a stream: results are emitted as windows close"
        }
        "GlobalLimitExec" | "LocalLimitExec" => "LIMIT is not supported on a stream yet",
        "HashJoinExec" | "NestedLoopJoinExec" | "SortMergeJoinExec" | "CrossJoinExec" | "SymmetricHashJoinExec" => {
            "joins are not supported on streams yet"
        }
        "UnionExec" | "InterleaveExec" => "UNION is not supported on streams yet",
        "WindowAggExec" | "BoundedWindowAggExec" => "OVER (...) window functions are not supported on streams",
        _ => return plan_err(format!("{node} is not supported in a continuous query")),
    };
    plan_err(why)
}
