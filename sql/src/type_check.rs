//! Type checks made when a statement is planned, so that a query whose types
//! cannot work is refused before it starts, with a message naming the column.
//!
//! DataFusion, built for batch queries, lets some mistakes through to run time:
//! it compares a VARCHAR column with a number by casting every value to the
//! number, which fails only on the first row that is not one, and an aggregate
//! over the wrong type can fail deep inside its type coercion with an internal
//! error. In a continuous query that row may arrive days after the query started,
//! so such queries are refused here instead, while the user is still looking.
//! `INSERT INTO` is checked the same way: a column goes into the table only by a
//! cast that cannot fail on a value ([`implicit_cast`]).

use std::ops::ControlFlow;
use std::str::FromStr;
use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::common::DFSchema;
use datafusion::error::DataFusionError;
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::type_coercion::functions::{fields_with_udf, UDFCoercionExt};
use datafusion::logical_expr::{Expr, ExprSchemable, LogicalPlan, Operator};

use sqlparser::ast::{visit_expressions, Expr as SqlExpr, FunctionArg, FunctionArgExpr, FunctionArguments, Query};

use crate::error::{Result, SqlError};
use crate::session::sql_type_name;

/// Checks every expression of `plan` (and of its subqueries) whose types would
/// only fail at run time.
pub fn check_plan(plan: &LogicalPlan) -> Result<()> {
    let mut found = None;
    plan.apply_with_subqueries(|node| {
        match check_node(node) {
            Ok(()) => Ok(TreeNodeRecursion::Continue),
            Err(e) => {
                found = Some(e);
                Ok(TreeNodeRecursion::Stop)
            }
        }
    })?;
    found.map_or(Ok(()), Err)
}

/// Whether a value of type `from` goes into a column of type `to` without a
/// cast that could fail or change it beyond rounding: numbers widen (integers
/// into floats and decimals too), strings stay strings, times stay times.
pub fn implicit_cast(from: &DataType, to: &DataType) -> bool {
    use DataType::*;
    if from == to || from.is_null() {
        return true;
    }
    let int_bits = |t: &DataType| match t {
        Int8 | UInt8 => Some(8),
        Int16 | UInt16 => Some(16),
        Int32 | UInt32 => Some(32),
        Int64 | UInt64 => Some(64),
        _ => None,
    };
    match (from, to) {
        (f, t) if f.is_integer() && t.is_integer() => {
            let (fb, tb) = (int_bits(f).unwrap_or(64), int_bits(t).unwrap_or(0));
            match (f.is_signed_integer(), t.is_signed_integer()) {
                (true, true) | (false, false) => fb <= tb,
                (false, true) => fb < tb,
                (true, false) => false,
            }
        }
        (f, Float32 | Float64) if f.is_integer() => true,
        (Float16 | Float32, Float32 | Float64) => true,
        (f, Decimal128(..) | Decimal256(..)) if f.is_integer() => true,
        (Decimal128(..) | Decimal256(..), Decimal128(..) | Decimal256(..) | Float64) => true,
        (Utf8 | LargeUtf8 | Utf8View, Utf8 | LargeUtf8 | Utf8View) => true,
        (Binary | LargeBinary | BinaryView, Binary | LargeBinary | BinaryView) => true,
        (Timestamp(..) | Date32 | Date64, Timestamp(..)) => true,
        (Date32 | Date64, Date32 | Date64) => true,
        (Interval(_) | Duration(_), Interval(_) | Duration(_)) => true,
        _ => false,
    }
}

fn check_node(node: &LogicalPlan) -> Result<()> {
    // Expressions refer to the node's inputs (both sides of a join).
    let schema = match node.inputs().as_slice() {
        [one] => one.schema().as_ref().clone(),
        [left, right] => match left.schema().join(right.schema()) {
            Ok(s) => s,
            Err(_) => return Ok(()),
        },
        _ => return Ok(()),
    };
    for expr in node.expressions() {
        let mut found = None;
        expr.apply(|e| {
            match check_expr(e, &schema) {
                Ok(()) => Ok(TreeNodeRecursion::Continue),
                Err(err) => {
                    found = Some(err);
                    Ok(TreeNodeRecursion::Stop)
                }
            }
        })?;
        if let Some(e) = found {
            return Err(e);
        }
    }
    Ok(())
}

fn check_expr(expr: &Expr, schema: &DFSchema) -> Result<()> {
    match expr {
        Expr::BinaryExpr(b) if is_comparison(b.op) => compare(&b.left, &b.right, schema),
        Expr::Between(b) => {
            compare(&b.expr, &b.low, schema)?;
            compare(&b.expr, &b.high, schema)
        }
        Expr::InList(l) => l.list.iter().try_for_each(|item| compare(&l.expr, item, schema)),
        Expr::AggregateFunction(AggregateFunction { func, params }) => {
            check_arguments(func.as_ref(), func.name(), &params.args, schema)
        }
        Expr::ScalarFunction(ScalarFunction { func, args }) => check_arguments(func.as_ref(), func.name(), args, schema),
        _ => Ok(()),
    }
}

fn is_comparison(op: Operator) -> bool {
    use Operator::*;
    matches!(op, Eq | NotEq | Lt | LtEq | Gt | GtEq | IsDistinctFrom | IsNotDistinctFrom)
}

