//! Lowers a DataFusion physical plan into the flows and operators of a pipeline.
//!
//! The plan is walked from its leaves (each a [`FeedExec`] scanning a stream
//! table) up: consecutive stateless nodes (projection, filter, unnest) stay one
//! DataFusion plan run per batch by a [`StatelessOperator`]; a windowed
//! `AggregateExec` becomes a [`WindowAggregate`] or [`SessionAggregate`] (with
//! GROUPING SETS, ROLLUP or CUBE, behind a [`GroupingSetExpand`] that repeats
//! each row per set), a plain one an [`UpdatingAggregate`]; a `HashJoinExec`
//! becomes a join of two flows (see [`crate::lower_join`]), a `UnionExec` (`UNION
//! ALL`) a flow over one flow per branch (see [`crate::lower_union`]); a `ROW_NUMBER()`
//! window function bounded by a filter above it becomes a Window Top-N (see
//! [`crate::lower_rank`]). Along the way it tracks which column carries each
//! row's event time (joins need it to bound their state) and whether rows are a
//! changelog (then every stateless step passes the change-kind column through).
//! Anything that would need the whole input (sorts, limits) is rejected with a
//! message saying so.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::SchemaRef;
use datafusion::execution::TaskContext;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::projection::ProjectionExpr;
use datafusion::logical_expr::Aggregate;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode, PhysicalGroupBy};
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ChildrenPropertiesMode, ExecutionPlan, PhysicalExpr, ReplaceChildrenOptions};
use sluice_engine::changelog::{is_changelog, op_first_schema, with_op_field, OpFirst, OP_COLUMN};
use sluice_engine::feed::{FeedExec, FeedHandle};
use sluice_engine::metrics::JobMetrics;
use sluice_engine::operators::window_aggregate::AggregateSpec;
use sluice_engine::operators::{
    EventTime, GroupingSetExpand, SessionAggregate, StatelessOperator, UpdatingAggregate, WindowAggregate,
};
use sluice_engine::{ExchangeKey, Operator};

use crate::error::{plan_err, Result};
use crate::window_columns::WindowColumns;
use crate::window_tvf::{SessionWindow, WindowTvfs};

/// Plan nodes that are applied to each batch on its own.
const STATELESS: [&str; 5] =
    ["ProjectionExec", "FilterExec", "UnnestExec", "CoalesceBatchesExec", "CooperativeExec"];

/// What lowering needs to know of a catalog table.
#[derive(Debug, Clone)]
pub struct TableInfo {
    /// The column its WATERMARK is declared for.
    pub time_column: Option<String>,
    /// A bounded table without event time (a file): joined by lookup.
    pub is_static: bool,
    /// An upsert table (a Kafka table with a PRIMARY KEY): its source sends
    /// `+U`/`-D` changes by key.
    pub is_upsert: bool,
}

/// One stage of a lowered flow (for one lane).
pub struct LoweredStage {
    /// The key rows are repartitioned by in front of the stage (`None`: none).
    pub exchange: Option<ExchangeKey>,
    pub operators: Vec<Box<dyn Operator>>,
}

/// Where a lowered flow's rows come from.
pub enum LoweredInput {
    /// A stream table.
    Table(String),
    Join(Box<LoweredJoin>),
    Union(Box<LoweredUnion>),
}

pub struct LoweredJoin {
    pub left: LoweredFlow,
    pub right: LoweredFlow,
    pub left_key: ExchangeKey,
    pub right_key: ExchangeKey,
    pub operator: Box<dyn Operator>,
}

/// The branches of a `UNION ALL` and the step that passes their rows on.
pub struct LoweredUnion {
    pub inputs: Vec<LoweredFlow>,
    pub operator: Box<dyn Operator>,
}

/// The operators of one lane of a continuous query.
pub struct LoweredFlow {
    pub input: LoweredInput,
    pub stages: Vec<LoweredStage>,
}

