//! `ts + INTERVAL '5' SECOND` as a plain addition.
//!
//! DataFusion adds an `INTERVAL` to a timestamp through calendar arithmetic
//! (chrono, row by row), because an interval may hold months or days. Event-time
//! SQL is full of intervals that hold neither: watermark delays, window bounds,
//! session gaps, interval-join bounds. This optimizer rule turns such an
//! interval, added to or subtracted from a timestamp, into a duration of the
//! timestamp's unit, which Arrow adds as integers. The result is the same
//! timestamp (a fixed number of nanoseconds moves every time zone alike); an
//! interval with months or days, or one finer than the timestamp's unit, is
//! left as it is.

use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DFSchema, Result, ScalarValue};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::{BinaryExpr, Expr, ExprSchemable, LogicalPlan, Operator};
use datafusion::optimizer::{ApplyOrder, OptimizerConfig, OptimizerRule};

/// The optimizer rule (see the module docs).
#[derive(Debug, Default)]
pub struct FixedIntervalsAsDurations;

impl OptimizerRule for FixedIntervalsAsDurations {
    fn name(&self) -> &str {
        "sluice_fixed_intervals_as_durations"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::BottomUp)
    }

    fn rewrite(&self, plan: LogicalPlan, _config: &dyn OptimizerConfig) -> Result<Transformed<LogicalPlan>> {
        // A node's expressions read the columns of its inputs.
        let mut schema = DFSchema::empty();
        let inputs = plan.inputs();
        if inputs.is_empty() {
            return Ok(Transformed::no(plan));
        }
        for input in inputs {
            schema.merge(input.schema());
        }
        // A rewritten expression keeps its name (the plan's schema must not change).
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let name = names.save(&expr);
            let rewritten = expr.transform_up(|e| as_duration(e, &schema))?;
            Ok(match rewritten.transformed {
                true => Transformed::yes(name.restore(rewritten.data)),
                false => rewritten,
            })
        })
    }
}

/// `e` with a fixed interval added to or subtracted from a timestamp as a
/// duration; anything else as it is.
fn as_duration(e: Expr, schema: &DFSchema) -> Result<Transformed<Expr>> {
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = &e else { return Ok(Transformed::no(e)) };
    if !matches!(op, Operator::Plus | Operator::Minus) {
        return Ok(Transformed::no(e));
    }
    let Expr::Literal(ScalarValue::IntervalMonthDayNano(Some(interval)), _) = right.as_ref() else {
        return Ok(Transformed::no(e));
    };
    if interval.months != 0 || interval.days != 0 {
        return Ok(Transformed::no(e));
    }
    let Ok(DataType::Timestamp(unit, _)) = left.get_type(schema) else { return Ok(Transformed::no(e)) };
    let nanos = interval.nanoseconds;
    let duration = match unit {
        TimeUnit::Second if nanos % 1_000_000_000 == 0 => ScalarValue::DurationSecond(Some(nanos / 1_000_000_000)),
        TimeUnit::Millisecond if nanos % 1_000_000 == 0 => ScalarValue::DurationMillisecond(Some(nanos / 1_000_000)),
        TimeUnit::Microsecond if nanos % 1_000 == 0 => ScalarValue::DurationMicrosecond(Some(nanos / 1_000)),
        TimeUnit::Nanosecond => ScalarValue::DurationNanosecond(Some(nanos)),
        _ => return Ok(Transformed::no(e)),
    };
    let rewritten = BinaryExpr::new(left.clone(), *op, Box::new(Expr::Literal(duration, None)));
    Ok(Transformed::yes(Expr::BinaryExpr(rewritten)))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{AsArray, RecordBatch, TimestampMillisecondArray};
    use datafusion::arrow::datatypes::{Field, Schema, TimestampMillisecondType};
    use datafusion::prelude::SessionContext;

    use super::*;

    /// Runs `sql` over a table `t` of millisecond timestamps in `ctx`; returns
    /// the optimized plan's text and the first column's values.
    async fn run(ctx: &SessionContext, sql: &str) -> Result<(String, Vec<Option<i64>>)> {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Millisecond, Some("Europe/Berlin".into())),
            true,
        )]));
        // Around a daylight-saving change in Berlin, and a NULL.
        let ts = TimestampMillisecondArray::from(vec![Some(1_774_746_000_000), None, Some(1_774_749_600_500)])
            .with_timezone("Europe/Berlin");
        let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(ts)])?;
        if !ctx.table_exist("t")? {
            ctx.register_batch("t", batch)?;
        }
        let df = ctx.sql(sql).await?;
        let plan = format!("{}", df.clone().into_optimized_plan()?.display_indent());
        let mut values = Vec::new();
        for batch in df.collect().await? {
            values.extend(batch.column(0).as_primitive::<TimestampMillisecondType>().iter());
        }
        Ok((plan, values))
    }

    #[tokio::test]
    async fn fixed_intervals_become_durations_with_the_same_results() -> Result<()> {
        let plain = SessionContext::new();
        let rewriting = SessionContext::new();
        rewriting.add_optimizer_rule(Arc::new(FixedIntervalsAsDurations));
        for (sql, rewritten) in [
            ("SELECT ts - INTERVAL '5' SECOND FROM t", true),
            ("SELECT ts + INTERVAL '90' MINUTE FROM t", true),
            ("SELECT ts + INTERVAL '0.001' SECOND FROM t", true),
            // Finer than the column's milliseconds, or calendar units: kept.
            ("SELECT ts + INTERVAL '1' MICROSECOND FROM t", false),
            ("SELECT ts + INTERVAL '1' DAY FROM t", false),
            ("SELECT ts + INTERVAL '1' MONTH FROM t", false),
        ] {
            let (_, expected) = run(&plain, sql).await?;
            let (plan, found) = run(&rewriting, sql).await?;
            assert_eq!(found, expected, "{sql}");
            assert_eq!(plan.contains("Duration"), rewritten, "{sql}: {plan}");
        }
        Ok(())
    }
}
