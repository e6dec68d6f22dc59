//! Lowers Window Top-N and window deduplication (Flink SQL) into a
//! [`WindowRank`].
//!
//! DataFusion plans `SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY
//! window_start, window_end ORDER BY n DESC) AS rn FROM ...) WHERE rn <= 3` as
//! a filter over a window function over a sort of the whole input. On a stream
//! the sort and the window function become one operator that buffers the first
//! N rows of each (window, partition) until the window closes; the filter and
//! projections above it stay as they are (they pass every row the operator
//! emits and apply any other condition). N comes from the filter: a first pass
//! over the plan ([`rank_limits`]) finds, for each window function node, the
//! bound that filters above it put on its row number.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::logical_expr::Operator as BinaryOp;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::windows::{BoundedWindowAggExec, WindowAggExec, WindowUDFExpr};
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use datafusion::scalar::ScalarValue;
use sluice_engine::operators::{EventTime, RankSpec, WindowRank};

use crate::error::{plan_err, Result};
use crate::lower::{recompute, Chain, Lowering};

/// Nodes that keep their input's columns, in place.
const PASS_THROUGH: [&str; 3] = ["CoalesceBatchesExec", "CooperativeExec", "RepartitionExec"];

/// For each window function node of `plan` (by [`node_id`]), the most rows per
/// partition that the filters above it let through, when its only function's
/// row number is bounded by a conjunct such as `rn <= N`, `rn < N` or `rn = N`.
pub(crate) fn rank_limits(plan: &Arc<dyn ExecutionPlan>) -> HashMap<usize, usize> {
    let mut limits = HashMap::new();
    collect_limits(plan, HashMap::new(), &mut limits);
    limits
}

/// What identifies a plan node while the plan is lowered.
pub(crate) fn node_id(plan: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(plan) as *const () as usize
}

/// Walks down from `plan`, with `bounds` the upper bounds that filters above
/// put on `plan`'s output columns (by index).
fn collect_limits(plan: &Arc<dyn ExecutionPlan>, bounds: HashMap<usize, usize>, limits: &mut HashMap<usize, usize>) {
    let mut below: HashMap<usize, usize> = HashMap::new();
    let mut tighten = |column: usize, n: usize| {
        below.entry(column).and_modify(|b| *b = (*b).min(n)).or_insert(n);
    };
    if let Some(filter) = plan.downcast_ref::<FilterExec>() {
        for (column, n) in bounds {
            match filter.projection() {
                None => tighten(column, n),
                Some(p) => p.get(column).into_iter().for_each(|c| tighten(*c, n)),
            }
        }
        split_conjunction(filter.predicate()).into_iter().filter_map(upper_bound).for_each(|(c, n)| tighten(c, n));
    } else if let Some(projection) = plan.downcast_ref::<ProjectionExec>() {
        for (column, n) in bounds {
            let source = projection.expr().get(column).and_then(|e| e.expr.downcast_ref::<Column>());
            source.into_iter().for_each(|c| tighten(c.index(), n));
        }
    } else if PASS_THROUGH.contains(&plan.name()) {
        below = bounds;
    } else if let Some((exprs, input)) = window_function(plan) {
        let first_output = input.schema().fields().len();
        if let (Some(n), 1) = (bounds.get(&first_output), exprs.len()) {
            limits.insert(node_id(plan), *n);
        }
        // What ranks below sees rows a filter above drops: no bound goes further.
    }
    for child in plan.children() {
        collect_limits(child, std::mem::take(&mut below), limits);
    }
}

/// `(column, n)` when `expr` keeps only rows whose column `column` is at most
/// `n` (an integer comparison with a literal, either way round).
fn upper_bound(expr: &Arc<dyn PhysicalExpr>) -> Option<(usize, usize)> {
    let binary = expr.downcast_ref::<BinaryExpr>()?;
    let (column, literal, op) = match (column_of(binary.left()), literal_of(binary.right())) {
        (Some(c), Some(l)) => (c, l, *binary.op()),
        _ => (column_of(binary.right())?, literal_of(binary.left())?, binary.op().swap()?),
    };
    let n = match op {
        BinaryOp::LtEq | BinaryOp::Eq => literal,
        BinaryOp::Lt => literal - 1,
        _ => return None,
    };
    Some((column, usize::try_from(n.max(0)).ok()?))
}

fn column_of(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    if let Some(cast) = expr.downcast_ref::<CastExpr>() {
        return column_of(cast.expr());
    }
    expr.downcast_ref::<Column>().map(Column::index)
}

fn literal_of(expr: &Arc<dyn PhysicalExpr>) -> Option<i64> {
    let value = expr.downcast_ref::<Literal>()?.value();
    if !value.data_type().is_integer() {
        return None;
    }
    match value.cast_to(&datafusion::arrow::datatypes::DataType::Int64).ok()? {
        ScalarValue::Int64(Some(v)) => Some(v),
        _ => None,
    }
}

/// A window function node's expressions and input.
type WindowFunction<'a> = (&'a [Arc<dyn WindowExpr>], &'a Arc<dyn ExecutionPlan>);

/// The window expressions and input of a window function node.
fn window_function(plan: &Arc<dyn ExecutionPlan>) -> Option<WindowFunction<'_>> {
    if let Some(w) = plan.downcast_ref::<BoundedWindowAggExec>() {
        return Some((w.window_expr(), w.input()));
    }
    plan.downcast_ref::<WindowAggExec>().map(|w| (w.window_expr(), w.input()))
}