/// One lane of a lowered query and what it produces.
pub struct LoweredQuery {
    pub flow: LoweredFlow,
    /// True if the query's results are a changelog (an `op` column comes first).
    pub changelog: bool,
    /// The schema of the rows the sink gets.
    pub output_schema: SchemaRef,
}

/// A stateless plan being grown node by node, fed by `feed`.
struct Segment {
    root: Arc<dyn ExecutionPlan>,
    feed: FeedHandle,
}

/// A flow being built, from its input up to the current node.
pub(crate) struct Chain {
    input: Option<LoweredInput>,
    /// Stages before the current one.
    stages: Vec<LoweredStage>,
    /// The exchange in front of the current stage.
    exchange: Option<ExchangeKey>,
    /// The current stage.
    operators: Vec<Box<dyn Operator>>,
    segment: Option<Segment>,
    /// Aggregations below this point.
    pub(crate) aggregates: usize,
    /// The column holding each row's event time, if still known.
    pub(crate) time: Option<EventTime>,
    /// The columns holding each row's tumbling window, if a window TVF put
    /// them there (see [`WindowColumns`]).
    pub(crate) windows: WindowColumns,
    /// Whether rows carry a change kind (last column).
    pub(crate) changelog: bool,
    /// The schema of the rows leaving the chain (change kind included).
    pub(crate) schema: SchemaRef,
    /// The tables the chain reads.
    pub(crate) tables: Vec<String>,
    /// The changes come from an upsert table: `+U` without the `-U` before it,
    /// which only a temporal join (or a plain read) can take.
    pub(crate) upsert: bool,
}

impl Chain {
    pub(crate) fn joined(input: LoweredInput, schema: SchemaRef, time: Option<EventTime>, changelog: bool, tables: Vec<String>) -> Self {
        Chain {
            input: Some(input),
            stages: Vec::new(),
            exchange: None,
            operators: Vec::new(),
            segment: None,
            aggregates: 0,
            time,
            windows: WindowColumns::default(),
            changelog,
            schema,
            tables,
            upsert: false,
        }
    }
}

pub(crate) struct Lowering<'a> {
    pub(crate) windows: &'a WindowTvfs,
    pub(crate) tables: &'a HashMap<String, TableInfo>,
    pub(crate) task_ctx: Arc<TaskContext>,
    pub(crate) metrics: Arc<JobMetrics>,
    pub(crate) ttl: Option<Duration>,
    /// Row-number bounds of window function nodes (see [`crate::lower_rank`]).
    pub(crate) rank_limits: HashMap<usize, usize>,
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
    tables: &HashMap<String, TableInfo>,
    task_ctx: Arc<TaskContext>,
    metrics: Arc<JobMetrics>,
    ttl: Option<Duration>,
) -> Result<LoweredQuery> {
    let plan = &crate::lower_union::single_phase_aggregates(plan)?;
    let rank_limits = crate::lower_rank::rank_limits(plan);
    let cx = Lowering { windows, tables, task_ctx, metrics, ttl, rank_limits };
    let mut chain = cx.lower(plan)?;
    if windows.has_session() && chain.aggregates == 0 {
        return plan_err(
            "SESSION windows exist only through aggregation: GROUP BY window_start, window_end (and keys)",
        );
    }
    let changelog = chain.changelog;
    let output_schema = match changelog {
        true => {
            if plan.schema().fields().iter().any(|f| f.name() == OP_COLUMN) {
                return plan_err(format!(
                    "the column name '{OP_COLUMN}' is taken by the change kind of updating results; rename the column"
                ));
            }
            cx.close_segment(&mut chain);
            chain.operators.push(Box::new(OpFirst));
            op_first_schema(&chain.schema)
        }
        false => plan.schema(),
    };
    Ok(LoweredQuery { flow: cx.finish(chain), changelog, output_schema })
}

