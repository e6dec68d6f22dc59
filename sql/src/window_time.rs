//! `window_time`, the third column of Flink's window TVFs.
//!
//! In Flink a window TVF adds `window_start`, `window_end` and `window_time`,
//! the window's time attribute: `window_end` less one millisecond, the time
//! its rows carry on into a cascaded window. Flink SQL selects and groups by
//! it (`GROUP BY window_start, window_end, window_time`); here a query reading
//! a window TVF has `window_time` rewritten into `window_end - 1 ms`, and the
//! GROUP BY loses it (it follows from `window_end`), so the window aggregate
//! keys on the window bounds alone and the value is computed from the emitted
//! window's end: right for every window kind, sessions and HOP slices included.

use std::ops::ControlFlow;

use sqlparser::ast::{
    visit_expressions_mut, BinaryOperator, Expr, GroupByExpr, Ident, Interval, Query, SelectItem, SetExpr, Value,
};

use crate::window_tvf::window_tvf_kind;

/// Rewrites `window_time` in `query` if it reads a window TVF directly.
pub(crate) fn window_time_from_end(query: &mut Query) {
    let SetExpr::Select(select) = query.body.as_mut() else { return };
    let reads_tvf = select
        .from
        .iter()
        .flat_map(|from| std::iter::once(&from.relation).chain(from.joins.iter().map(|j| &j.relation)))
        .any(|factor| window_tvf_kind(factor).is_some());
    if !reads_tvf {
        return;
    }
    if let GroupByExpr::Expressions(keys, _) = &mut select.group_by {
        keys.retain(|k| window_time_qualifier(k).is_none());
    }
    for item in &mut select.projection {
        match item {
            SelectItem::UnnamedExpr(e) if window_time_qualifier(e).is_some() => {
                let expr = std::mem::replace(e, Expr::value(Value::Null));
                *item = SelectItem::ExprWithAlias { expr: replaced(expr), alias: Ident::new("window_time") };
            }
            SelectItem::UnnamedExpr(e) | SelectItem::ExprWithAlias { expr: e, .. } => replace_in(e),
            _ => {}
        }
    }
    for e in [select.selection.as_mut(), select.having.as_mut()].into_iter().flatten() {
        replace_in(e);
    }
}

/// For `window_time` or `t.window_time`: the qualifier (empty when none).
fn window_time_qualifier(e: &Expr) -> Option<Vec<Ident>> {
    let is_window_time = |id: &Ident| id.value.eq_ignore_ascii_case("window_time");
    match e {
        Expr::Identifier(id) if is_window_time(id) => Some(Vec::new()),
        Expr::CompoundIdentifier(parts) => match parts.split_last() {
            Some((last, qualifier)) if is_window_time(last) => Some(qualifier.to_vec()),
            _ => None,
        },
        _ => None,
    }
}

fn replace_in(e: &mut Expr) {
    let _ = visit_expressions_mut(e, |e| {
        if window_time_qualifier(e).is_some() {
            let expr = std::mem::replace(e, Expr::value(Value::Null));
            *e = replaced(expr);
        }
        ControlFlow::<()>::Continue(())
    });
}

/// `window_end - INTERVAL '0.001' SECOND`, qualified as `e` was.
fn replaced(e: Expr) -> Expr {
    let mut parts = window_time_qualifier(&e).unwrap_or_default();
    parts.push(Ident::new("window_end"));
    let end = match parts.len() {
        1 => Expr::Identifier(parts.remove(0)),
        _ => Expr::CompoundIdentifier(parts),
    };
    let millisecond = Expr::Interval(Interval {
        value: Box::new(Expr::value(Value::SingleQuotedString("0.001".into()))),
        leading_field: Some(sqlparser::ast::DateTimeField::Second),
        leading_precision: None,
        last_field: None,
        fractional_seconds_precision: None,
    });
    Expr::Nested(Box::new(Expr::BinaryOp { left: Box::new(end), op: BinaryOperator::Minus, right: Box::new(millisecond) }))
}
