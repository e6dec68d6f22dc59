//! Operator state as Arrow tables, the form a checkpoint stores it in.
//!
//! A stateful operator writes its state as numbered tables of rows (see
//! [`crate::operator::Operator::snapshot`]). What the operators share is here,
//! written once: building a table from named columns; the key group of each
//! stored row, computed exactly as the exchange in front of the operator
//! computes it (so a lane restored at any parallelism gets the rows of the keys
//! its input will bring it); the watermark as state of the lane; and moving
//! DataFusion accumulator state out of accumulators and back in.
//!
//! Some of DataFusion's accumulators give their values away in `state()`
//! (`string_agg`, `median`, `percentile_cont` take them out), so a snapshot of
//! those rebuilds the accumulators from what it took, the same way a restore
//! builds them: an operator that snapshots and goes on behaves as one
//! restored there. Aggregates known to leave their accumulator as it was
//! ([`states_are_kept`]) skip the rebuild, which is most of a snapshot's cost
//! with many groups.

use std::sync::Arc;

use datafusion::arrow::array::{new_empty_array, Array, ArrayRef, Int64Array, RecordBatchOptions, UInt32Array};
use datafusion::arrow::compute::{cast, concat};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::arrow::record_batch::RecordBatch;
use datafusion::common::ScalarValue;
use datafusion::logical_expr::Accumulator;

use crate::checkpoint::StatePart;
use crate::error::{EngineError, Result};
use crate::key_group::{key_group, KeyHasher};

/// A table of `rows` rows from named columns. Every field is nullable: state
/// arrays do not always honour the nullability of the fields they came from.
pub(crate) fn table(columns: Vec<(String, ArrayRef)>, rows: usize) -> Result<RecordBatch> {
    let fields: Vec<Field> = columns.iter().map(|(name, a)| Field::new(name, a.data_type().clone(), true)).collect();
    let arrays = columns.into_iter().map(|(_, a)| a).collect();
    Ok(RecordBatch::try_new_with_options(
        Arc::new(Schema::new(fields)),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )?)
}

/// The key group of each row of `key_columns` (the exchange key's values). With
/// no key columns every row is in key group 0: the exchange sends keyless rows
/// to lane 0, and lane 0 owns key group 0 at every parallelism.
pub(crate) fn key_groups(key_columns: &[ArrayRef], rows: usize) -> Result<UInt32Array> {
    if key_columns.is_empty() {
        return Ok(UInt32Array::from(vec![0u32; rows]));
    }
    let hashes = KeyHasher::hash_rows(key_columns, rows)?;
    Ok(hashes.into_iter().map(key_group).collect::<Vec<u32>>().into())
}

/// The lane's watermark as a one-row table (NULL: none yet).
pub(crate) fn watermark_part(watermark: Option<i64>) -> Result<StatePart> {
    let column: ArrayRef = Arc::new(Int64Array::from(vec![watermark]));
    Ok(StatePart::lane(table(vec![("watermark".into(), column)], 1)?))
}

/// The watermark to resume with from the lane parts written by
/// [`watermark_part`]: one lane's, or the lowest of several lanes' when the
/// parallelism changed (a lane without one counts lowest). `None` when no part
/// was given.
pub(crate) fn restored_watermark<'a>(parts: impl IntoIterator<Item = &'a StatePart>) -> Result<Option<Option<i64>>> {
    let mut lowest: Option<Option<i64>> = None;
    for part in parts {
        let column = int64_column(&part.batch, 0)?;
        for i in 0..column.len() {
            let w = column.is_valid(i).then(|| column.value(i));
            lowest = Some(lowest.map_or(w, |l| l.min(w)));
        }
    }
    Ok(lowest)
}

/// The table of an operator whose state is its keyed rows and its watermark
/// (window and session aggregates) that holds the keyed rows.
pub(crate) const KEYED_TABLE: usize = 0;
/// The table of such an operator that holds its watermark.
pub(crate) const WATERMARK_TABLE: usize = 1;

/// The snapshot of an operator whose state is keyed rows and a watermark.
pub(crate) fn keyed_with_watermark(watermark: Option<i64>, keyed: Option<StatePart>) -> Result<Vec<(usize, StatePart)>> {
    let mut parts = vec![(WATERMARK_TABLE, watermark_part(watermark)?)];
    parts.extend(keyed.map(|k| (KEYED_TABLE, k)));
    Ok(parts)
}