impl Lowering<'_> {
    fn close_segment(&self, chain: &mut Chain) {
        if let Some(seg) = chain.segment.take() {
            chain.operators.push(Box::new(StatelessOperator::new(seg.root, seg.feed, Arc::clone(&self.task_ctx))));
        }
    }

    /// Ends the current stage; the next one sits behind an exchange on `key`.
    fn new_stage(&self, chain: &mut Chain, key: ExchangeKey) {
        self.close_segment(chain);
        let operators = std::mem::take(&mut chain.operators);
        chain.stages.push(LoweredStage { exchange: chain.exchange.take(), operators });
        chain.exchange = Some(key);
    }

    /// Puts `op` in a new stage, behind an exchange on `key`.
    pub(crate) fn push_keyed(&self, chain: &mut Chain, key: ExchangeKey, op: Box<dyn Operator>) {
        self.new_stage(chain, key);
        chain.operators.push(op);
    }

    /// The chain as a finished flow.
    pub(crate) fn finish(&self, mut chain: Chain) -> LoweredFlow {
        self.close_segment(&mut chain);
        let operators = std::mem::take(&mut chain.operators);
        chain.stages.push(LoweredStage { exchange: chain.exchange.take(), operators });
        let input = chain.input.take().unwrap_or_else(|| LoweredInput::Table(String::new()));
        LoweredFlow { input, stages: chain.stages }
    }

    pub(crate) fn lower(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Chain> {
        // DataFusion pushes a LIMIT into the node below it (a filter's or a
        // projection's fetch) and drops the limit node: refuse it there too,
        // rather than run the query without its LIMIT.
        if plan.fetch().is_some() {
            return unsupported("GlobalLimitExec");
        }
        if let Some(feed) = plan.downcast_ref::<FeedExec>() {
            return self.lower_feed(feed);
        }
        if let Some(agg) = plan.downcast_ref::<AggregateExec>() {
            return self.lower_aggregate(plan, agg);
        }
        if let Some(join) = plan.downcast_ref::<HashJoinExec>() {
            return self.lower_join(plan, join);
        }
        if matches!(plan.name(), "WindowAggExec" | "BoundedWindowAggExec") {
            return self.lower_window_rank(plan);
        }
        if matches!(plan.name(), "UnionExec" | "InterleaveExec") {
            return self.lower_union(plan);
        }
        if crate::lower_union::PARTITION_MOVES.contains(&plan.name()) {
            if let [child] = plan.children().as_slice() {
                return self.lower(child);
            }
        }
        let name = plan.name();
        if STATELESS.contains(&name) {
            let children = plan.children();
            let [child] = children.as_slice() else {
                return plan_err(format!("internal: {name} with {} inputs", children.len()));
            };
            let mut chain = self.lower(child)?;
            let (input, feed) = match chain.segment.take() {
                Some(seg) => (seg.root, seg.feed),
                None => {
                    let feed =
                        FeedExec::try_new(format!("stage {} output", chain.stages.len()), Arc::clone(&chain.schema), None)?;
                    let handle = feed.handle();
                    (Arc::new(feed) as Arc<dyn ExecutionPlan>, handle)
                }
            };
            let root = match chain.changelog {
                true => keep_change_kind(plan, input)?,
                false => Arc::clone(plan).replace_children(vec![input], recompute())?,
            };
            chain.windows = chain.windows.through(plan, chain.time);
            chain.time = chain.time.and_then(|t| time_through(plan, t));
            chain.schema = root.schema();
            chain.segment = Some(Segment { root, feed });
            return Ok(chain);
        }
        unsupported(name)
    }

    fn lower_feed(&self, feed: &FeedExec) -> Result<Chain> {
        let table = feed.label().to_string();
        let info = self.tables.get(&table);
        let is_upsert = info.is_some_and(|t| t.is_upsert);
        // An upsert table's source sends the change kind as a last column.
        let fresh = if is_upsert { feed.with_change_kind()? } else { feed.fresh()? };
        let handle = fresh.handle();
        let schema = fresh.schema();
        let time = info
            .and_then(|t| t.time_column.as_ref())
            .and_then(|c| schema.index_of(c).ok())
            .map(|column| EventTime { column, offset: 0 });
        Ok(Chain {
            input: Some(LoweredInput::Table(table.clone())),
            stages: Vec::new(),
            exchange: None,
            operators: Vec::new(),
            segment: Some(Segment { root: Arc::new(fresh), feed: handle }),
            aggregates: 0,
            time,
            windows: WindowColumns::default(),
            changelog: is_upsert,
            schema,
            tables: vec![table],
            upsert: is_upsert,
        })
    }

    fn lower_aggregate(&self, plan: &Arc<dyn ExecutionPlan>, agg: &AggregateExec) -> Result<Chain> {
        let agg = match agg.mode() {
            AggregateMode::Single | AggregateMode::SinglePartitioned => agg,
            // DataFusion plans GROUPING SETS in two phases even in one
            // partition; here the pair is one aggregation, of the partial
            // phase's grouping sets and aggregates, with the final one's output.
            AggregateMode::Final | AggregateMode::FinalPartitioned => match partial_grouping_sets(agg) {
                Some(partial) => partial,
                None => return plan_err(format!("internal: unexpected aggregation mode {:?}", agg.mode())),
            },
            other => return plan_err(format!("internal: unexpected aggregation mode {other:?}")),
        };
        let group = agg.group_expr();
        let mut group_exprs = group.expr().to_vec();
        let position = |col: &str| group_exprs.iter().position(|(_, n)| n == col);
        let window = match (position("window_start"), position("window_end")) {
            (Some(s), Some(e)) => Some((s, e)),
            (None, None) => None,
            _ => return plan_err("a windowed GROUP BY must include both window_start and window_end"),
        };
        if !group.is_single() {
            check_grouping_sets(group, window)?;
        }
        let mut chain = self.lower(agg.input())?;
        let Some((window_start, window_end)) = window else {
            return self.lower_updating_aggregate(plan, agg, chain);
        };
        if chain.changelog {
            return plan_err("a windowed aggregation over updating results (a GROUP BY or outer join without time bounds) is not supported");
        }
        let mut input_schema = agg.input().schema();
        if !group.is_single() {
            // Rows repeated per grouping set, before the exchange; the aggregate
            // groups by the repeated keys and the set's `__grouping_id`.
            self.close_segment(&mut chain);
            let expand = GroupingSetExpand::try_new(group.clone(), &chain.schema)?;
            input_schema = expand.output_schema();
            let first = chain.schema.fields().len();
            let names = group_exprs.iter().map(|(_, n)| n.clone()).chain([Aggregate::INTERNAL_GROUPING_ID.to_string()]);
            group_exprs = names
                .enumerate()
                .map(|(i, name)| (Arc::new(Column::new(&name, first + i)) as Arc<dyn PhysicalExpr>, name))
                .collect();
            chain.operators.push(Box::new(expand));
        }
        // A new stage, behind an exchange on the keys other than the window bounds.
        let key = group_exprs
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != window_start && *i != window_end)
            .map(|(_, (e, _))| Arc::clone(e))
            .collect();
        self.new_stage(&mut chain, key);
        let spec = AggregateSpec {
            group_exprs,
            window_start,
            window_end,
            aggregates: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
            output_schema: plan.schema(),
            input_schema: Some(input_schema),
        };
        let metrics = Arc::clone(&self.metrics);
        let session = match chain.aggregates {
            0 => self.windows.innermost_session()?,
            _ => None,
        };
        if session.is_some() && !group.is_single() {
            return plan_err("GROUPING SETS, ROLLUP and CUBE are not supported with SESSION windows (only TUMBLE, HOP, CUMULATE)");
        }
        let op: Box<dyn Operator> = match session {
            Some(session) => {
                check_session_keys(session, &spec)?;
                Box::new(SessionAggregate::try_new(spec, session.gap, metrics)?)
            }
            None => match (chain.aggregates, self.windows.sliced_hop()) {
                // The aggregation directly over the HOP: its rows carry slices.
                (0, Some(hop)) => Box::new(WindowAggregate::sliced(spec, hop.slide, hop.size, metrics)?),
                _ => Box::new(WindowAggregate::try_new(spec, metrics)?),
            },
        };
        chain.operators.push(op);
        chain.aggregates += 1;
        // Group columns come first in the output: a window's rows take the time
        // just before its end.
        chain.time = Some(EventTime { column: window_end, offset: -1 });
        chain.windows = WindowColumns::default();
        chain.schema = plan.schema();
        Ok(chain)
    }

    fn lower_updating_aggregate(&self, plan: &Arc<dyn ExecutionPlan>, agg: &AggregateExec, mut chain: Chain) -> Result<Chain> {
        if chain.upsert {
            return plan_err(
                "aggregating an upsert table (a Kafka table with a PRIMARY KEY) is not supported: its changes carry \
                 no old values to take back; read it as the versioned table of a temporal join, or without a PRIMARY KEY",
            );
        }
        let changelog_input = chain.changelog;
        let group_exprs = agg.group_expr().expr().to_vec();
        self.new_stage(&mut chain, group_exprs.iter().map(|(e, _)| Arc::clone(e)).collect());
        let output_schema = with_op_field(&plan.schema());
        let spec = AggregateSpec {
            group_exprs,
            window_start: usize::MAX,
            window_end: usize::MAX,
            aggregates: agg.aggr_expr().to_vec(),
            filters: agg.filter_expr().to_vec(),
            output_schema: Arc::clone(&output_schema),
            input_schema: Some(Arc::clone(&chain.schema)),
        };
        let op = UpdatingAggregate::try_new(spec, changelog_input, self.ttl, self.metrics.state_reporter())?;
        chain.operators.push(Box::new(op));
        chain.aggregates += 1;
        chain.time = None;
        chain.windows = WindowColumns::default();
        chain.changelog = true;
        chain.schema = output_schema;
        Ok(chain)
    }
}

