//! Finds the time bounds of a join condition: how far apart in event time two
//! rows can be and still match.
//!
//! `b.ts BETWEEN a.ts - INTERVAL '1' MINUTE AND a.ts + INTERVAL '5' MINUTE` bounds
//! `b.ts - a.ts` to [-1 min, +5 min]; `a.window_end = b.window_end` (a window
//! join) bounds it to [0, 0]. With both bounds, the watermark tells when a kept
//! row can no longer match, so join state stays bounded. Only comparisons of the
//! two sides' event-time columns (plus or minus constant intervals) count.

use std::sync::Arc;

use datafusion::common::{JoinSide, ScalarValue};
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::expressions::{BinaryExpr, CastExpr, Column, Literal};
use datafusion::physical_expr::split_conjunction;
use datafusion::physical_plan::joins::utils::JoinFilter;
use datafusion::physical_plan::PhysicalExpr;
use sluice_engine::operators::EventTime;

const NANOS_PER_DAY: i64 = 86_400_000_000_000;

/// Bounds on `right time - left time`, in nanoseconds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct TimeBounds {
    pub lower: Option<i64>,
    pub upper: Option<i64>,
}

impl TimeBounds {
    fn lower_at_least(&mut self, v: i64) {
        self.lower = Some(self.lower.map_or(v, |l| l.max(v)));
    }

    fn upper_at_most(&mut self, v: i64) {
        self.upper = Some(self.upper.map_or(v, |u| u.min(v)));
    }

    /// Both bounds, if the condition has them.
    pub fn both(&self) -> Option<(i64, i64)> {
        Some((self.lower?, self.upper?))
    }
}

/// `column + offset` where the column is a side's event time.
fn linear(expr: &Arc<dyn PhysicalExpr>) -> Option<(usize, i64)> {
    if let Some(c) = expr.downcast_ref::<Column>() {
        return Some((c.index(), 0));
    }
    if let Some(c) = expr.downcast_ref::<CastExpr>() {
        return linear(c.expr());
    }
    let b = expr.downcast_ref::<BinaryExpr>()?;
    match b.op() {
        Operator::Plus => match (linear(b.left()), literal_nanos(b.right())) {
            (Some((c, o)), Some(n)) => Some((c, o.checked_add(n)?)),
            _ => match (literal_nanos(b.left()), linear(b.right())) {
                (Some(n), Some((c, o))) => Some((c, o.checked_add(n)?)),
                _ => None,
            },
        },
        Operator::Minus => {
            let (c, o) = linear(b.left())?;
            Some((c, o.checked_sub(literal_nanos(b.right())?)?))
        }
        _ => None,
    }
}

/// A constant interval or duration in nanoseconds (months have no fixed length).
pub(crate) fn literal_nanos(expr: &Arc<dyn PhysicalExpr>) -> Option<i64> {
    let lit = expr.downcast_ref::<Literal>()?;
    match lit.value() {
        ScalarValue::IntervalMonthDayNano(Some(v)) if v.months == 0 => {
            (v.days as i64).checked_mul(NANOS_PER_DAY)?.checked_add(v.nanoseconds)
        }
        ScalarValue::IntervalDayTime(Some(v)) => {
            (v.days as i64).checked_mul(NANOS_PER_DAY)?.checked_add((v.milliseconds as i64).checked_mul(1_000_000)?)
        }
        ScalarValue::DurationSecond(Some(v)) => v.checked_mul(1_000_000_000),
        ScalarValue::DurationMillisecond(Some(v)) => v.checked_mul(1_000_000),
        ScalarValue::DurationMicrosecond(Some(v)) => v.checked_mul(1_000),
        ScalarValue::DurationNanosecond(Some(v)) => Some(*v),
        _ => None,
    }
}

/// Adds what `a op b` says about `right - left`, where `a` is on side `sa` and
/// `b` on the other, both as event time plus a constant.
fn add_comparison(bounds: &mut TimeBounds, op: Operator, (sa, ca): (JoinSide, i64), (sb, cb): (JoinSide, i64)) {
    // Normalise to `left + cl  op  right + cr`.
    let (op, cl, cr) = match (sa, sb) {
        (JoinSide::Left, JoinSide::Right) => (op, ca, cb),
        (JoinSide::Right, JoinSide::Left) => match op.swap() {
            Some(swapped) => (swapped, cb, ca),
            None => return,
        },
        _ => return,
    };
    // l + cl op r + cr  <=>  (r - l) op' (cl - cr)
    let v = cl - cr;
    match op {
        Operator::Eq => {
            bounds.lower_at_least(v);
            bounds.upper_at_most(v);
        }
        Operator::LtEq | Operator::Lt => bounds.lower_at_least(v),
        Operator::GtEq | Operator::Gt => bounds.upper_at_most(v),
        _ => {}
    }
}

/// A join's equi-key pairs, as DataFusion plans them.
pub(crate) type EquiKeys = [(Arc<dyn PhysicalExpr>, Arc<dyn PhysicalExpr>)];

/// The time bounds in a join's equi-keys and filter, given each side's event time.
pub fn time_bounds(
    on: &EquiKeys,
    filter: Option<&JoinFilter>,
    times: [Option<EventTime>; 2],
) -> TimeBounds {
    let mut bounds = TimeBounds::default();
    // A side's column as its event time plus a constant.
    let as_time = |side: JoinSide, (column, offset): (usize, i64)| -> Option<(JoinSide, i64)> {
        let t = match side {
            JoinSide::Left => times[0]?,
            JoinSide::Right => times[1]?,
            JoinSide::None => return None,
        };
        (t.column == column).then_some((side, offset - t.offset))
    };
    for (l, r) in on {
        if let (Some(a), Some(b)) = (linear(l), linear(r)) {
            if let (Some(a), Some(b)) = (as_time(JoinSide::Left, a), as_time(JoinSide::Right, b)) {
                add_comparison(&mut bounds, Operator::Eq, a, b);
            }
        }
    }
    if let Some(filter) = filter {
        let indices = filter.column_indices();
        let resolve = |(column, offset): (usize, i64)| {
            let ci = indices.get(column)?;
            as_time(ci.side, (ci.index, offset))
        };
        for conjunct in split_conjunction(filter.expression()) {
            let Some(b) = conjunct.downcast_ref::<BinaryExpr>() else { continue };
            if !matches!(b.op(), Operator::Eq | Operator::Lt | Operator::LtEq | Operator::Gt | Operator::GtEq) {
                continue;
            }
            if let (Some(a), Some(c)) = (linear(b.left()).and_then(resolve), linear(b.right()).and_then(resolve)) {
                add_comparison(&mut bounds, *b.op(), a, c);
            }
        }
    }
    bounds
}