/// A restored snapshot of such an operator (`operator` names it in errors):
/// the lowest watermark stored (`None`: none was), and the keyed rows.
pub(crate) fn split_keyed_with_watermark(parts: Vec<(usize, StatePart)>, operator: &str) -> Result<(Option<Option<i64>>, Vec<RecordBatch>)> {
    let watermark = restored_watermark(parts.iter().filter(|(t, _)| *t == WATERMARK_TABLE).map(|(_, p)| p))?;
    let mut keyed = Vec::new();
    for (t, part) in parts {
        match t {
            KEYED_TABLE => keyed.push(part.batch),
            WATERMARK_TABLE => {}
            other => return Err(corrupt(&format!("the {operator} has no table {other}"))),
        }
    }
    Ok((watermark, keyed))
}

/// Column `index` of a restored table, as Int64.
pub(crate) fn int64_column(batch: &RecordBatch, index: usize) -> Result<Int64Array> {
    let column = batch.columns().get(index).ok_or_else(|| corrupt("a state table lacks a column"))?;
    let column = cast(column, &DataType::Int64)?;
    column.as_any().downcast_ref::<Int64Array>().cloned().ok_or_else(|| corrupt("an Int64 column did not cast"))
}

/// `column` as `data_type` (stored columns may come back in another encoding of
/// the same values, e.g. a dictionary as its values).
pub(crate) fn as_type(column: &ArrayRef, data_type: &DataType) -> Result<ArrayRef> {
    match column.data_type() == data_type {
        true => Ok(Arc::clone(column)),
        false => Ok(cast(column, data_type)?),
    }
}