/// The partial phase of a two-phase aggregation of grouping sets under `agg`.
fn partial_grouping_sets(agg: &AggregateExec) -> Option<&AggregateExec> {
    let mut input = agg.input();
    while matches!(input.name(), "CoalesceBatchesExec" | "CooperativeExec" | "RepartitionExec" | "CoalescePartitionsExec") {
        input = input.children().into_iter().next()?;
    }
    let partial = input.downcast_ref::<AggregateExec>()?;
    let grouping_sets = matches!(partial.mode(), AggregateMode::Partial) && !partial.group_expr().is_single();
    grouping_sets.then_some(partial)
}

/// GROUPING SETS, ROLLUP and CUBE are supported in window aggregations, with
/// the window bounds in every set (as in Flink: `GROUP BY window_start,
/// window_end, GROUPING SETS (...)`).
fn check_grouping_sets(group: &PhysicalGroupBy, window: Option<(usize, usize)>) -> Result<()> {
    let Some((start, end)) = window else {
        return plan_err(
            "GROUPING SETS, ROLLUP and CUBE are supported on streams only in window aggregations: \
             GROUP BY window_start, window_end, GROUPING SETS (...) | ROLLUP (...) | CUBE (...)",
        );
    };
    if group.groups().iter().any(|set| set[start] || set[end]) {
        return plan_err(
            "every grouping set of a window aggregation must keep window_start and window_end: \
             write GROUP BY window_start, window_end, GROUPING SETS (...) | ROLLUP (...) | CUBE (...)",
        );
    }
    Ok(())
}

