//! Lowers `ALERT_STATUS(firing, at [, repeat_after]) OVER (PARTITION BY k
//! ORDER BY at)` into an [`AlertChanges`] step (see
//! `sluice_engine::operators::alert_status` for what it says and why).
//!
//! DataFusion plans the window function over a sort of the whole input; on a
//! stream the operator orders each key's rows by the watermark instead, so the
//! sort goes. `at` must be the rows' event time (the column the windowed step
//! below keeps it in, `window_end` for a windowed result): that is what lets
//! the watermark say when a row's turn has come.

use std::sync::Arc;

use datafusion::physical_expr::expressions::{Column, Literal};
use datafusion::physical_expr::window::{StandardWindowExpr, WindowExpr};
use datafusion::physical_plan::windows::WindowUDFExpr;
use datafusion::physical_plan::ExecutionPlan;
use sluice_engine::operators::alert_status::{interval_nanos, ALERT_STATUS};
use sluice_engine::operators::{AlertChanges, AlertSpec};

use crate::error::{plan_err, Result};
use crate::lower::{Chain, Lowering};

/// How the function is written, for error messages.
const USAGE: &str = "ALERT_STATUS(firing, at [, repeat_after]) OVER (PARTITION BY key ORDER BY at), \
    with `at` the rows' event time (window_end of a windowed result)";

/// Whether a window expression is `ALERT_STATUS`.
pub(crate) fn is_alert_status(expr: &Arc<dyn WindowExpr>) -> bool {
    expr.as_any()
        .downcast_ref::<StandardWindowExpr>()
        .and_then(|e| e.get_standard_func_expr().as_any().downcast_ref::<WindowUDFExpr>().map(|u| u.fun().name() == ALERT_STATUS))
        .unwrap_or(false)
}

impl Lowering<'_> {
    /// `plan` is a window function node whose one function is `expr`, an
    /// `ALERT_STATUS`, over `input` (its sorts already removed).
    pub(crate) fn lower_alert_status(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        expr: &Arc<dyn WindowExpr>,
        input: &Arc<dyn ExecutionPlan>,
    ) -> Result<Chain> {
        let args = expr.expressions();
        let (Some(firing), Some(at)) = (args.first(), args.get(1)) else {
            return plan_err(format!("{USAGE}: it takes firing and at"));
        };
        let repeat_after = match args.get(2) {
            None => None,
            Some(e) => match e.downcast_ref::<Literal>() {
                Some(literal) => Some(interval_nanos(literal.value())?),
                None => return plan_err(format!("{USAGE}: repeat_after must be a constant INTERVAL")),
            },
        };
        let at_column = at.downcast_ref::<Column>().map(Column::index);
        let ordered_by_at = matches!(expr.order_by(), [by] if !by.options.descending
            && by.expr.downcast_ref::<Column>().map(Column::index) == at_column);
        if at_column.is_none() || !ordered_by_at {
            return plan_err(format!("{USAGE}: on a stream it must be ORDER BY its `at` column, ascending"));
        }
        let mut chain = self.lower(input)?;
        if chain.changelog {
            return plan_err(format!(
                "{USAGE}: its input is an updating result (a GROUP BY without windows, or an outer join without time bounds); \
                 give it the rows of a windowed aggregation"
            ));
        }
        let Some(time) = chain.time.filter(|t| Some(t.column) == at_column) else {
            return plan_err(format!(
                "{USAGE}: `{at}` is not the event time of the rows it reads; order by the column that carries it \
                 (window_end of a windowed aggregation, or the table's WATERMARK column)"
            ));
        };
        let spec = AlertSpec {
            input_schema: Arc::clone(&chain.schema),
            partition_by: expr.partition_by().to_vec(),
            firing: Arc::clone(firing),
            at: Arc::clone(at),
            at_offset: time.offset,
            repeat_after,
            output_schema: plan.schema(),
        };
        let op = AlertChanges::try_new(spec, Arc::clone(&self.metrics))?;
        self.push_keyed(&mut chain, expr.partition_by().to_vec(), Box::new(op));
        chain.windows = crate::window_columns::WindowColumns::default();
        chain.schema = plan.schema();
        Ok(chain)
    }
}