/// Refuses comparing a string computed per row with a number, time or boolean:
/// DataFusion would cast each string, failing on the first that is not one. A
/// string literal is fine: it is cast once, when the query is planned.
fn compare(left: &Expr, right: &Expr, schema: &DFSchema) -> Result<()> {
    let (Ok(lt), Ok(rt)) = (left.get_type(schema), right.get_type(schema)) else { return Ok(()) };
    for (string, st, other, ot) in [(left, &lt, right, &rt), (right, &rt, left, &lt)] {
        let castable = ot.is_numeric() || ot.is_temporal() || *ot == DataType::Boolean;
        if is_string(st) && castable && !matches!(string, Expr::Literal(..)) {
            return Err(SqlError::Plan(format!(
                "cannot compare {} ({}) with {} ({}): the strings would be cast to {} one by one, failing on the \
                 first that is not one; cast explicitly, e.g. CAST({} AS {})",
                describe(string),
                sql_type_name(st),
                describe(other),
                sql_type_name(ot),
                sql_type_name(ot),
                plain(string),
                sql_type_name(ot),
            )));
        }
    }
    Ok(())
}

/// Refuses a function call whose arguments fit none of its signatures, naming
/// the arguments, instead of DataFusion's internal error from deep inside its
/// coercion.
fn check_arguments<F: UDFCoercionExt>(func: &F, name: &str, args: &[Expr], schema: &DFSchema) -> Result<()> {
    if args.is_empty() {
        return Ok(());
    }
    let mut fields: Vec<FieldRef> = Vec::with_capacity(args.len());
    for arg in args {
        let Ok(t) = arg.get_type(schema) else { return Ok(()) };
        fields.push(Arc::new(Field::new(plain(arg), t, true)));
    }
    if fields_with_udf(&fields, func).is_ok() {
        return Ok(());
    }
    let shown: Vec<String> =
        args.iter().zip(&fields).map(|(a, f)| format!("{} ({})", describe(a), sql_type_name(f.data_type()))).collect();
    let call: Vec<String> = args.iter().map(plain).collect();
    Err(SqlError::Plan(format!("{name}({}): {name} does not take {}", call.join(", "), shown.join(", "))))
}

/// DataFusion's planner refuses a call that fits none of a function's signatures
/// while it builds the plan, with an internal error naming only the types. This
/// finds the call in the query the user wrote and says which arguments it is
/// about; `None` for any other error.
pub fn signature_error(error: &DataFusionError, query: &Query) -> Option<SqlError> {
    const MARK: &str = "No function matches the given name and argument types '";
    let text = error.to_string();
    let rest = &text[text.find(MARK)? + MARK.len()..];
    let signature = &rest[..rest.find("'.")?];
    let (name, types) = signature.split_once('(')?;
    let types: Vec<String> = split_top_level(types.strip_suffix(')')?)
        .into_iter()
        .map(|t| DataType::from_str(t.trim()).map(|t| sql_type_name(&t)).unwrap_or_else(|_| t.trim().to_string()))
        .collect();
    let mut calls = Vec::new();
    let _ = visit_expressions(query, |e| {
        if let SqlExpr::Function(f) = e {
            let same = f.name.0.last().and_then(|p| p.as_ident()).is_some_and(|id| id.value.eq_ignore_ascii_case(name));
            if let (true, FunctionArguments::List(list)) = (same, &f.args) {
                if list.args.len() == types.len() {
                    calls.push((f.to_string(), list.args.clone()));
                }
            }
        }
        ControlFlow::<()>::Continue(())
    });
    let message = match calls.as_slice() {
        [(call, args)] => {
            let shown: Vec<String> = args.iter().zip(&types).map(|(a, t)| format!("{} ({t})", describe_sql(a))).collect();
            format!("{call}: {name} does not take {}", shown.join(", "))
        }
        _ => format!("{name} does not take ({})", types.join(", ")),
    };
    Some(SqlError::Plan(format!("{message}; cast the argument, or use another function")))
}

/// `a, Timestamp(ms, None), b` split at the commas outside parentheses.
fn split_top_level(list: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts
}

/// A function argument as a message refers to it: a column by its name.
fn describe_sql(arg: &FunctionArg) -> String {
    match arg {
        FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::Identifier(id))) => format!("column '{}'", id.value),
        FunctionArg::Unnamed(FunctionArgExpr::Expr(SqlExpr::CompoundIdentifier(ids))) => {
            format!("column '{}'", ids.last().map(|id| id.value.as_str()).unwrap_or_default())
        }
        other => other.to_string(),
    }
}

fn is_string(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

/// An expression as the user wrote it, without DataFusion's table qualifiers.
fn plain(expr: &Expr) -> String {
    match expr {
        Expr::Column(c) => c.name.clone(),
        other => other.to_string(),
    }
}

/// How a message refers to an expression: a column by its name, a literal by its value.
fn describe(expr: &Expr) -> String {
    match expr {
        Expr::Column(c) => format!("column '{}'", c.name),
        Expr::Literal(value, _) => value.to_string(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DataType::*;

    #[test]
    fn only_safe_casts_are_implicit() {
        assert!(implicit_cast(&Int32, &Int64));
        assert!(implicit_cast(&UInt32, &Int64));
        assert!(implicit_cast(&Int64, &Float64));
        assert!(implicit_cast(&Utf8View, &Utf8));
        assert!(implicit_cast(&Timestamp(datafusion::arrow::datatypes::TimeUnit::Nanosecond, None), &Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None)));
        assert!(!implicit_cast(&Utf8, &Int64));
        assert!(!implicit_cast(&Int64, &Int32));
        assert!(!implicit_cast(&Int64, &UInt64));
        assert!(!implicit_cast(&Float64, &Int64));
        assert!(!implicit_cast(&Int64, &Utf8));
    }
}