/// A session aggregate keeps sessions per GROUP BY key. With `PARTITION BY`,
/// sessions are per partition, so the GROUP BY keys must be exactly the
/// partition columns (as in Flink): a key left out would merge partitions'
/// sessions, an extra key would split them.
fn check_session_keys(session: &SessionWindow, spec: &AggregateSpec) -> Result<()> {
    if session.partition_by.is_empty() {
        return Ok(());
    }
    let keys: BTreeSet<&str> = (spec.group_exprs.iter().enumerate())
        .filter(|(i, _)| *i != spec.window_start && *i != spec.window_end)
        .map(|(_, (_, name))| name.as_str())
        .collect();
    let partition: BTreeSet<&str> = session.partition_by.iter().map(String::as_str).collect();
    if keys == partition {
        return Ok(());
    }
    let list = session.partition_by.join(", ");
    let extra: Vec<&str> = keys.difference(&partition).copied().collect();
    let why = match extra.is_empty() {
        true => String::new(),
        false => format!(" (not by {})", extra.join(", ")),
    };
    plan_err(format!(
        "SESSION(TABLE t PARTITION BY {list}, ...) keeps sessions per {list}: its aggregation must \
         GROUP BY window_start, window_end, {list} and no other key{why}"
    ))
}

/// Rebuilds a stateless node over `input` (a changelog) so that the change-kind
/// column, last in the input, stays last in its output.
fn keep_change_kind(plan: &Arc<dyn ExecutionPlan>, input: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    let op_index = input.schema().fields().len() - 1;
    if !is_changelog(&input.schema()) {
        return plan_err("internal: a changelog without its change-kind column");
    }
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        let mut exprs: Vec<ProjectionExpr> = p.expr().to_vec();
        exprs.push(ProjectionExpr::new(Arc::new(Column::new(OP_COLUMN, op_index)), OP_COLUMN));
        return Ok(Arc::new(ProjectionExec::try_new(exprs, input)?));
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        let projection = f.projection().as_ref().map(|p| p.iter().copied().chain([op_index]).collect::<Vec<_>>());
        let filter = FilterExecBuilder::new(Arc::clone(f.predicate()), input).apply_projection(projection)?.build()?;
        return Ok(Arc::new(filter));
    }
    match plan.name() {
        "CoalesceBatchesExec" | "CooperativeExec" => Ok(Arc::clone(plan).replace_children(vec![input], recompute())?),
        other => plan_err(format!("{other} over updating results (a GROUP BY or outer join without time bounds) is not supported")),
    }
}