fn is_row_number(expr: &Arc<dyn WindowExpr>) -> bool {
    let Some(standard) = expr.as_any().downcast_ref::<StandardWindowExpr>() else { return false };
    let function = standard.get_standard_func_expr();
    function.as_any().downcast_ref::<WindowUDFExpr>().is_some_and(|u| u.fun().name() == "row_number")
}

/// `plan` without the sorts DataFusion put in front of a window function
/// (possibly below projections and filters): they order the whole input, and
/// the operator ranks each partition's rows as they come.
fn without_sorts(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(sort) = plan.downcast_ref::<SortExec>() {
        return without_sorts(sort.input());
    }
    let stateless = plan.downcast_ref::<ProjectionExec>().is_some()
        || plan.downcast_ref::<FilterExec>().is_some()
        || PASS_THROUGH.contains(&plan.name());
    match plan.children()[..] {
        [child] if stateless => Ok(Arc::clone(plan).replace_children(vec![without_sorts(child)?], recompute())?),
        _ => Ok(Arc::clone(plan)),
    }
}

/// How Flink's Window Top-N is written, for error messages.
const WINDOW_TOP_N: &str = "SELECT * FROM (SELECT *, ROW_NUMBER() OVER (PARTITION BY window_start, window_end[, keys] \
    ORDER BY ...) AS rn FROM <window TVF or windowed aggregation>) WHERE rn <= N";

impl Lowering<'_> {
    /// Lowers a window function node: a Window Top-N (see the module docs), or
    /// an error saying what a stream supports.
    pub(crate) fn lower_window_rank(&self, plan: &Arc<dyn ExecutionPlan>) -> Result<Chain> {
        let Some((exprs, input)) = window_function(plan) else {
            return plan_err(format!("internal: {} is not a window function", plan.name()));
        };
        let [expr] = exprs else {
            return plan_err(format!(
                "OVER (...) window functions are not supported on streams, except one ROW_NUMBER() for Window Top-N: {WINDOW_TOP_N}"
            ));
        };
        if crate::lower_alert::is_alert_status(expr) {
            return self.lower_alert_status(plan, expr, &without_sorts(input)?);
        }
        if !is_row_number(expr) {
            return plan_err(format!(
                "OVER (...) window functions are not supported on streams, except ROW_NUMBER() for Window Top-N ({WINDOW_TOP_N}) and ALERT_STATUS"
            ));
        }
        if self.windows.windows.is_empty() {
            return plan_err(format!(
                "ROW_NUMBER() on a stream needs windows: rows of a window table function (TUMBLE, HOP, CUMULATE) \
                 or of a windowed aggregation, ranked per window: {WINDOW_TOP_N}"
            ));
        }
        let named = |name: &str| {
            expr.partition_by().iter().position(|e| e.downcast_ref::<Column>().is_some_and(|c| c.name() == name))
        };
        let (Some(window_start), Some(window_end)) = (named("window_start"), named("window_end")) else {
            let by: Vec<String> = expr.partition_by().iter().map(|e| e.to_string()).collect();
            let by = match by.is_empty() {
                true => "has no PARTITION BY".to_string(),
                false => format!("is PARTITION BY {}", by.join(", ")),
            };
            return plan_err(format!(
                "ROW_NUMBER() on a stream is Window Top-N, which (as in Flink) must be PARTITION BY window_start, \
                 window_end and any other keys; this one {by}"
            ));
        };
        let Some(&limit) = self.rank_limits.get(&node_id(plan)) else {
            return plan_err(format!(
                "ROW_NUMBER() on a stream needs a bound on the row number (Window Top-N), e.g. WHERE rn <= 3, \
                 or rn = 1 to deduplicate: {WINDOW_TOP_N}"
            ));
        };
        let mut chain = self.lower(&without_sorts(input)?)?;
        if chain.changelog {
            return plan_err(
                "Window Top-N over updating results (a GROUP BY or outer join without time bounds) is not supported",
            );
        }
        let input_schema = Arc::clone(&chain.schema);
        // Deduplication keeping the last row (ORDER BY the time attribute DESC,
        // rn = 1) keeps, as Flink does, the last of rows at the same time.
        let later_ties_first = match expr.order_by() {
            [by] => {
                let time = by.expr.downcast_ref::<Column>().map(Column::index);
                limit <= 1 && by.options.descending && time.is_some() && chain.time.map(|t| t.column) == time
            }
            _ => false,
        };
        let Some(end_column) = expr.partition_by()[window_end].downcast_ref::<Column>().map(Column::index) else {
            return plan_err("internal: window_end is not a column");
        };
        let spec = RankSpec {
            input_schema,
            partition_by: expr.partition_by().to_vec(),
            window_start,
            window_end,
            order_by: expr.order_by().to_vec(),
            limit,
            later_ties_first,
            output_schema: plan.schema(),
        };
        let op = WindowRank::try_new(spec, Arc::clone(&self.metrics))?;
        self.push_keyed(&mut chain, expr.partition_by().to_vec(), Box::new(op));
        // Rows leave when their window closes: they take the time just before its end.
        chain.time = Some(EventTime { column: end_column, offset: -1 });
        chain.windows = crate::window_columns::WindowColumns::default();
        chain.schema = plan.schema();
        Ok(chain)
    }
}
