//! Which columns of a stream hold the bounds of each row's tumbling window,
//! as a window TVF put them there, so that a join of two TVFs on their
//! windows (Flink's window join) is bounded by the watermark like a join of
//! windowed aggregates.
//!
//! TUMBLE is rewritten into `date_bin(size, ts, origin) AS window_start` and
//! that plus `size` as `window_end` (DataFusion may compute the `date_bin`
//! once in a projection below). Here a column counts as a window start only if
//! it is `date_bin` (recognised by its type, not its name) of the stream's
//! event-time column itself, and as a window end only if it is such a start
//! plus exactly the bin size. Columns are followed through projections and
//! filters; anything else that reshapes rows forgets them.

use std::sync::Arc;

use datafusion::functions::datetime::date_bin::DateBinFunc;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column};
use datafusion::physical_expr::ScalarFunctionExpr;
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, PhysicalExpr};
use sluice_engine::operators::EventTime;

use crate::join_bounds::literal_nanos;

/// Window-bound columns of a stream's rows.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct WindowColumns {
    /// Columns holding `date_bin(size, event time)`, with the size in nanoseconds.
    starts: Vec<(usize, i64)>,
    /// Columns holding such a start plus its size: the window's end.
    ends: Vec<usize>,
}

impl WindowColumns {
    /// Whether `column` holds each row's window end.
    pub(crate) fn is_end(&self, column: usize) -> bool {
        self.ends.contains(&column)
    }

    /// The window columns of the output of `plan`, a stateless node over rows
    /// with these window columns and event time `time` (the input's).
    pub(crate) fn through(&self, plan: &Arc<dyn ExecutionPlan>, time: Option<EventTime>) -> WindowColumns {
        if let Some(p) = plan.downcast_ref::<ProjectionExec>() {
            let mut out = WindowColumns::default();
            for (i, e) in p.expr().iter().enumerate() {
                if let Some(size) = self.start_size(&e.expr, time) {
                    out.starts.push((i, size));
                } else if self.is_end_expr(&e.expr, time) {
                    out.ends.push(i);
                }
            }
            return out;
        }
        if let Some(f) = plan.downcast_ref::<FilterExec>() {
            return match f.projection() {
                None => self.clone(),
                Some(p) => {
                    let moved = |c: usize| p.iter().position(|i| *i == c);
                    WindowColumns {
                        starts: self.starts.iter().filter_map(|(c, s)| Some((moved(*c)?, *s))).collect(),
                        ends: self.ends.iter().filter_map(|c| moved(*c)).collect(),
                    }
                }
            };
        }
        // A node that passes rows on as they are keeps them; any other forgets.
        let same_columns = plan.children().first().is_some_and(|child| child.schema() == plan.schema());
        if same_columns {
            self.clone()
        } else {
            WindowColumns::default()
        }
    }

    /// The bin size, if `expr` is a window start: a start column, or
    /// `date_bin(size, event time[, origin])`.
    fn start_size(&self, expr: &Arc<dyn PhysicalExpr>, time: Option<EventTime>) -> Option<i64> {
        if let Some(c) = expr.downcast_ref::<Column>() {
            return self.starts.iter().find(|(column, _)| *column == c.index()).map(|(_, size)| *size);
        }
        let f = expr.downcast_ref::<ScalarFunctionExpr>()?;
        f.fun().inner().downcast_ref::<DateBinFunc>()?;
        let (stride, source) = (f.args().first()?, f.args().get(1)?);
        let time = time.filter(|t| t.offset == 0)?;
        (column_of(source)? == time.column).then_some(())?;
        literal_nanos(stride).filter(|size| *size > 0)
    }

    /// Whether `expr` is a window end: an end column, or a start plus its size.
    fn is_end_expr(&self, expr: &Arc<dyn PhysicalExpr>, time: Option<EventTime>) -> bool {
        if let Some(c) = expr.downcast_ref::<Column>() {
            return self.ends.contains(&c.index());
        }
        let Some(b) = expr.downcast_ref::<BinaryExpr>() else { return false };
        if *b.op() != Operator::Plus {
            return false;
        }
        let plus_size = |start: &Arc<dyn PhysicalExpr>, added: &Arc<dyn PhysicalExpr>| {
            self.start_size(start, time).is_some_and(|size| literal_nanos(added) == Some(size))
        };
        plus_size(b.left(), b.right()) || plus_size(b.right(), b.left())
    }
}

/// The column `expr` reads, under casts.
fn column_of(expr: &Arc<dyn PhysicalExpr>) -> Option<usize> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return Some(c.index());
    }
    column_of(expr.downcast_ref::<CastExpr>()?.expr())
}