/// Where the event-time column ends up after a stateless node.
fn time_through(plan: &Arc<dyn ExecutionPlan>, time: EventTime) -> Option<EventTime> {
    let moved = |column| Some(EventTime { column, offset: time.offset });
    if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
        return p
            .expr()
            .iter()
            .position(|e| e.expr.downcast_ref::<Column>().is_some_and(|c| c.index() == time.column))
            .and_then(moved);
    }
    if let Some(f) = plan.downcast_ref::<FilterExec>() {
        return match f.projection() {
            None => Some(time),
            Some(p) => p.iter().position(|i| *i == time.column).and_then(moved),
        };
    }
    Some(time)
}

pub(crate) fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

fn unsupported<T>(node: &str) -> Result<T> {
    let why = match node {
        "SortExec" | "SortPreservingMergeExec" | "PartialSortExec" => {
            "ORDER BY is not supported on a stream: results are emitted as windows close"
        }
        "GlobalLimitExec" | "LocalLimitExec" => "LIMIT is not supported on a stream yet",
        "NestedLoopJoinExec" | "CrossJoinExec" => {
            "a join of streams needs an equality between the two sides (ON a.k = b.k)"
        }
        "SortMergeJoinExec" | "SymmetricHashJoinExec" => "this join is not supported on streams",
        _ => return plan_err(format!("{node} is not supported in a continuous query")),
    };
    plan_err(why)
}