/// Concatenates the tables of several pieces of state (e.g. the open windows)
/// into one; they have the same columns.
pub(crate) fn concat_tables(tables: &[RecordBatch]) -> Result<Option<RecordBatch>> {
    let Some(first) = tables.first() else { return Ok(None) };
    let rows = tables.iter().map(|t| t.num_rows()).sum();
    let columns = (0..first.num_columns())
        .map(|c| {
            let wanted = first.column(c).data_type();
            let parts = tables.iter().map(|t| as_type(t.column(c), wanted)).collect::<Result<Vec<_>>>()?;
            let refs: Vec<&dyn Array> = parts.iter().map(|a| a.as_ref()).collect();
            Ok((first.schema().field(c).name().clone(), concat(&refs)?))
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(Some(table(columns, rows)?))
}

/// How many state columns each accumulator of a set writes (learnt from a fresh
/// set: its layout is that of every set built the same way).
pub(crate) fn accumulator_widths(fresh: &mut [Box<dyn Accumulator>]) -> Result<Vec<usize>> {
    fresh.iter_mut().map(|a| Ok(a.state()?.len())).collect()
}

/// How many state columns the groups accumulators of `aggregates` write: as
/// their state fields say (a fresh groups accumulator cannot tell: one adapted
/// from a plain accumulator writes no columns while it has no groups).
pub(crate) fn groups_accumulator_widths(
    aggregates: &[Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>],
) -> Result<Vec<usize>> {
    aggregates.iter().map(|a| Ok(a.state_fields()?.len())).collect()
}

/// Names of the state columns of accumulators with `widths` columns each.
pub(crate) fn state_column_names(widths: &[usize]) -> Vec<String> {
    widths.iter().enumerate().flat_map(|(a, w)| (0..*w).map(move |j| format!("agg{a}_state{j}"))).collect()
}

/// Whether `aggregate` is one of DataFusion's own count, sum, avg, min, max,
/// bool_and and bool_or, known by its implementation (not by name: a plug-in
/// may register a function under any name), and not DISTINCT.
pub(crate) fn is_plain_builtin(aggregate: &datafusion::physical_expr::aggregate::AggregateFunctionExpr) -> bool {
    use datafusion::functions_aggregate::{average, bool_and_or, count, min_max, sum};
    let f = aggregate.fun().inner();
    !aggregate.is_distinct()
        && (f.is::<count::Count>()
            || f.is::<sum::Sum>()
            || f.is::<average::Avg>()
            || f.is::<min_max::Min>()
            || f.is::<min_max::Max>()
            || f.is::<bool_and_or::BoolAnd>()
            || f.is::<bool_and_or::BoolOr>())
}

/// Whether taking the state of every aggregate of `aggregates` leaves its
/// accumulators as they were: those of [`is_plain_builtin`], and DataFusion's
/// own array_agg, first_value and last_value (not DISTINCT).
pub(crate) fn states_are_kept(aggregates: &[Arc<datafusion::physical_expr::aggregate::AggregateFunctionExpr>]) -> bool {
    use datafusion::functions_aggregate::{array_agg, first_last};
    aggregates.iter().all(|a| {
        let f = a.fun().inner();
        is_plain_builtin(a)
            || (!a.is_distinct()
                && (f.is::<array_agg::ArrayAgg>() || f.is::<first_last::FirstValue>() || f.is::<first_last::LastValue>()))
    })
}

/// Takes the state of every accumulator set (one row per set) as columns, and
/// unless `kept` (see [`states_are_kept`]) rebuilds each set from it with
/// `fresh` (see the module docs). `widths` come from [`accumulator_widths`].
/// With no sets the columns are empty and untyped.
pub(crate) fn take_accumulator_states<'a>(
    sets: impl IntoIterator<Item = &'a mut Vec<Box<dyn Accumulator>>>,
    widths: &[usize],
    kept: bool,
    fresh: &dyn Fn() -> Result<Vec<Box<dyn Accumulator>>>,
) -> Result<Vec<ArrayRef>> {
    let total: usize = widths.iter().sum();
    let mut sets: Vec<&mut Vec<Box<dyn Accumulator>>> = sets.into_iter().collect();
    let mut values: Vec<Vec<ScalarValue>> = vec![Vec::with_capacity(sets.len()); total];
    for set in sets.iter_mut() {
        let mut row = Vec::with_capacity(total);
        for acc in set.iter_mut() {
            row.extend(acc.state()?);
        }
        if row.len() != total {
            return Err(EngineError::Internal("an accumulator's state changed shape".into()));
        }
        for (c, v) in row.into_iter().enumerate() {
            values[c].push(v);
        }
    }
    let columns = values
        .into_iter()
        .map(|column| match column.is_empty() {
            true => Ok(new_empty_array(&DataType::Null)),
            false => Ok(ScalarValue::iter_to_array(column)?),
        })
        .collect::<Result<Vec<ArrayRef>>>()?;
    if kept {
        return Ok(columns);
    }
    // Rebuilt from the columns just made (a row of them is a zero-copy slice).
    for (row, set) in sets.into_iter().enumerate() {
        *set = merged_accumulators(fresh()?, &columns, row, widths)?;
    }
    Ok(columns)
}

/// `fresh` with row `row` of the state columns `states` (laid out by `widths`)
/// merged in.
pub(crate) fn merged_accumulators(
    mut fresh: Vec<Box<dyn Accumulator>>,
    states: &[ArrayRef],
    row: usize,
    widths: &[usize],
) -> Result<Vec<Box<dyn Accumulator>>> {
    let mut start = 0;
    for (acc, width) in fresh.iter_mut().zip(widths) {
        let columns: Vec<ArrayRef> = states
            .get(start..start + width)
            .ok_or_else(|| corrupt("an accumulator's state columns are missing"))?
            .iter()
            .map(|c| c.slice(row, 1))
            .collect();
        acc.merge_batch(&columns)?;
        start += width;
    }
    Ok(fresh)
}

/// Wall-clock time in epoch milliseconds: what state that expires by age (a
/// TTL) stores, since an `Instant` does not outlive the process.
pub(crate) fn epoch_millis() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_millis()).unwrap_or(i64::MAX)
}

pub(crate) fn corrupt(what: &str) -> EngineError {
    EngineError::Checkpoint(format!("operator state does not match the query: {what}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operators::checkpoint_testing::{aggregate, input_schema};

    #[test]
    fn only_datafusions_own_aggregates_keep_their_state_when_it_is_taken() {
        let input = input_schema();
        let kept = |name: &str, distinct: bool| states_are_kept(&[aggregate(&input, name, "v", distinct)]);
        for name in ["count", "sum", "avg", "min", "max", "array_agg", "first_value", "last_value"] {
            assert!(kept(name, false), "{name}");
        }
        assert!(!kept("count", true), "count DISTINCT");
        assert!(!kept("approx_median", false), "approx_median");
        assert!(!kept("stddev", false), "stddev");
    }
}
